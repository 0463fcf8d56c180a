//! The IR verifier, run after lowering and after every pass: operands precede their users,
//! every shape agrees with `shape::infer`, leaves are named and outputs exist.

use super::{shape, Op, Program};
use std::collections::HashSet;
use std::fmt;

/// A broken invariant of a program; always a compiler bug, never a user error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    pub program: String,
    pub message: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IR verification failed in `{}`: {}",
            self.program, self.message
        )
    }
}

impl std::error::Error for VerifyError {}

/// Checks the structural invariants of a program.
pub fn verify(program: &Program) -> Result<(), VerifyError> {
    let fail = |message: String| VerifyError {
        program: program.name.clone(),
        message,
    };
    let mut leaf_names = HashSet::new();
    for id in program.ids() {
        let node = program.node(id);
        for &a in &node.args {
            if a >= id {
                return Err(fail(format!("{id} uses {a}, which does not precede it")));
            }
        }
        if let Op::Leaf(kind) = node.op {
            let Some(name) = &node.name else {
                return Err(fail(format!("leaf {id} has no name")));
            };
            if !leaf_names.insert((kind, name.clone())) {
                return Err(fail(format!(
                    "two {} leaves named `{name}`",
                    kind.keyword()
                )));
            }
        }
        let arg_shapes: Vec<&shape::Shape> = node.args.iter().map(|&a| program.shape(a)).collect();
        let target = Some(&node.shape);
        match shape::infer(&node.op, &arg_shapes, target) {
            Ok(s) if s == node.shape => {}
            Ok(s) => {
                return Err(fail(format!(
                    "{id} = {} is declared {} but produces {s}",
                    node.op, node.shape
                )))
            }
            Err(e) => return Err(fail(format!("{id} = {}: {e}", node.op))),
        }
        match &node.op {
            Op::Scan(scan) => verify_scan(scan, node.args.len())
                .map_err(|e| fail(format!("{id} = {}: {e}", node.op)))?,
            Op::Result(i) => {
                let Op::Scan(scan) = &program.node(node.args[0]).op else {
                    return Err(fail(format!(
                        "{id} = result reads {}, not a scan",
                        node.args[0]
                    )));
                };
                match scan.result_shape(*i) {
                    Some(s) if s == node.shape => {}
                    Some(s) => {
                        return Err(fail(format!(
                            "{id} = result[{i}] is declared {} but the scan's result is {s}",
                            node.shape
                        )))
                    }
                    None => {
                        return Err(fail(format!(
                            "{id} = result[{i}]: the scan has {} results",
                            scan.results()
                        )))
                    }
                }
            }
            _ => {}
        }
        if !matches!(node.op, Op::Scan(_)) {
            for &a in &node.args {
                if matches!(program.node(a).op, Op::Scan(_)) && !matches!(node.op, Op::Result(_)) {
                    return Err(fail(format!(
                        "{id} = {} reads the scan {a} itself; only `result` may",
                        node.op
                    )));
                }
            }
        }
    }
    let mut names = HashSet::new();
    for o in &program.outputs {
        if o.value.index() >= program.nodes.len() {
            return Err(fail(format!(
                "output `{}` refers to missing {}",
                o.name, o.value
            )));
        }
        if !names.insert(&o.name) {
            return Err(fail(format!("two outputs named `{}`", o.name)));
        }
    }
    for name in program.inits.keys() {
        let known = [
            super::LeafKind::Param,
            super::LeafKind::Input,
            super::LeafKind::Target,
            super::LeafKind::Noise,
        ]
        .iter()
        .any(|&k| program.leaf_named(k, name).is_some());
        if !known {
            return Err(fail(format!("initialiser for unknown leaf `{name}`")));
        }
    }
    Ok(())
}

/// A scan's body: valid itself, its leaves exactly its operands (state leaves, first, in
/// order), its carried outputs shaped as the values they carry.
fn verify_scan(scan: &super::Scan, operands: usize) -> Result<(), String> {
    verify(&scan.body).map_err(|e| e.to_string())?;
    if scan.carries + scan.stacked > operands {
        return Err(format!(
            "{} carried and {} stacked operands, but only {operands} operands",
            scan.carries, scan.stacked
        ));
    }
    for (k, node) in scan.body.nodes.iter().enumerate() {
        let is_leaf = matches!(node.op, Op::Leaf(_));
        if k < operands && node.op != Op::Leaf(super::LeafKind::State) {
            return Err(format!(
                "body node %{k} is not the state leaf of operand {k}"
            ));
        }
        if k >= operands && is_leaf {
            return Err(format!(
                "body node %{k} is a leaf beyond the scan's operands"
            ));
        }
    }
    if scan.body.outputs.len() < scan.carries {
        return Err(format!(
            "the body has {} outputs for {} carried values",
            scan.body.outputs.len(),
            scan.carries
        ));
    }
    for (k, output) in scan.body.outputs.iter().take(scan.carries).enumerate() {
        let (leaf, next) = (&scan.body.nodes[k].shape, scan.body.shape(output.value));
        if leaf != next {
            return Err(format!(
                "carried value {k} enters the body as {leaf} but leaves it as {next}"
            ));
        }
    }
    Ok(())
}
