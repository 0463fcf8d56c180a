//! Unrolling: a scan replaced by copies of its body, one per iteration.
//!
//! A structured loop costs compile time and code size independent of its trip count, but a
//! short loop over a small body gains nothing from staying a loop: its iterations are as
//! many tiny kernels either way, and unrolled they fuse with what surrounds them. The pass
//! rewrites a scan into straight-line IR with the same meaning: iteration t's copy of the
//! body reads the carried values the previous copy computed, slice t of each stacked operand
//! and the invariant operands themselves; the final carried values are the last copy's, and
//! each per-iteration output is the concatenation of the copies' values along a new first
//! axis. Nested scans are unrolled too (inside out) when the policy accepts them.

use crate::ir::{Node, Op, Program, Region, Scan, ScanInput, Shape, ValueId};

/// Unrolls every scan `unroll` accepts (asked innermost first), in place.
pub fn unroll(program: &mut Program, unroll: &dyn Fn(&Scan) -> bool) {
    unroll_mapped(program, unroll);
}

/// [`unroll`], returning where each old node's value is in the new program (`None` for an
/// unrolled scan node).
pub fn unroll_mapped(
    program: &mut Program,
    unroll: &dyn Fn(&Scan) -> bool,
) -> Vec<Option<ValueId>> {
    if !program.nodes.iter().any(|n| matches!(n.op, Op::Scan(_))) {
        return program.ids().map(Some).collect();
    }
    let old = std::mem::replace(program, Program::new(program.name.clone()));
    program.inits = old.inits.clone();
    // The value of each old node in the new program (`None` for an unrolled scan node).
    let mut map: Vec<Option<ValueId>> = Vec::with_capacity(old.nodes.len());
    // The results of each unrolled scan, by its old id.
    let mut unrolled: std::collections::HashMap<ValueId, Vec<ValueId>> = Default::default();
    for (i, node) in old.nodes.iter().enumerate() {
        let id = ValueId(i as u32);
        let args: Vec<ValueId> = node
            .args
            .iter()
            .map(|a| map[a.index()].unwrap_or(*a))
            .collect();
        match &node.op {
            Op::Scan(scan) => {
                let mut scan = scan.clone();
                self::unroll(&mut scan.body, unroll);
                if unroll(&scan) {
                    unrolled.insert(id, inline(program, &scan, &args, node.region));
                    map.push(None);
                } else {
                    map.push(Some(program.push(Node {
                        op: Op::Scan(scan),
                        args,
                        ..node.clone()
                    })));
                }
            }
            Op::Result(k) if unrolled.contains_key(&node.args[0]) => {
                map.push(Some(unrolled[&node.args[0]][*k]));
            }
            _ => map.push(Some(program.push(Node {
                args,
                ..node.clone()
            }))),
        }
    }
    program.outputs = old
        .outputs
        .iter()
        .map(|o| crate::ir::Output {
            name: o.name.clone(),
            value: map[o.value.index()].expect("outputs are values"),
        })
        .collect();
    map
}

/// Appends the scan's iterations to `program`; returns its results.
fn inline(program: &mut Program, scan: &Scan, args: &[ValueId], region: Region) -> Vec<ValueId> {
    let body = &scan.body;
    let operands = scan.operands();
    let mut carried: Vec<ValueId> = args[..scan.carries].to_vec();
    let outputs = body.outputs.len() - scan.carries;
    let mut per_iteration: Vec<Vec<Option<ValueId>>> = vec![vec![None; scan.trips]; outputs];
    for k in 0..scan.trips {
        let t = scan.iteration(k);
        let mut map: Vec<ValueId> = Vec::with_capacity(body.nodes.len());
        for (j, node) in body.nodes.iter().enumerate() {
            let value = if j < operands {
                match scan.role(j) {
                    ScanInput::Carried => carried[j],
                    ScanInput::Invariant => args[j],
                    ScanInput::Stacked => {
                        let slice = program.build(
                            Op::Slice {
                                axis: 0,
                                start: t,
                                end: t + 1,
                            },
                            &[args[j]],
                            None,
                        );
                        set_region(program, slice, region);
                        let one = program.reshape(slice, node.shape.clone());
                        set_region(program, one, region);
                        one
                    }
                }
            } else {
                let args = node.args.iter().map(|a| map[a.index()]).collect();
                program.push(Node {
                    args,
                    ..node.clone()
                })
            };
            map.push(value);
        }
        carried = body.outputs[..scan.carries]
            .iter()
            .map(|o| map[o.value.index()])
            .collect();
        for (o, ys) in per_iteration.iter_mut().enumerate() {
            ys[t] = Some(map[body.outputs[scan.carries + o].value.index()]);
        }
    }
    let mut results = carried;
    for (o, ys) in per_iteration.into_iter().enumerate() {
        let shape = scan
            .result_shape(scan.carries + o)
            .expect("one result per output");
        // A per-iteration loss term stays in the loss region once stacked, so that it is
        // not taken for a node of the model.
        let value = body.outputs[scan.carries + o].value;
        let region = body.nodes[value.index()].region.in_loop(region);
        let rows: Vec<ValueId> = ys
            .into_iter()
            .map(|y| {
                let y = y.expect("every iteration ran");
                let mut dims = vec![1];
                dims.extend_from_slice(program.shape(y).dims());
                let row = program.reshape(y, Shape::new(dims));
                set_region(program, row, region);
                row
            })
            .collect();
        let stacked = match rows.as_slice() {
            [] => program.constant(0.0, shape),
            [one] => *one,
            _ => program.build(Op::Concat { axis: 0 }, &rows, None),
        };
        set_region(program, stacked, region);
        results.push(stacked);
    }
    results
}

/// Gives a node the scan's region, unless it is an existing value the builder returned
/// (a reshape to the same shape).
fn set_region(program: &mut Program, id: ValueId, region: Region) {
    let node = &mut program.nodes[id.index()];
    if matches!(
        node.op,
        Op::Slice { .. } | Op::Reshape | Op::Concat { .. } | Op::Const(_)
    ) {
        node.region = region;
    }
}
