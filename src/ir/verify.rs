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
        ]
        .iter()
        .any(|&k| program.leaf_named(k, name).is_some());
        if !known {
            return Err(fail(format!("initialiser for unknown leaf `{name}`")));
        }
    }
    Ok(())
}
