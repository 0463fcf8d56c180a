//! ONNX import and export: a model exported by PyTorch, TensorFlow or JAX as a readable
//! `.pcg` model, and a `.pcg` model's forward pass as an ONNX graph (`export`, written from
//! the IR; the rest of this note is about import).
//!
//! An ONNX graph is a static DAG of tensor ops with its weights stored as initializers; with
//! the sizes fixed at export it maps onto a pcg model. The import is three steps, one module
//! each:
//!
//! - `proto` reads the file: the protobuf messages of the official `onnx.proto3` (vendored
//!   under `proto/`, compiled by `build.rs`), a tensor's values, a node's attributes;
//! - `known` folds what an exporter computes about shapes inside the graph (`Shape`,
//!   `Gather`, `Concat`, ...), keeping the batch size symbolic;
//! - `translate` writes the model: one `param` per initializer (named by the rule of
//!   `names`), the graph's inputs with the batch as `B`, one `let` per op, and a loss against
//!   a target of the output's shape.
//!
//! [`import`] then formats the text in the canonical layout and checks it as `pcg check`
//! would, so what it returns is a file that compiles: an op, attribute or case the language
//! cannot express exactly is an error that names the node, its op type and what is missing.

mod export;
mod known;
mod names;
pub mod proto;
#[cfg(test)]
mod tests;
mod translate;

pub use export::{encode, export, onnx_names, IR_VERSION, OPSET};
pub use translate::{ImportError, Loss, Options, Param};

use crate::sema::{self, CompileOptions};
use crate::source::Sources;
use crate::syntax::format;

/// An imported model: the formatted `.pcg` text, and its parameters under their `.pcg` names
/// in the order the text declares them.
#[derive(Clone, Debug)]
pub struct Imported {
    pub text: String,
    pub params: Vec<Param>,
}

/// Imports the model in the bytes of an `.onnx` file.
pub fn import(bytes: &[u8], options: &Options) -> Result<Imported, ImportError> {
    if !names::is_free_identifier(&options.target) {
        return Err(plain(format!(
            "the target's name `{}` is not a free identifier of the language",
            options.target
        )));
    }
    let model = proto::decode_model(bytes).map_err(plain)?;
    let translation = translate::translate(&model, options)?;
    let name = format!("{}.pcg", options.model_name);
    let mut sources = Sources::new();
    let file = sources.add(name.clone(), translation.text.clone());
    let text = format::format_source(file, &translation.text).map_err(|diagnostics| {
        plain(format!(
            "the translation does not parse (a bug of import):\n{}",
            crate::diag::render(&sources, &diagnostics)
        ))
    })?;
    let (sources, checked) = sema::check_source(&name, &text, &CompileOptions::default());
    if let Err(diagnostics) = checked {
        return Err(plain(format!(
            "the translation does not compile (a bug of import):\n{}",
            crate::diag::render(&sources, &diagnostics)
        )));
    }
    Ok(Imported {
        text,
        params: translation.params,
    })
}

fn plain(message: String) -> ImportError {
    ImportError {
        node: None,
        message,
    }
}

/// A model name from a file name: its stem as an identifier (`resnet-18.onnx` → `resnet_18`).
pub fn model_name(stem: &str) -> String {
    names::Names::default().value(stem, "model")
}
