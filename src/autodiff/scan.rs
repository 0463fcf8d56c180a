//! The vector-Jacobian product of a scan: a reverse scan, backpropagation through time.
//!
//! A forward scan runs `c_{t+1}, y_t = f(c_t, x_t, w)` for t = 0..T (carried c, stacked x,
//! invariant w, per-iteration outputs y). Given the cotangents of its results — the final
//! carried values c̄_T and the stacked outputs ȳ — the reverse scan runs t = T−1 down to 0:
//!
//! ```text
//! c̄_t, x̄_t, w̄_t = vjp(f at (c_t, x_t, w))(c̄_{t+1}, ȳ_t)
//! ```
//!
//! carrying c̄, stacking x̄_t into the stacked operands' cotangents and w̄_t into per-iteration
//! outputs that are summed over t (an invariant is read at every iteration). The values c_t
//! it differentiates at come from the forward scan, which is made to output them too (its
//! carried values' *trace*, `[T, ...]`), and so do the computed values the derivatives read
//! (a gate's sigmoid, a product's operand: the *residuals*, as a reverse-mode tape keeps
//! them); the reverse body replays the forward body only for what the derivatives read and
//! no residual holds (views, joins), which depends on no carried value of the reverse scan:
//! [`crate::opt::scan_hoist`] takes it out of the loop.

use super::{vjp, AutodiffError};
use crate::ir::{LeafKind, Node, Op, Output, Program, Scan, ScanInput, Shape, ValueId};

/// The cotangents of the scan node `id`'s operands (`None` where not `wanted`), from those of
/// its results (`None`: zero). Appends the reverse scan to `p`, and adds the carried values'
/// trace to the forward scan's outputs if it lacks it.
pub(super) fn vjp_scan(
    p: &mut Program,
    id: ValueId,
    result_cotangents: &[Option<ValueId>],
    wanted: &[bool],
) -> Result<Vec<Option<ValueId>>, AutodiffError> {
    let traces = carried_traces(p, id);
    // Every computed value of the body the derivatives may read is offered as a residual; the
    // ones they do not read are dropped again when the program is pruned.
    let candidates: Vec<usize> = {
        let Op::Scan(forward) = &p.node(id).op else {
            unreachable!("called on scans")
        };
        let body = &forward.body;
        if body.nodes.iter().any(|n| matches!(n.op, Op::Scan(_))) {
            Vec::new()
        } else {
            (0..body.nodes.len())
                .filter(|&k| worth_keeping(&body.nodes[k].op))
                .collect()
        }
    };
    let residuals = stacked_outputs(
        p,
        id,
        &candidates
            .iter()
            .map(|&k| ValueId(k as u32))
            .collect::<Vec<_>>(),
        "res",
    );
    let node = p.node(id).clone();
    let Op::Scan(forward) = &node.op else {
        unreachable!("called on scans")
    };
    let forward = forward.as_ref();
    let (carries, stacked, operands) = (forward.carries, forward.stacked, node.args.len());
    let body = &forward.body;

    // The reverse body's leaves, in operand order: the carried cotangents; the traces, the
    // stacked operands and the outputs' cotangents; the invariant operands.
    let mut reverse = Program::new(format!("{}.reverse", body.name));
    let mut args: Vec<ValueId> = Vec::new();
    let shape_of = |k: usize| body.nodes[k].shape.clone();
    let leaf_name = |k: usize| body.nodes[k].name.clone().unwrap_or_default();
    let mut carried_cotangents = Vec::new();
    for (k, cotangent) in result_cotangents.iter().enumerate().take(carries) {
        let leaf = reverse.leaf(LeafKind::State, format!("d.{}", leaf_name(k)), shape_of(k));
        carried_cotangents.push(leaf);
        args.push(match cotangent {
            Some(c) => *c,
            None => p.constant(0.0, shape_of(k)),
        });
    }
    // Each forward leaf's value in the reverse body.
    let mut at: Vec<ValueId> = Vec::with_capacity(operands);
    for (k, &trace) in traces.iter().enumerate() {
        at.push(reverse.leaf(LeafKind::State, leaf_name(k), shape_of(k)));
        args.push(trace);
    }
    for k in carries..carries + stacked {
        at.push(reverse.leaf(LeafKind::State, leaf_name(k), shape_of(k)));
        args.push(node.args[k]);
    }
    let mut output_cotangents = Vec::new();
    for (i, output) in body.outputs.iter().enumerate().skip(carries) {
        // The traces just added to the outputs have no cotangents.
        if let Some(&Some(c)) = result_cotangents.get(i) {
            let shape = body.shape(output.value).clone();
            let leaf = reverse.leaf(LeafKind::State, format!("d.{}", output.name), shape);
            output_cotangents.push((output.value, leaf));
            args.push(c);
        }
    }
    let mut residual_leaves = Vec::with_capacity(candidates.len());
    for (&k, &residual) in candidates.iter().zip(&residuals) {
        let name = match body.nodes[k].name.as_deref() {
            Some(named)
                if !reverse
                    .nodes
                    .iter()
                    .any(|n| n.name.as_deref() == Some(&format!("res.{named}"))) =>
            {
                format!("res.{named}")
            }
            _ => format!("res.%{k}"),
        };
        residual_leaves.push(reverse.leaf(LeafKind::State, name, shape_of(k)));
        args.push(residual);
    }
    let n_stacked = args.len() - carries;
    for k in carries + stacked..operands {
        at.push(reverse.leaf(LeafKind::State, leaf_name(k), shape_of(k)));
        args.push(node.args[k]);
    }

    // One iteration of the forward body, then its vector-Jacobian product.
    let computed = replay_body(&mut reverse, body, &at);
    let mut seeds: Vec<(ValueId, ValueId)> = body.outputs[..carries]
        .iter()
        .zip(&carried_cotangents)
        .map(|(o, &c)| (computed[o.value.index()], c))
        .collect();
    seeds.extend(
        output_cotangents
            .iter()
            .map(|&(value, c)| (computed[value.index()], c)),
    );
    // With respect to: every carried value (its cotangent is carried on), then the wanted
    // stacked and invariant operands.
    let mut wrt: Vec<ValueId> = at[..carries].to_vec();
    let per_iteration: Vec<usize> = (carries..operands).filter(|&k| wanted[k]).collect();
    wrt.extend(per_iteration.iter().map(|&k| at[k]));
    let grads = vjp(&mut reverse, &seeds, &wrt)?;
    // The derivatives, and the views they read, read the residuals instead of the replayed
    // values (whose replay is then dead).
    let mut kept: Vec<Option<ValueId>> = vec![None; reverse.nodes.len()];
    for (&k, &leaf) in candidates.iter().zip(&residual_leaves) {
        kept[computed[k].index()] = Some(leaf);
    }
    let kept_or = |v: ValueId| kept.get(v.index()).copied().flatten().unwrap_or(v);
    for node in &mut reverse.nodes {
        for a in &mut node.args {
            *a = kept_or(*a);
        }
    }
    let grads: Vec<ValueId> = grads.into_iter().map(kept_or).collect();
    for (k, &grad) in grads.iter().enumerate().take(carries) {
        reverse.outputs.push(Output {
            name: format!("d.{}", leaf_name(k)),
            value: grad,
        });
    }
    for (j, &k) in per_iteration.iter().enumerate() {
        reverse.outputs.push(Output {
            name: format!("d.{}.{k}", leaf_name(k)),
            value: grads[carries + j],
        });
    }
    let scan = Scan {
        trips: forward.trips,
        carries,
        stacked: n_stacked,
        reverse: !forward.reverse,
        body: reverse,
    };
    let shapes: Vec<Shape> = (0..scan.results())
        .map(|i| scan.result_shape(i).expect("one shape per result"))
        .collect();
    let region = node.region;
    let reverse_scan = p.push(Node {
        op: Op::Scan(Box::new(scan)),
        args,
        shape: Shape::scalar(),
        name: None,
        region,
    });
    let result = |p: &mut Program, i: usize| {
        p.push(Node {
            op: Op::Result(i),
            args: vec![reverse_scan],
            shape: shapes[i].clone(),
            name: None,
            region,
        })
    };
    let mut cotangents: Vec<Option<ValueId>> = vec![None; operands];
    for (k, slot) in cotangents.iter_mut().enumerate().take(carries) {
        if wanted[k] {
            *slot = Some(result(p, k));
        }
    }
    for (j, &k) in per_iteration.iter().enumerate() {
        let stacked_cotangent = result(p, carries + j);
        cotangents[k] = Some(match forward.role(k) {
            ScanInput::Stacked => stacked_cotangent,
            // Read at every iteration: the sum of the iterations' cotangents.
            _ => p.reduce_sum(stacked_cotangent, vec![0]),
        });
    }
    Ok(cotangents)
}

/// The stacked values of the scan's carried values at the start of each iteration, `[T, ...]`
/// each: per-iteration outputs of the scan that are its carried leaves.
fn carried_traces(p: &mut Program, id: ValueId) -> Vec<ValueId> {
    let Op::Scan(scan) = &p.node(id).op else {
        unreachable!("called on scans")
    };
    let leaves: Vec<ValueId> = (0..scan.carries).map(|k| ValueId(k as u32)).collect();
    stacked_outputs(p, id, &leaves, "trace")
}

/// Whether the reverse body reads a forward value of this op from the forward scan (a
/// residual) rather than recomputing it: everything but views, joins and constants.
fn worth_keeping(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Reduce(..)
            | Op::MatMul
            | Op::Conv2d { .. }
            | Op::Conv2dInputGrad { .. }
            | Op::Conv2dWeightGrad { .. }
    )
}

/// `result` nodes reading the per-iteration values of the body's `values` (stacked,
/// `[T, ...]`): existing per-iteration outputs where the body has them, else new outputs
/// named `{prefix}.{name}`.
fn stacked_outputs(p: &mut Program, id: ValueId, values: &[ValueId], prefix: &str) -> Vec<ValueId> {
    let Op::Scan(scan) = &mut p.nodes[id.index()].op else {
        unreachable!("called on scans")
    };
    let carries = scan.carries;
    let mut indices = Vec::with_capacity(values.len());
    for &value in values {
        let existing = scan
            .body
            .outputs
            .iter()
            .enumerate()
            .skip(carries)
            .find(|(_, o)| o.value == value)
            .map(|(i, _)| i);
        let i = existing.unwrap_or_else(|| {
            let named = scan.body.nodes[value.index()].name.as_deref();
            let mut name = format!("{prefix}.{}", named.unwrap_or(""));
            if named.is_none() || scan.body.outputs.iter().any(|o| o.name == name) {
                name = format!("{prefix}.%{}", value.index());
            }
            scan.body.outputs.push(Output { name, value });
            scan.body.outputs.len() - 1
        });
        indices.push(i);
    }
    let shapes: Vec<Shape> = indices
        .iter()
        .map(|&i| {
            scan.result_shape(i)
                .expect("a per-iteration output is a result")
        })
        .collect();
    let region = p.node(id).region;
    indices
        .into_iter()
        .zip(shapes)
        .map(|(i, shape)| {
            p.push(Node {
                op: Op::Result(i),
                args: vec![id],
                shape,
                name: None,
                region,
            })
        })
        .collect()
}

/// Appends a copy of `body`'s computed nodes to `program`, its leaves reading `leaves`
/// (by position); returns each body node's value in `program`.
pub(crate) fn replay_body(
    program: &mut Program,
    body: &Program,
    leaves: &[ValueId],
) -> Vec<ValueId> {
    let mut computed = Vec::with_capacity(body.nodes.len());
    for (k, node) in body.nodes.iter().enumerate() {
        let value = if matches!(node.op, Op::Leaf(_)) {
            leaves[k]
        } else {
            let args = node.args.iter().map(|a| computed[a.index()]).collect();
            program.push(Node {
                args,
                region: node.region,
                ..node.clone()
            })
        };
        computed.push(value);
    }
    computed
}
