//! An ONNX graph to the text of a `.pcg` model, node by node.
//!
//! Every ONNX value becomes a [`Value`]: a tensor of the model (an input, a parameter or a
//! `let`, by its `.pcg` name and its shape), a value known at import (constants and shape
//! computations, see `known`), or a floating-point initializer that becomes a `param` the
//! first time a computation reads it as a tensor. Nodes are translated in the graph's order
//! (ONNX stores them sorted); each op either folds, passes its input through (`Identity`,
//! `Dropout`), or becomes one `let` whose expression uses the language's builtins and the
//! stdlib's `nn` and `conv` functions. An op, attribute or case that the language cannot
//! express exactly is an error naming what is missing; nothing is approximated.

use super::known::{self, shape_text, Dim, Known};
use super::names::Names;
use super::proto::{self, Attributes, GraphProto, ModelProto, NodeProto, TensorProto, Values};
use ndarray::{ArrayD, IxDyn};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

mod ops;
mod recurrent;

/// The loss an imported model is trained with, against its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// `mse(out, y)`: ½ Σ (out − y)² / B.
    Mse,
    /// `cross_entropy(out, y)`: −Σ y · log_softmax(out) / B, over the last axis.
    CrossEntropy,
}

/// How to write the imported model.
#[derive(Clone, Debug)]
pub struct Options {
    /// The name of the written `model` (and its `train` block).
    pub model_name: String,
    pub loss: Loss,
    /// The name of the target the loss compares the output with.
    pub target: String,
    /// The batch size of the `train` block (default: the ONNX inputs' own, else 32).
    pub batch: Option<usize>,
    /// The ONNX file's name, for the header comment.
    pub source_name: String,
}

/// A parameter of the imported model: its initializer's values under its `.pcg` name.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub onnx_name: String,
    pub value: ArrayD<f32>,
    /// Declared `frozen` (a batch norm's running statistics): loaded, never trained.
    pub frozen: bool,
}

/// A translated model: the `.pcg` text (not yet formatted) and its parameters, in the order
/// the text declares them.
#[derive(Clone, Debug)]
pub struct Translation {
    pub text: String,
    pub params: Vec<Param>,
}

/// Why a model could not be imported: what is missing, and at which node.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportError {
    /// The node's name (or, for an unnamed node, its first output's) and its op type.
    pub node: Option<(String, String)>,
    pub message: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some((name, op)) => write!(f, "node `{name}` ({op}): {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ImportError {}

fn graph_error(message: impl Into<String>) -> ImportError {
    ImportError {
        node: None,
        message: message.into(),
    }
}

/// An ONNX value during the translation.
#[derive(Clone, Debug)]
enum Value<'m> {
    /// A tensor of the model, by its `.pcg` name.
    Tensor { name: String, shape: Vec<Dim> },
    /// A value known at import.
    Known(Known),
    /// A floating-point initializer not yet read as a tensor.
    Initializer(&'m TensorProto),
}

/// What a node's translation gives its first output.
enum Out<'m> {
    /// The value of an input, unchanged.
    Alias(Value<'m>),
    /// A `let` of this expression and shape.
    Let { expr: String, shape: Vec<Dim> },
}

/// Translates a model to `.pcg` text.
pub fn translate(model: &ModelProto, options: &Options) -> Result<Translation, ImportError> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| graph_error("the model has no graph"))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version);
    let mut t = Translator::new(graph, opset, options)?;
    for node in &graph.node {
        t.node(node).map_err(|message| ImportError {
            node: Some((node_name(node), node.op_type.clone())),
            message,
        })?;
    }
    t.finish(model, options)
}

/// A node's name for messages: its own, or its first output's.
fn node_name(node: &NodeProto) -> String {
    if !node.name.is_empty() {
        return node.name.clone();
    }
    node.output.first().cloned().unwrap_or_default()
}

/// The state of one translation: the values so far, and the lines of the file being written.
struct Translator<'m> {
    graph: &'m GraphProto,
    /// The version of the default ONNX domain the model imports (some ops changed with it).
    opset: i64,
    /// The batch size the ONNX inputs declare, if they fix one: a `Reshape` to that size on
    /// the batch axis keeps the axis `B`.
    declared_batch: Option<usize>,
    names: Names,
    values: HashMap<&'m str, Value<'m>>,
    /// The names that nodes read and the graph outputs: a node's extra outputs must not be
    /// among them.
    consumed: HashSet<&'m str>,
    /// The `input` declarations.
    inputs: Vec<String>,
    /// The parameters, in the order the model first reads them.
    params: Vec<Param>,
    /// The `let` statements, in the graph's order.
    lets: Vec<String>,
    /// The inputs of an integer type: ids, which only an embedding may read (as numbers,
    /// they would compute as floating-point where ONNX computes on integers).
    ids: HashSet<String>,
    /// The stdlib modules the text uses besides `nn`.
    modules: BTreeSet<&'static str>,
}

impl<'m> Translator<'m> {
    fn new(
        graph: &'m GraphProto,
        opset: i64,
        options: &Options,
    ) -> Result<Translator<'m>, ImportError> {
        let mut t = Translator {
            graph,
            opset,
            declared_batch: None,
            names: Names::default(),
            values: HashMap::new(),
            consumed: HashSet::new(),
            inputs: Vec::new(),
            params: Vec::new(),
            lets: Vec::new(),
            ids: HashSet::new(),
            modules: BTreeSet::new(),
        };
        t.names.reserve(&options.target);
        for node in &graph.node {
            t.consumed.extend(node.input.iter().map(String::as_str));
        }
        t.consumed
            .extend(graph.output.iter().map(|o| o.name.as_str()));
        for init in &graph.initializer {
            let value = if proto::is_float_type(init.data_type) {
                Value::Initializer(init)
            } else {
                Value::Known(Known::of_tensor(init).map_err(graph_error)?)
            };
            t.values.insert(init.name.as_str(), value);
        }
        for input in &graph.input {
            if t.values.contains_key(input.name.as_str()) {
                continue; // an initializer that older exporters list as an input too
            }
            t.input(input)?;
        }
        Ok(t)
    }

    /// Declares a graph input: axis 0 is the batch.
    fn input(&mut self, input: &'m proto::ValueInfoProto) -> Result<(), ImportError> {
        let name = &input.name;
        let (elem_type, declared) = proto::declared_tensor(input).ok_or_else(|| {
            graph_error(format!(
                "input `{name}` does not declare a tensor type with a shape"
            ))
        })?;
        let ids = proto::is_integer_type(elem_type);
        if !(ids || proto::is_float_type(elem_type)) {
            return Err(graph_error(format!(
                "input `{name}` is of type {}: import reads numeric inputs only",
                proto::type_name(elem_type)
            )));
        }
        let mut shape = Vec::with_capacity(declared.len());
        for (i, d) in declared.iter().enumerate() {
            match d {
                _ if i == 0 => {
                    if let proto::DeclaredDim::Size(n) = d {
                        match self.declared_batch {
                            Some(m) if m != *n => {
                                return Err(graph_error(format!(
                                    "inputs declare different batch sizes ({m} and {n}); axis 0 of every input is the batch"
                                )))
                            }
                            _ => self.declared_batch = Some(*n),
                        }
                    }
                    shape.push(Dim::Batch(1));
                }
                proto::DeclaredDim::Size(n) => shape.push(Dim::Size(*n)),
                proto::DeclaredDim::Open(p) => {
                    return Err(graph_error(format!(
                        "input `{name}` leaves its axis {i} open (`{p}`): import needs every size but the batch's (axis 0); export with fixed sizes"
                    )))
                }
            }
        }
        let pcg = self.names.value(name, "x");
        if ids {
            self.ids.insert(pcg.clone());
        }
        self.inputs
            .push(format!("input {pcg}: {}", shape_text(&shape)));
        self.values
            .insert(name.as_str(), Value::Tensor { name: pcg, shape });
        Ok(())
    }

    fn node(&mut self, node: &'m NodeProto) -> Result<(), String> {
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(format!(
                "ops of the domain `{}` are not supported by import",
                node.domain
            ));
        }
        if node.op_type == "Split" {
            return self.split(node);
        }
        for extra in node.output.iter().skip(1) {
            if !extra.is_empty() && self.consumed.contains(extra.as_str()) {
                return Err(format!(
                    "its output `{extra}` is used, and import translates only a node's first output"
                ));
            }
        }
        let Some(output) = node.output.first().filter(|o| !o.is_empty()) else {
            return Err("the node has no output".to_string());
        };
        if let Some(value) = self.fold(node)? {
            self.values.insert(output.as_str(), Value::Known(value));
            return Ok(());
        }
        match self.translate(node)? {
            Out::Alias(value) => {
                self.values.insert(output.as_str(), value);
            }
            Out::Let { expr, shape } => {
                let raw = if self.graph.output.iter().any(|o| &o.name == output) {
                    output
                } else if !node.name.is_empty() {
                    &node.name
                } else {
                    output
                };
                let name = self.names.value(raw, &node.op_type.to_ascii_lowercase());
                self.lets.push(format!("let {name} = {expr}"));
                self.values
                    .insert(output.as_str(), Value::Tensor { name, shape });
            }
        }
        Ok(())
    }

    /// The node's value when it is known at import: a constant, a shape, or a computation on
    /// known values.
    fn fold(&self, node: &'m NodeProto) -> Result<Option<Known>, String> {
        let attrs = Attributes(&node.attribute);
        match node.op_type.as_str() {
            "Constant" => return known::constant(&attrs).map(Some),
            "Shape" => {
                let dims = self.shape_of(self.operand_name(node, 0)?)?;
                let rank = dims.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
                let start = clamp(attrs.int("start").unwrap_or(0));
                let end = clamp(attrs.int("end").unwrap_or(rank));
                return Ok(Some(Known::of_dims(&dims[start..end.max(start)])));
            }
            op if known::FOLDED.contains(&op) => {}
            _ => return Ok(None),
        }
        // A tensor shaped by the batch size is computed by the model, not known at import.
        let shaping = match node.op_type.as_str() {
            "Expand" => node.input.get(1),
            "ConstantOfShape" => node.input.first(),
            _ => None,
        };
        if let Some(Value::Known(shape)) = shaping.and_then(|s| self.values.get(s.as_str())) {
            if shape
                .data
                .iter()
                .any(|e| matches!(e, known::Elem::Batch(_)))
            {
                return Ok(None);
            }
        }
        let mut inputs = Vec::with_capacity(node.input.len());
        for name in &node.input {
            if name.is_empty() {
                inputs.push(None);
                continue;
            }
            match self.values.get(name.as_str()) {
                Some(Value::Known(k)) => inputs.push(Some(k)),
                _ => return Ok(None),
            }
        }
        known::fold(&node.op_type, &attrs, &inputs).map(Some)
    }

    /// The name of input `i` of a node, which must be present.
    fn operand_name(&self, node: &'m NodeProto, i: usize) -> Result<&'m str, String> {
        node.input
            .get(i)
            .filter(|n| !n.is_empty())
            .map(String::as_str)
            .ok_or_else(|| format!("its input {i} is missing"))
    }

    /// The name of input `i` of a node, if present.
    fn optional(&self, node: &'m NodeProto, i: usize) -> Option<&'m str> {
        node.input
            .get(i)
            .filter(|n| !n.is_empty())
            .map(String::as_str)
    }

    fn value(&self, name: &str) -> Result<&Value<'m>, String> {
        self.values.get(name).ok_or_else(|| {
            format!("it reads `{name}`, which no input, initializer or earlier node gives")
        })
    }

    /// The shape of a value.
    fn shape_of(&self, name: &str) -> Result<Vec<Dim>, String> {
        Ok(match self.value(name)? {
            Value::Tensor { shape, .. } => shape.clone(),
            Value::Known(k) => k.shape.iter().map(|&d| Dim::Size(d)).collect(),
            Value::Initializer(t) => t
                .dims
                .iter()
                .map(|&d| Dim::Size(d.max(0) as usize))
                .collect(),
        })
    }

    /// A value needed at import (an axis list, a shape, a bound).
    fn known(&self, name: &str) -> Result<Known, String> {
        match self.value(name)? {
            Value::Known(k) => Ok(k.clone()),
            Value::Initializer(t) => Known::of_tensor(t),
            Value::Tensor { .. } => Err(format!(
                "its input `{name}` must be known at import (a constant or a computation on shapes), but the model computes it"
            )),
        }
    }

    /// A value read as a tensor of the model: its expression and shape. An initializer
    /// becomes a parameter here; a known value a number or a `full(...)`.
    fn tensor(&mut self, name: &'m str) -> Result<(String, Vec<Dim>), String> {
        self.read_tensor(name, false)
    }

    /// As [`tensor`](Self::tensor), an initializer becoming a `frozen` tensor (never
    /// trained) rather than a parameter.
    fn frozen_tensor(&mut self, name: &'m str) -> Result<(String, Vec<Dim>), String> {
        if let Value::Tensor { name: pcg, .. } = self.value(name)? {
            if self.params.iter().any(|p| &p.name == pcg && !p.frozen) {
                return Err(format!(
                    "`{name}` is read both as a trained parameter and as a frozen statistic"
                ));
            }
        }
        self.read_tensor(name, true)
    }

    fn read_tensor(&mut self, name: &'m str, frozen: bool) -> Result<(String, Vec<Dim>), String> {
        match self.value(name)?.clone() {
            Value::Tensor { name, .. } if self.ids.contains(&name) => Err(format!(
                "the input `{name}` holds integers, which import reads only as the ids of an embedding (a Gather from a matrix)"
            )),
            Value::Tensor { name, shape } => Ok((name, shape)),
            Value::Initializer(t) => {
                let (dims, values) = proto::tensor_values(t)?;
                let Values::Float(v) = values else {
                    return Err(format!("`{name}` is not a floating-point tensor"));
                };
                let value = ArrayD::from_shape_vec(
                    IxDyn(&dims),
                    v.into_iter().map(|x| x as f32).collect(),
                )
                .map_err(|e| e.to_string())?;
                let pcg = self.names.param(&t.name);
                let shape: Vec<Dim> = dims.iter().map(|&d| Dim::Size(d)).collect();
                self.params.push(Param {
                    name: pcg.clone(),
                    onnx_name: t.name.clone(),
                    value,
                    frozen,
                });
                let value = Value::Tensor {
                    name: pcg.clone(),
                    shape: shape.clone(),
                };
                self.values.insert(name, value);
                Ok((pcg, shape))
            }
            Value::Known(k) => {
                let shape: Vec<Dim> = k.shape.iter().map(|&d| Dim::Size(d)).collect();
                let values = k.floats()?;
                match values.first() {
                    Some(&v) if values.len() == 1 => Ok((number(v)?, shape)),
                    Some(&v) if values.iter().all(|&x| x == v) => {
                        Ok((format!("full({}, {})", shape_text(&shape), number(v)?), shape))
                    }
                    _ => Err(format!(
                        "`{name}` is a constant tensor of different values that is not an initializer, and the language has no constant tensors but `full`"
                    )),
                }
            }
        }
    }

    /// A number needed at import (a bound, an exponent), from a known input.
    fn scalar(&self, name: &str) -> Result<f64, String> {
        let k = self.known(name)?;
        match k.floats()?.as_slice() {
            [x] => Ok(*x),
            _ => Err(format!("its input `{name}` must be a single number")),
        }
    }

    /// The node's attributes, after checking that it sets none outside `understood`.
    fn attributes(
        &self,
        node: &'m NodeProto,
        understood: &[&str],
    ) -> Result<Attributes<'m>, String> {
        let attrs = Attributes(&node.attribute);
        if let Some(first) = attrs.unknown(understood).first() {
            return Err(format!(
                "its attribute `{first}` is not supported by import"
            ));
        }
        Ok(attrs)
    }

    /// The whole file, once every node is translated.
    fn finish(mut self, model: &ModelProto, options: &Options) -> Result<Translation, ImportError> {
        let [output] = self.graph.output.as_slice() else {
            return Err(graph_error(format!(
                "the graph has {} outputs: import writes one loss, against one output",
                self.graph.output.len()
            )));
        };
        let (out, shape) = match self.values.get(output.name.as_str()) {
            Some(Value::Tensor { name, shape }) => (name.clone(), shape.clone()),
            Some(_) => {
                return Err(graph_error(format!(
                    "the output `{}` is a constant, not computed from the inputs",
                    output.name
                )))
            }
            None => {
                return Err(graph_error(format!(
                    "the output `{}` is computed by no node",
                    output.name
                )))
            }
        };
        if shape.first() != Some(&Dim::Batch(1)) {
            return Err(graph_error(format!(
                "the output `{}` has shape {}: the loss needs the batch on its axis 0",
                output.name,
                shape_text(&shape)
            )));
        }
        // Parameters in the order of the initializers, as the exporter wrote them.
        let order: HashMap<&str, usize> = self
            .graph
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        self.params
            .sort_by_key(|p| order.get(p.onnx_name.as_str()).copied());
        let producer = [
            model.producer_name.as_str(),
            model.producer_version.as_str(),
        ]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
        let mut text = format!(
            "// Imported from {} by `pcg import`{}, opset {}.\n",
            options.source_name,
            if producer.is_empty() {
                String::new()
            } else {
                format!(" (exported by {producer})")
            },
            self.opset
        );
        text.push_str("use nn\n");
        for module in &self.modules {
            text.push_str(&format!("use {module}\n"));
        }
        let loss = match options.loss {
            Loss::Mse => "mse",
            Loss::CrossEntropy => "cross_entropy",
        };
        text.push_str(&format!("\nmodel {} {{\n", options.model_name));
        for line in &self.inputs {
            text.push_str(&format!("    {line}\n"));
        }
        text.push_str(&format!(
            "    target {}: {}\n",
            options.target,
            shape_text(&shape)
        ));
        for p in &self.params {
            let dims: Vec<Dim> = p.value.shape().iter().map(|&d| Dim::Size(d)).collect();
            let keyword = if p.frozen { "frozen" } else { "param" };
            text.push_str(&format!(
                "    {keyword} {}: {}\n",
                p.name,
                shape_text(&dims)
            ));
        }
        text.push('\n');
        for line in &self.lets {
            text.push_str(&format!("    {line}\n"));
        }
        text.push_str(&format!("    loss {loss}({out}, {})\n}}\n", options.target));
        let batch = options.batch.or(self.declared_batch).unwrap_or(32);
        text.push_str(&format!(
            "\ntrain {} {{\n    batch = {batch}\n}}\n",
            options.model_name
        ));
        Ok(Translation {
            text,
            params: self.params,
        })
    }
}

/// A number as the language writes it; the shortest text that reads back the same as an
/// `f32` when it is one (attributes and weights are), so `0.01` stays `0.01`.
fn number(x: f64) -> Result<String, String> {
    if !x.is_finite() {
        return Err(format!("the number {x} is not finite"));
    }
    let single = x as f32;
    Ok(if single as f64 == x {
        format!("{single:?}")
    } else {
        format!("{x:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_back_as_written() {
        assert_eq!(number(0.01f32 as f64).unwrap(), "0.01");
        assert_eq!(number(1.0).unwrap(), "1.0");
        assert_eq!(number(1e-5f32 as f64).unwrap(), "1e-5");
        assert!(number(f64::INFINITY).is_err());
    }
}
