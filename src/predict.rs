//! Prediction: a model's forward pass on its inputs alone, without a loss or a target — what
//! `pcg predict` writes, what `pcg export` writes to ONNX, and the Python module's
//! `Model.predict`.
//!
//! The forward program ends in the loss; the **prediction program** is the part before it.
//! Its outputs are the model's values that the loss reads (a classifier's logits, a
//! regression's estimate, a decoder's reconstruction), each under the name its `let` gives it
//! (`prediction` when the value has none, `name.1`, `name.2`, ... when several share a name).
//! The loss is dropped, the targets are read by nothing, and dropout's masks are ones, as when
//! evaluating. A loop whose iterations compute loss terms (a sequence model's loss at every
//! step) is unrolled, so that the value each iteration's loss reads is an output; other loops
//! stay loops.

use crate::interp::{self, Bindings};
use crate::ir::{self, LeafKind, Op, Program, Region, ValueId};
use crate::jit::{JitOptions, JitProgram};
use crate::npz::Arrays;
use crate::train::batch;
use crate::train::engine::{Backend, Element};
use std::path::Path;

/// The prediction program of a forward program (see the module's documentation). Fails for
/// a model whose loss reads no value of the model.
pub fn prediction_program(forward: &Program) -> Result<Program, String> {
    let mut program = forward.clone();
    crate::opt::unroll::unroll(&mut program, &|scan| {
        scan.body.nodes.iter().any(|n| n.region == Region::Loss)
    });
    let outputs = predictions(&program);
    if outputs.is_empty() {
        return Err(format!(
            "the loss of `{}` reads no value that the model computes from its inputs, so it has no prediction",
            forward.name
        ));
    }
    program.outputs.clear();
    let mut named: Vec<String> = Vec::new();
    for id in outputs {
        let base = program.node(id).name.as_deref().unwrap_or("prediction");
        let name = ir::fresh_name(base, |n| named.iter().any(|taken| taken == n));
        program.set_output(name.clone(), id);
        named.push(name);
    }
    // Evaluation's dropout masks: all ones.
    for node in &mut program.nodes {
        if node.op == Op::Leaf(LeafKind::Noise) {
            node.op = Op::Const(1.0);
        }
    }
    program.prune();
    let users = program.users();
    if let Some((_, name)) = program
        .leaves(LeafKind::Target)
        .into_iter()
        .find(|(id, _)| !users[id.index()].is_empty())
    {
        return Err(format!(
            "the model's prediction reads its target `{name}`, so it cannot be computed from the inputs alone"
        ));
    }
    Ok(program)
}

/// The values of the model that the loss reads, in program order: computed (not leaves), of
/// the model's region, and depending on an input.
fn predictions(forward: &Program) -> Vec<ValueId> {
    let users = forward.users();
    let mut on_input = vec![false; forward.nodes.len()];
    for id in forward.ids() {
        let node = forward.node(id);
        on_input[id.index()] =
            node.op == Op::Leaf(LeafKind::Input) || node.args.iter().any(|a| on_input[a.index()]);
    }
    forward
        .ids()
        .filter(|&id| {
            let node = forward.node(id);
            node.region == Region::Model
                && !matches!(node.op, Op::Leaf(_))
                && on_input[id.index()]
                && users[id.index()]
                    .iter()
                    .any(|&u| forward.node(u).region == Region::Loss)
        })
        .collect()
}

/// The names and shapes of a prediction program's outputs.
pub fn outputs(program: &Program) -> Vec<(String, Vec<usize>)> {
    program
        .outputs
        .iter()
        .map(|o| (o.name.clone(), program.shape(o.value).dims().to_vec()))
        .collect()
}

/// The batch size of a set of input arrays: axis 0 of the array of the model's first input
/// (which the model's inputs must all share; checking their shapes is the caller's). `origin`
/// names the arrays in the error of a missing one.
pub fn batch_of<F>(forward: &Program, inputs: &Arrays<F>, origin: &Path) -> Result<usize, String> {
    let leaves = forward.leaves(LeafKind::Input);
    let Some(&(id, name)) = leaves.first() else {
        return Err(format!("the model `{}` has no input", forward.name));
    };
    // The declared shape with the batch written `N`: the inputs may hold any number of rows.
    let dims = forward.shape(id).dims();
    let declared: Vec<String> = std::iter::once("N".to_string())
        .chain(dims.iter().skip(1).map(usize::to_string))
        .collect();
    let declared = format!("[{}], N the batch", declared.join(", "));
    let array = inputs.get(name).ok_or_else(|| {
        format!(
            "{}: no array named `{name}` (the model's input `{name}` has shape {declared})",
            origin.display()
        )
    })?;
    match array.shape().first() {
        Some(&n) if n > 0 && dims.len() == array.ndim() => Ok(n),
        _ => Err(format!(
            "{}: array `{name}` has shape {:?}, but the model declares input `{name}` with shape {declared}",
            origin.display(),
            array.shape()
        )),
    }
}

/// Where the arrays of a prediction come from, for errors: the parameters' file and the
/// inputs' file (or words saying what they are).
pub struct Origins<'a> {
    pub params: &'a Path,
    pub inputs: &'a Path,
}

/// Runs a prediction program on `backend` in element type `F`: the parameters and the inputs
/// are checked against the model's declarations (names and shapes) first. Arrays that name
/// no input or parameter are ignored (a data file may hold the targets too, a checkpoint the
/// optimiser's state).
pub fn run<F: Element>(
    program: &Program,
    (params, inputs): (&Arrays<F>, &Arrays<F>),
    origins: Origins,
    backend: Backend,
    jit: &JitOptions,
) -> Result<Arrays<F>, String> {
    batch::check_arrays(program, &[LeafKind::Param], params, origins.params)?;
    batch::check_arrays(program, &[LeafKind::Input], inputs, origins.inputs)?;
    let mut leaves = Bindings::new();
    for (kind, arrays) in [(LeafKind::Param, params), (LeafKind::Input, inputs)] {
        for (_, name) in program.leaves(kind) {
            if let Some(array) = arrays.get(name) {
                leaves.insert(name.to_string(), array.clone());
            }
        }
    }
    match backend {
        Backend::Interp => interp::eval_outputs(program, &leaves).map_err(|e| e.to_string()),
        Backend::Jit => {
            let options = JitOptions {
                dtype: F::DTYPE,
                ..jit.clone()
            };
            let mut compiled = JitProgram::compile(program, &options).map_err(|e| e.to_string())?;
            compiled.run(&leaves).map_err(|e| e.to_string())
        }
    }
}
