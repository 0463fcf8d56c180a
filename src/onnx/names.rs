//! Names in the written `.pcg`: ONNX names made into identifiers, each used once.
//!
//! A parameter's name is its initializer's with every character outside `[A-Za-z0-9_]`
//! replaced by `_` (`fc1.weight` → `fc1_weight`), so a PyTorch `state_dict` maps onto the
//! model by one rule. A name that would not be a free identifier is adjusted: one starting with
//! a digit gets a leading `_` (`0.weight` → `_0_weight`); a keyword, a builtin, a function of
//! the stdlib modules the file uses or a one-letter capital (the language's dimension
//! variables, `B` among them) gets a trailing `_`; a name already taken gets `_2`, `_3`, ...

use crate::syntax::lexer::{lex, Token};
use std::collections::HashSet;

/// The stdlib functions an imported file may call (`use nn`, `use conv`, `use transformer`):
/// no value may be named like one.
const STDLIB_FUNCTIONS: &[&str] = &[
    "dense",
    "softmax",
    "log_softmax",
    "mse",
    "cross_entropy",
    "softplus",
    "log_sigmoid",
    "gelu",
    "embedding",
    "conv_bias",
    "conv_relu_pool",
    "upsample2d",
    "layer_norm",
    "split_heads",
    "merge_heads",
    "causal_attention",
    "transformer_block",
];

/// The names given so far in one file.
#[derive(Default)]
pub struct Names {
    taken: HashSet<String>,
}

impl Names {
    /// A fresh identifier for `raw` by the parameters' rule.
    pub fn param(&mut self, raw: &str) -> String {
        let exact: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.fresh(exact)
    }

    /// A fresh identifier for a computed value named `raw` (a node's or output's ONNX name):
    /// as a parameter's, but without leading, trailing and repeated `_`, so that
    /// `/layer1/conv/Conv` reads `layer1_conv_Conv`; `fallback` when nothing is left.
    pub fn value(&mut self, raw: &str, fallback: &str) -> String {
        let mut name = String::new();
        for c in raw.chars() {
            let c = if c.is_ascii_alphanumeric() { c } else { '_' };
            if c == '_' && (name.is_empty() || name.ends_with('_')) {
                continue;
            }
            name.push(c);
        }
        let name = name.trim_end_matches('_');
        self.fresh(if name.is_empty() { fallback } else { name }.to_string())
    }

    /// Marks a name as taken as it is (the target's, chosen by the user).
    pub fn reserve(&mut self, name: &str) {
        self.taken.insert(name.to_string());
    }

    fn fresh(&mut self, mut name: String) -> String {
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            name.insert(0, '_');
        }
        if !is_free_identifier(&name) {
            name.push('_');
        }
        let mut unique = name.clone();
        let mut n = 2;
        while self.taken.contains(&unique) {
            unique = format!("{name}_{n}");
            n += 1;
        }
        self.taken.insert(unique.clone());
        unique
    }
}

/// Whether `name` lexes as one identifier that names nothing of the language: not a keyword,
/// a builtin, a stdlib function the file may use, or a dimension variable.
pub fn is_free_identifier(name: &str) -> bool {
    let one_identifier = matches!(lex(name).as_slice(), [(_, Token::Ident(n), _)] if n == name);
    let dimension_variable = name.len() == 1 && name.starts_with(|c: char| c.is_ascii_uppercase());
    one_identifier
        && !dimension_variable
        && name != "_"
        && !crate::sema::BUILTINS.contains(&name)
        && !STDLIB_FUNCTIONS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_keep_their_names_by_one_rule() {
        let mut names = Names::default();
        assert_eq!(names.param("fc1.weight"), "fc1_weight");
        assert_eq!(names.param("0.weight"), "_0_weight");
        assert_eq!(names.param("fc1/weight"), "fc1_weight_2");
        assert_eq!(names.param("loss"), "loss_");
        assert_eq!(names.param("relu"), "relu_");
        assert_eq!(names.param("B"), "B_");
    }

    #[test]
    fn values_read_without_separators() {
        let mut names = Names::default();
        assert_eq!(names.value("/layer1/conv/Conv", "conv"), "layer1_conv_Conv");
        assert_eq!(names.value("///", "relu"), "relu_");
        assert_eq!(names.value("onnx::Gemm_7", "gemm"), "onnx_Gemm_7");
    }
}
