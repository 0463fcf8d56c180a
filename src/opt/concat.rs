//! Concats: sums of pads over adjacent parts of one axis become one concat, and elementwise
//! ops on a concat become the concat of the ops on its parts.
//!
//! [`join_padded_sums`]: `pad(a) + pad(b)` along one axis, where `b`'s part starts where
//! `a`'s ends, is one pad of `concat(a, b)`; chains of such sums — the gradient of a tensor
//! sliced into parts, as an LSTM's gates are — become one concat: no zeros written, no sums
//! taken. Exact: adding a zero leaves every element as it was (the sign of a zero aside).
//!
//! [`split_padded_sums`]: `x + pad(b)`, the pad's zeros over the rest of an axis (a message
//! to one iteration of a stacked loop: the last one's term from the unstacked tail), is the
//! concat of `x`'s parts with `b` added to the one it covers: the zeros are neither written
//! nor read. Exact, as above.
//!
//! [`distribute`]: `f(concat(a, b), x) = concat(f(a, x[..a]), f(b, x[a..]))` for an
//! elementwise f, the other operands sliced to each part. A concat read by one elementwise op
//! no longer has to be written to memory for it: pushed on through the ops that follow, the
//! parts are computed straight into the place of the final result (an LSTM's gate errors into
//! the update of the pre-activation's error). Exact: every element is computed by the same
//! ops from the same operands.

use crate::ir::{BinaryOp, Node, Op, OpKind, Program, Region, Shape, ValueId};

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

/// Rewrites every sum of a value and a pad in `program` as a concat (see the module's
/// documentation); sums of two pads are left to [`join_padded_sums`].
pub fn split_padded_sums(program: &mut Program) {
    let old = std::mem::take(&mut program.nodes);
    let mut map: Vec<ValueId> = Vec::with_capacity(old.len());
    for node in old {
        let args: Vec<ValueId> = node.args.iter().map(|a| map[a.index()]).collect();
        let is_pad = |v: ValueId| matches!(program.node(v).op, Op::Pad { .. });
        let padded = match node.op {
            Op::Binary(BinaryOp::Add) if is_pad(args[0]) != is_pad(args[1]) => {
                Some(if is_pad(args[1]) {
                    (args[0], args[1])
                } else {
                    (args[1], args[0])
                })
            }
            _ => None,
        };
        let Some((x, pad)) = padded else {
            map.push(program.push(Node { args, ..node }));
            continue;
        };
        let Op::Pad { axis, before, .. } = program.node(pad).op else {
            unreachable!("checked to be a pad")
        };
        let b = program.node(pad).args[0];
        // A shift along the axis (every iteration's term moved by one) stays a pad: its
        // operand is read at other rows than the sum's, and kept in a buffer of its own it
        // lets a relaxation update the state it is computed from in place.
        let shifted = matches!(program.node(b).op, Op::Slice { axis: a, .. } if a == axis);
        if shifted {
            map.push(program.push(Node { args, ..node }));
            continue;
        }
        let (len, whole) = (program.shape(b).dims()[axis], node.shape.dims()[axis]);
        if len == whole {
            // No zeros: the sum is `x + b` already.
            map.push(program.push(Node {
                args: vec![x, b],
                ..node
            }));
            continue;
        }
        let mut parts = Vec::with_capacity(3);
        if before > 0 {
            parts.push(slice_of(program, x, axis, 0, before));
        }
        let covered = slice_of(program, x, axis, before, before + len);
        parts.push(program.push(Node {
            op: Op::Binary(BinaryOp::Add),
            args: vec![covered, b],
            shape: program.shape(b).clone(),
            name: None,
            region: node.region,
        }));
        if before + len < whole {
            parts.push(slice_of(program, x, axis, before + len, whole));
        }
        map.push(program.push(Node {
            op: Op::Concat { axis },
            args: parts,
            ..node
        }));
    }
    for o in &mut program.outputs {
        o.value = map[o.value.index()];
    }
}

/// Pushes every elementwise op on a concat that only it reads into the concat's parts.
pub fn distribute(program: &mut Program) {
    let users = program.users();
    let old = std::mem::take(&mut program.nodes);
    let mut map: Vec<ValueId> = Vec::with_capacity(old.len());
    // For each new node, the number of users of the old node it stands for.
    let mut uses: Vec<usize> = Vec::new();
    for (i, mut node) in old.into_iter().enumerate() {
        for a in &mut node.args {
            *a = map[a.index()];
        }
        let elementwise = matches!(
            node.op.kind(),
            OpKind::Unary | OpKind::Binary | OpKind::Ternary
        );
        let concat = node.args.iter().find_map(|&a| match program.node(a).op {
            Op::Concat { axis } if elementwise && uses[a.index()] == 1 => Some((a, axis)),
            _ => None,
        });
        let Some((joined, axis)) = concat else {
            let id = program.push(node);
            uses.resize(id.index() + 1, 0);
            uses[id.index()] = users[i].len();
            map.push(id);
            continue;
        };
        let parts = program.node(joined).args.clone();
        let mut start = 0;
        let mut pieces = Vec::with_capacity(parts.len());
        for &part in &parts {
            let part_shape = program.shape(part).clone();
            let end = start + part_shape.dims()[axis];
            let args: Vec<ValueId> = node
                .args
                .iter()
                .map(|&a| {
                    if a == joined {
                        part
                    } else {
                        slice_of(program, a, axis, start, end)
                    }
                })
                .collect();
            pieces.push(program.push(Node {
                op: node.op.clone(),
                args,
                shape: part_shape,
                name: None,
                region: node.region,
            }));
            start = end;
        }
        let id = program.push(Node {
            op: Op::Concat { axis },
            args: pieces,
            ..node
        });
        uses.resize(program.nodes.len(), 0);
        uses[id.index()] = users[i].len();
        map.push(id);
    }
    for o in &mut program.outputs {
        o.value = map[o.value.index()];
    }
}

/// Elements `start..end` of `value` along `axis`: a constant of that shape, or a slice.
fn slice_of(
    program: &mut Program,
    value: ValueId,
    axis: usize,
    start: usize,
    end: usize,
) -> ValueId {
    let mut dims = program.shape(value).dims().to_vec();
    dims[axis] = end - start;
    let op = match program.node(value).op {
        Op::Const(c) => Op::Const(c),
        _ => Op::Slice { axis, start, end },
    };
    let args = if matches!(op, Op::Const(_)) {
        vec![]
    } else {
        vec![value]
    };
    program.push(Node {
        op,
        args,
        shape: Shape::new(dims),
        name: None,
        region: Region::Model,
    })
}
