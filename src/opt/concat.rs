//! The pad/concat fold: sums of pads over adjacent parts of one axis become one concat.
//!
//! `pad(a) + pad(b)` along one axis, where `b`'s part starts where `a`'s ends, is one pad of
//! `concat(a, b)`; chains of such sums — the gradient of a tensor sliced into parts, as an
//! LSTM's gates are — become one concat: no zeros written, no sums taken. Exact: adding a zero
//! leaves every element as it was (the sign of a zero aside).

use crate::ir::{BinaryOp, Node, Op, Program, Shape, ValueId};

/// Joins every such sum in `program`, in one forward pass.
pub fn join_padded_sums(program: &mut Program) {
    /// A pad's axis, zeros before and after, and operand.
    fn as_pad(p: &Program, v: ValueId) -> Option<(usize, usize, usize, ValueId)> {
        match p.node(v).op {
            Op::Pad {
                axis,
                before,
                after,
            } => Some((axis, before, after, p.node(v).args[0])),
            _ => None,
        }
    }
    /// The parts a value joins along `axis`: a concat's operands, or the value itself.
    fn parts(p: &Program, v: ValueId, axis: usize) -> Vec<ValueId> {
        match p.node(v).op {
            Op::Concat { axis: a } if a == axis => p.node(v).args.clone(),
            _ => vec![v],
        }
    }
    let old = std::mem::take(&mut program.nodes);
    let mut map: Vec<ValueId> = Vec::with_capacity(old.len());
    for mut node in old {
        for a in &mut node.args {
            *a = map[a.index()];
        }
        let pads = match node.op {
            Op::Binary(BinaryOp::Add) => {
                as_pad(program, node.args[0]).zip(as_pad(program, node.args[1]))
            }
            _ => None,
        };
        let joined = pads.and_then(|(x, y)| {
            let (lo, hi) = if x.1 <= y.1 { (x, y) } else { (y, x) };
            let lo_len = program.shape(lo.3).dims()[lo.0];
            (lo.0 == hi.0 && lo.1 + lo_len == hi.1).then_some((lo, hi))
        });
        let Some(((axis, before, _, lo), (_, _, after, hi))) = joined else {
            map.push(program.push(node));
            continue;
        };
        let mut args = parts(program, lo, axis);
        args.extend(parts(program, hi, axis));
        let mut dims = node.shape.dims().to_vec();
        dims[axis] -= before + after;
        let concat = Node {
            op: Op::Concat { axis },
            args,
            shape: Shape::new(dims),
            name: None,
            region: node.region,
        };
        let id = if before == 0 && after == 0 {
            program.push(Node {
                name: node.name,
                ..concat
            })
        } else {
            let concat = program.push(concat);
            program.push(Node {
                op: Op::Pad {
                    axis,
                    before,
                    after,
                },
                args: vec![concat],
                ..node
            })
        };
        map.push(id);
    }
    for o in &mut program.outputs {
        o.value = map[o.value.index()];
    }
}
