//! ONNX export: a model's prediction program (see [`crate::predict`]) as an ONNX model
//! (opset 17, IR version 8) that ONNX Runtime runs with the same outputs.
//!
//! The graph is written from the IR, one primitive op at a time: the model's inputs are the
//! graph's inputs, its parameters the initializers, its predictions the graph's outputs, each
//! under its `.pcg` name (or, for a parameter, the ONNX name a map of names gives back, so
//! that an imported model exports under its original names). Every size is fixed, the batch
//! too: the program was compiled for one batch size. Loops are unrolled first, so the graph
//! has no `Loop` or `Scan`.
//!
//! [`Writer::op`] is the one table from IR ops to ONNX nodes. Where ONNX broadcasts by
//! itself, the IR's explicit broadcasts are left out: a constant or a `broadcast` read only
//! by elementwise ops, each of which also reads a value of its full shape, is written as the
//! small tensor it broadcasts (a scalar constant, a bias vector), so `relu` reads
//! `Max(x, 0)` and a dense layer `Add(MatMul(x, w), b)`.

use super::proto::{
    self, int_attribute as int_attr, ints_attribute, tensor_attribute as tensor_attr,
    tensor_proto::DataType, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto,
};
use crate::ir::{self, BinaryOp, LeafKind, Node, Op, Program, ReduceOp, UnaryOp, ValueId};
use crate::npz::Arrays;
use std::collections::{BTreeMap, HashSet};

/// The ONNX opset the graph is written for.
pub const OPSET: i64 = 17;

/// The ONNX IR version of the file (the one that opset 17 came with).
pub const IR_VERSION: i64 = 8;

/// Writes a prediction program as an ONNX model. `params` holds every parameter of the
/// program by its `.pcg` name; `onnx_names` maps a parameter's `.pcg` name to the name its
/// initializer takes (the others keep theirs). An op with no ONNX form is an error naming it.
pub fn export(
    program: &Program,
    params: &Arrays,
    onnx_names: &BTreeMap<String, String>,
) -> Result<ModelProto, String> {
    let mut program = program.clone();
    crate::opt::unroll::unroll(&mut program, &|_| true);
    let mut writer = Writer::new(&program);
    writer.interface(params, onnx_names)?;
    for id in program.ids() {
        let node = program.node(id);
        if matches!(node.op, Op::Leaf(_)) {
            continue;
        }
        writer.op(id, node).map_err(|message| {
            let name = node
                .name
                .as_ref()
                .map_or(String::new(), |n| format!(" `{n}`"));
            format!("value {id}{name} ({}): {message}", node.op)
        })?;
    }
    Ok(writer.finish())
}

/// The bytes of an `.onnx` file holding `model`.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}

/// The state of one export: the ONNX name of each IR value, and the graph written so far.
struct Writer<'p> {
    program: &'p Program,
    /// The ONNX value that holds each IR value (`None`: not written, a leaf nothing reads).
    names: Vec<Option<String>>,
    /// Every ONNX value name in use.
    taken: HashSet<String>,
    /// The constants and broadcasts that ONNX's own broadcasting makes unnecessary.
    implicit: Vec<bool>,
    graph: GraphProto,
}

impl<'p> Writer<'p> {
    fn new(program: &'p Program) -> Writer<'p> {
        Writer {
            program,
            names: vec![None; program.nodes.len()],
            taken: HashSet::new(),
            implicit: implicit_broadcasts(program),
            graph: GraphProto {
                name: program.name.clone(),
                ..GraphProto::default()
            },
        }
    }

    /// Names the graph's inputs, initializers and outputs (those first, so that the
    /// intermediate values' names give way to them).
    fn interface(
        &mut self,
        params: &Arrays,
        onnx_names: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let program = self.program;
        let users = program.users();
        for (id, name) in program.leaves(LeafKind::Input) {
            let name = self.claim(id, name);
            self.graph
                .input
                .push(float_value(&name, program.shape(id).dims()));
        }
        for (id, name) in program.leaves(LeafKind::Param) {
            let value = params
                .get(name)
                .ok_or_else(|| format!("no value for the parameter `{name}`"))?;
            if value.shape() != program.shape(id).dims() {
                return Err(format!(
                    "the parameter `{name}` has shape {:?}, but the model declares {}",
                    value.shape(),
                    program.shape(id)
                ));
            }
            let onnx = onnx_names.get(name).map_or(name, String::as_str);
            let onnx = self.claim(id, onnx);
            let values: Vec<f32> = value.iter().copied().collect();
            self.graph
                .initializer
                .push(float_tensor(&onnx, value.shape(), &values));
        }
        for kind in [LeafKind::Target, LeafKind::State, LeafKind::Noise] {
            if let Some((_, name)) = program
                .leaves(kind)
                .into_iter()
                .find(|(id, _)| !users[id.index()].is_empty())
            {
                return Err(format!(
                    "the prediction reads the {} `{name}`, which an ONNX graph has no place for",
                    kind.keyword()
                ));
            }
        }
        for output in &program.outputs {
            let name = self.claim(output.value, &output.name);
            self.graph
                .output
                .push(float_value(&name, program.shape(output.value).dims()));
        }
        Ok(())
    }

    /// Gives value `id` the name `wanted` (or, where that is taken, `wanted.1`, ...).
    fn claim(&mut self, id: ValueId, wanted: &str) -> String {
        let name = self.fresh(wanted);
        self.names[id.index()] = Some(name.clone());
        name
    }

    /// A name not yet in use, from `wanted`.
    fn fresh(&mut self, wanted: &str) -> String {
        let name = ir::fresh_name(wanted, |n| self.taken.contains(n));
        self.taken.insert(name.clone());
        name
    }

    /// The ONNX value of operand `k` of `node`.
    fn arg(&self, node: &Node, k: usize) -> Result<String, String> {
        let id = node.args[k];
        self.names[id.index()]
            .clone()
            .ok_or_else(|| format!("its operand {id} was not written (a bug of export)"))
    }

    /// The ONNX value that holds IR value `id`: its interface name, or a fresh one after the
    /// `let` that names it (`v<id>` when none does).
    fn result(&mut self, id: ValueId) -> String {
        if let Some(name) = &self.names[id.index()] {
            return name.clone();
        }
        let wanted = match &self.program.node(id).name {
            Some(name) => name.clone(),
            None => format!("v{}", id.0),
        };
        self.claim(id, &wanted)
    }

    /// Appends a node computing `output` from `inputs`.
    fn node(
        &mut self,
        op_type: &str,
        inputs: Vec<String>,
        output: &str,
        attrs: Vec<AttributeProto>,
    ) {
        self.graph.node.push(NodeProto {
            input: inputs,
            output: vec![output.to_string()],
            name: format!("{output}/{op_type}"),
            op_type: op_type.to_string(),
            attribute: attrs,
            ..NodeProto::default()
        });
    }

    /// A fresh value computed by one node from `inputs`, named after `base`.
    fn helper(
        &mut self,
        base: &str,
        op_type: &str,
        inputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) -> String {
        let name = self.fresh(&format!("{base}.{}", op_type.to_ascii_lowercase()));
        self.node(op_type, inputs, &name, attrs);
        name
    }

    /// A constant tensor, named after `base`.
    fn constant(&mut self, base: &str, tensor: TensorProto) -> String {
        self.helper(base, "Constant", vec![], vec![tensor_attr("value", tensor)])
    }

    /// A constant 1-D tensor of int64 (a shape, axes, bounds).
    fn ints(&mut self, base: &str, values: &[i64]) -> String {
        self.constant(base, proto::int64_tensor("", values))
    }

    /// A constant float scalar.
    fn scalar(&mut self, base: &str, value: f64) -> String {
        self.constant(base, float_tensor("", &[], &[value as f32]))
    }

    /// A shape as ONNX takes it.
    fn shape(&mut self, base: &str, dims: &[usize]) -> String {
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        self.ints(base, &dims)
    }

    /// The ONNX nodes of one IR op: the one table from the IR's primitives to ONNX.
    fn op(&mut self, id: ValueId, node: &Node) -> Result<(), String> {
        let dims = node.shape.dims();
        if self.implicit[id.index()] {
            // ONNX broadcasts it where it is read: a scalar, or the operand itself.
            let name = match node.op {
                Op::Const(c) => {
                    let base = format!("v{}", id.0);
                    self.scalar(&base, c)
                }
                _ => self.arg(node, 0)?,
            };
            self.names[id.index()] = Some(name);
            return Ok(());
        }
        let out = self.result(id);
        let a: Vec<String> = (0..node.args.len())
            .map(|k| self.arg(node, k))
            .collect::<Result<_, _>>()?;
        let x = |k: usize| a[k].clone();
        let ints = |name: &str, v: &[usize]| {
            ints_attribute(name, &v.iter().map(|&d| d as i64).collect::<Vec<_>>())
        };
        match &node.op {
            Op::Leaf(_) => {}
            Op::Const(c) => {
                let shape = self.shape(&out, dims);
                let value = float_tensor("", &[1], &[*c as f32]);
                self.node(
                    "ConstantOfShape",
                    vec![shape],
                    &out,
                    vec![tensor_attr("value", value)],
                );
            }
            Op::Iota { axis } => {
                // Range(0, n) along the axis, broadcast to the shape.
                let n = dims[*axis];
                let (start, limit, delta) = (
                    self.scalar(&out, 0.0),
                    self.scalar(&out, n as f64),
                    self.scalar(&out, 1.0),
                );
                let range = self.helper(&out, "Range", vec![start, limit, delta], vec![]);
                let mut line = vec![1; dims.len()];
                line[*axis] = n;
                let line_shape = self.shape(&out, &line);
                let column = self.helper(&out, "Reshape", vec![range, line_shape], vec![]);
                let shape = self.shape(&out, dims);
                self.node("Expand", vec![column, shape], &out, vec![]);
            }
            Op::Unary(u) => {
                let mut inputs = vec![x(0)];
                if let UnaryOp::Powf(p) = u {
                    inputs.push(self.scalar(&out, *p));
                }
                self.node(unary_op_type(*u), inputs, &out, vec![]);
            }
            Op::Binary(b @ (BinaryOp::Greater | BinaryOp::Equal)) => {
                // A comparison gives booleans in ONNX, 1.0 and 0.0 in the IR.
                let truth = self.helper(&out, binary_op_type(*b), vec![x(0), x(1)], vec![]);
                let to = int_attr("to", DataType::Float as i64);
                self.node("Cast", vec![truth], &out, vec![to]);
            }
            Op::Binary(b) => self.node(binary_op_type(*b), vec![x(0), x(1)], &out, vec![]),
            Op::Where => {
                let cond = self.helper(
                    &out,
                    "Cast",
                    vec![x(0)],
                    vec![int_attr("to", DataType::Bool as i64)],
                );
                self.node("Where", vec![cond, x(1), x(2)], &out, vec![]);
            }
            Op::Reduce(_, axes) if axes.is_empty() => {
                self.node("Identity", vec![x(0)], &out, vec![]);
            }
            Op::Reduce(ReduceOp::Sum, axes) => {
                let axes_value = self.shape(&out, axes);
                self.node(
                    "ReduceSum",
                    vec![x(0), axes_value],
                    &out,
                    vec![int_attr("keepdims", 0)],
                );
            }
            // Until opset 18, ReduceMax takes its axes as an attribute.
            Op::Reduce(ReduceOp::Max, axes) => {
                self.node(
                    "ReduceMax",
                    vec![x(0)],
                    &out,
                    vec![ints("axes", axes), int_attr("keepdims", 0)],
                );
            }
            Op::Reshape => {
                let shape = self.shape(&out, dims);
                self.node("Reshape", vec![x(0), shape], &out, vec![]);
            }
            Op::Transpose(perm) => {
                self.node("Transpose", vec![x(0)], &out, vec![ints("perm", perm)]);
            }
            Op::Broadcast => {
                let shape = self.shape(&out, dims);
                self.node("Expand", vec![x(0), shape], &out, vec![]);
            }
            Op::Slice { axis, start, end } => {
                let starts = self.shape(&out, &[*start]);
                let ends = self.shape(&out, &[*end]);
                let axes = self.shape(&out, &[*axis]);
                self.node("Slice", vec![x(0), starts, ends, axes], &out, vec![]);
            }
            Op::Pad {
                axis,
                before,
                after,
            } => {
                // [begin of every axis..., end of every axis...]
                let mut pads = vec![0; 2 * dims.len()];
                pads[*axis] = *before;
                pads[dims.len() + axis] = *after;
                let pads = self.shape(&out, &pads);
                self.node("Pad", vec![x(0), pads], &out, vec![]);
            }
            Op::Concat { axis } => {
                self.node(
                    "Concat",
                    a.clone(),
                    &out,
                    vec![int_attr("axis", *axis as i64)],
                );
            }
            Op::MatMul => self.node("MatMul", vec![x(0), x(1)], &out, vec![]),
            Op::Conv2d(params) | Op::Conv2dInputGrad(params) => {
                let mut attrs = vec![
                    ints("strides", &params.stride),
                    ints("pads", &params.pads),
                    ints("dilations", &params.dilation),
                    int_attr("group", params.groups as i64),
                ];
                let op = if let Op::Conv2dInputGrad(_) = node.op {
                    // The transposed convolution: the rows and columns past the last that a
                    // window covers are ONNX's output_padding.
                    let input = self.program.shape(node.args[0]).dims();
                    let weight = self.program.shape(node.args[1]).dims();
                    let extra: Vec<usize> = (0..2)
                        .map(|i| {
                            let (before, after) = params.padding(i);
                            let covered = (input[2 + i] - 1) * params.stride[i]
                                + params.dilation[i] * (weight[2 + i] - 1)
                                + 1;
                            (dims[2 + i] + before + after).saturating_sub(covered)
                        })
                        .collect();
                    attrs.push(ints("output_padding", &extra));
                    "ConvTranspose"
                } else {
                    "Conv"
                };
                self.node(op, vec![x(0), x(1)], &out, attrs);
            }
            Op::Conv2dWeightGrad(_) | Op::Scan(_) | Op::Result(_) => {
                return Err("the op has no ONNX form in export".to_string());
            }
        }
        Ok(())
    }

    fn finish(self) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "pcg".to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            graph: Some(self.graph),
            ..ModelProto::default()
        }
    }
}

/// The ONNX op of an elementwise function of one tensor (`Pow` with the exponent as its
/// second input).
fn unary_op_type(op: UnaryOp) -> &'static str {
    match op {
        UnaryOp::Neg => "Neg",
        UnaryOp::Exp => "Exp",
        UnaryOp::Log => "Log",
        UnaryOp::Sqrt => "Sqrt",
        UnaryOp::Sin => "Sin",
        UnaryOp::Cos => "Cos",
        UnaryOp::Tan => "Tan",
        UnaryOp::Tanh => "Tanh",
        UnaryOp::Sigmoid => "Sigmoid",
        UnaryOp::Erf => "Erf",
        UnaryOp::Abs => "Abs",
        UnaryOp::Sign => "Sign",
        UnaryOp::StopGradient => "Identity",
        UnaryOp::Powf(_) => "Pow",
    }
}

/// The ONNX op of an elementwise function of two tensors (comparisons give booleans).
fn binary_op_type(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "Add",
        BinaryOp::Sub => "Sub",
        BinaryOp::Mul => "Mul",
        BinaryOp::Div => "Div",
        BinaryOp::Max => "Max",
        BinaryOp::Greater => "Greater",
        BinaryOp::Equal => "Equal",
    }
}

/// For each value, whether it is a constant or a `broadcast` that ONNX's broadcasting makes
/// unnecessary: not an output, read only by elementwise ops (binary ops and `where`), each of
/// which reads a value of its full shape too — neither a constant nor a broadcast.
fn implicit_broadcasts(program: &Program) -> Vec<bool> {
    let users = program.users();
    let spreadable = |op: &Op| matches!(op, Op::Const(_) | Op::Broadcast);
    program
        .ids()
        .map(|id| {
            let node = program.node(id);
            let readers = &users[id.index()];
            spreadable(&node.op)
                && !readers.is_empty()
                && !program.outputs.iter().any(|o| o.value == id)
                && readers.iter().all(|&u| {
                    let user = program.node(u);
                    matches!(user.op, Op::Binary(_) | Op::Where)
                        && user.args.iter().any(|&a| !spreadable(&program.node(a).op))
                })
        })
        .collect()
}

/// A graph input's or output's declaration: float32, of fixed shape.
fn float_value(name: &str, dims: &[usize]) -> proto::ValueInfoProto {
    let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    proto::float_value(name, &dims)
}

/// A float32 tensor (`name` empty for a constant's value).
fn float_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..TensorProto::default()
    }
}

/// The initializers' names from a map of names as `pcg import --names` writes it (a JSON
/// object from each ONNX name to its parameter's `.pcg` name), turned around: from the
/// `.pcg` name to the ONNX name, as [`export`] takes it.
pub fn onnx_names(json: &str) -> Result<BTreeMap<String, String>, String> {
    let map: BTreeMap<String, String> = serde_json::from_str(json).map_err(|e| {
        format!("not a map of names (a JSON object from ONNX names to parameter names): {e}")
    })?;
    let mut turned = BTreeMap::new();
    for (onnx, pcg) in map {
        if let Some(first) = turned.insert(pcg.clone(), onnx.clone()) {
            return Err(format!(
                "the parameter `{pcg}` is named both `{first}` and `{onnx}`"
            ));
        }
    }
    Ok(turned)
}
