//! Work in a scan's body that reads no carried value moves out of the loop, as one
//! computation over every iteration at once.
//!
//! A body node that depends only on the iteration's slices of stacked operands and on
//! invariants (no carried value, directly or through its operands) computes, at iteration t,
//! a function of the stacked operands' row t: the same node applied to the whole stacked
//! operands (`[T, ...]`, the iteration axis in front, invariants broadcast along it) computes
//! every iteration's value at once, row t being iteration t's. The body then reads that row
//! as one more stacked operand. A product `x_t @ w` of every iteration becomes one product of
//! `T·B` rows, an elementwise kernel one kernel over `[T, B, ...]`, and a kernel runs once
//! instead of `T` times (sharing the cores where it is large).
//!
//! Backpropagation through a scan is a reverse scan that replays each iteration of the
//! forward body from the carried values' trace (`src/autodiff/scan.rs`): the replay reads no
//! carried value of the reverse scan, so all of it moves out here.
//!
//! Elementwise work on rows the loop reads anyway (the reverse scan's `1 − tanh²` of a
//! residual that the carried cotangent also reads) stays: moved out, it would be one more
//! stacked array written and read back for no fewer operations.
//!
//! An invariant view that a product in the body reads as its strided right operand (the
//! reverse scan's `g @ transpose(w)[.., h's rows]`) is laid out once before the loop: the
//! body reads it as one more invariant operand, which the backends store contiguously,
//! instead of a GEMM packing the strided view at every iteration.
//!
//! Sound because the moved nodes are pure and read only per-iteration slices and invariants:
//! row t of the stacked computation is exactly what the body computed at iteration t, in
//! either direction of the scan. Views of a moved value that only a kept node reads stay in
//! the body (a slice of the stacked row is free; a stacked slice would be copied).

use crate::ir::{Node, Op, Program, ReduceOp, ScanInput, Shape, ValueId};

/// Moves the carry-free work of every scan of `program` (and of scans nested in their
/// bodies) out of its loop. Returns whether anything moved.
pub fn hoist_scans(program: &mut Program) -> bool {
    let mut moved = false;
    for i in 0..program.nodes.len() {
        if let Op::Scan(scan) = &mut program.nodes[i].op {
            moved |= hoist_scans(&mut scan.body);
            moved |= hoist_one(program, i);
            moved |= sink_one(program, i);
        }
    }
    if moved {
        program.sort_topologically();
        program.prune();
    }
    moved
}

/// What a body node's value depends on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Depends {
    /// A carried value: it stays in the loop.
    Carried,
    /// The iteration's slices of stacked operands (and invariants): it can move out, stacked.
    Iteration,
    /// Invariants only: the same at every iteration.
    Invariant,
}

/// Whether an op that reads per-iteration values has a stacked form here.
fn stackable(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Reduce(..)
            | Op::Reshape
            | Op::Transpose(_)
            | Op::Broadcast
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Concat { .. }
            | Op::MatMul
    )
}

/// A view: moving it out would copy what the body can read in place.
fn is_view(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape | Op::Transpose(_) | Op::Broadcast | Op::Slice { .. }
    )
}

/// The scan node `index`: its scan, operands and region.
fn scan_at(program: &Program, index: usize) -> (crate::ir::Scan, Vec<ValueId>, crate::ir::Region) {
    let node = &program.nodes[index];
    let Op::Scan(scan) = &node.op else {
        unreachable!("called on scans")
    };
    (scan.as_ref().clone(), node.args.clone(), node.region)
}

fn hoist_one(program: &mut Program, index: usize) -> bool {
    let (scan, args, region) = scan_at(program, index);
    let body = &scan.body;
    let operands = scan.operands();
    let n = body.nodes.len();

    let mut depends = Vec::with_capacity(n);
    for (k, node) in body.nodes.iter().enumerate() {
        let d = if k < operands {
            match scan.role(k) {
                ScanInput::Carried => Depends::Carried,
                ScanInput::Stacked => Depends::Iteration,
                ScanInput::Invariant => Depends::Invariant,
            }
        } else {
            let of = |d: Depends| node.args.iter().any(|a| depends[a.index()] == d);
            match &node.op {
                Op::Const(_) | Op::Iota { .. } => Depends::Invariant,
                _ if of(Depends::Carried) => Depends::Carried,
                op if of(Depends::Iteration) && stackable(op) => Depends::Iteration,
                _ if of(Depends::Iteration) => Depends::Carried,
                // Invariant work stays where it is (the relaxation's hoisting and CSE see it).
                _ => Depends::Invariant,
            }
        };
        depends.push(d);
    }

    // The per-iteration values the loop still reads: those a kept node or an output reads.
    let mut crossing = vec![false; n];
    for (k, node) in body.nodes.iter().enumerate().skip(operands) {
        if depends[k] != Depends::Iteration {
            for a in &node.args {
                crossing[a.index()] = true;
            }
        }
    }
    for o in &body.outputs {
        crossing[o.value.index()] = true;
    }
    // A view of a moved value stays in the body, reading the moved value instead.
    for k in (operands..n).rev() {
        let node = &body.nodes[k];
        if crossing[k] && depends[k] == Depends::Iteration && is_view(&node.op) {
            let a = node.args[0].index();
            if depends[a] == Depends::Iteration {
                crossing[k] = false;
                crossing[a] = true;
            }
        }
    }
    let streamed = streamed_leaves(&scan, &depends);
    let moved: Vec<usize> = (operands..n)
        .filter(|&k| crossing[k] && depends[k] == Depends::Iteration)
        .filter(|&k| !elementwise_of_streamed(&scan, &streamed, k))
        .collect();
    if moved.is_empty() {
        return false;
    }

    // The moved nodes and what they read, computed outside over every iteration.
    let mut needed = vec![false; n];
    for &k in moved.iter().rev() {
        needed[k] = true;
    }
    for k in (operands..n).rev() {
        if needed[k] {
            for a in &body.nodes[k].args {
                needed[a.index()] = true;
            }
        }
    }
    let trips = scan.trips;
    // Each needed node's value outside: stacked `[T, ...]` for per-iteration ones, whole for
    // invariants.
    let mut outside: Vec<Option<ValueId>> = vec![None; n];
    for k in 0..n {
        if !needed[k] {
            continue;
        }
        let node = &body.nodes[k];
        if k < operands {
            outside[k] = Some(args[k]);
            continue;
        }
        if depends[k] == Depends::Invariant {
            outside[k] = Some(replay_outside(program, node, &outside, region));
            continue;
        }
        let value = stacked_node(program, body, node, &depends, &outside, trips);
        program.nodes[value.index()].region = region;
        debug_assert_eq!(program.shape(value), &stacked_shape(trips, &node.shape));
        outside[k] = Some(value);
    }

    // The body, with each moved value one more stacked leaf (after the existing ones).
    let stacked_end = scan.carries + scan.stacked;
    let mut new_body = Program::new(body.name.clone());
    let mut map: Vec<Option<ValueId>> = vec![None; n];
    let mut new_args = Vec::with_capacity(args.len() + moved.len());
    let copy_leaf = |new_body: &mut Program, k: usize| {
        let leaf = &body.nodes[k];
        new_body.push(leaf.clone())
    };
    for k in 0..stacked_end {
        map[k] = Some(copy_leaf(&mut new_body, k));
        new_args.push(args[k]);
    }
    for &k in &moved {
        let node = &body.nodes[k];
        let name = node.name.clone().unwrap_or_else(|| format!("hoisted.{k}"));
        map[k] = Some(new_body.leaf(crate::ir::LeafKind::State, name, node.shape.clone()));
        new_args.push(outside[k].expect("moved values are computed"));
    }
    for k in stacked_end..operands {
        map[k] = Some(copy_leaf(&mut new_body, k));
        new_args.push(args[k]);
    }
    for k in operands..n {
        if map[k].is_some() {
            continue;
        }
        let node = &body.nodes[k];
        let Some(node_args) = node
            .args
            .iter()
            .map(|a| map[a.index()])
            .collect::<Option<Vec<ValueId>>>()
        else {
            continue;
        };
        map[k] = Some(new_body.push(Node {
            args: node_args,
            ..node.clone()
        }));
    }
    new_body.outputs = body
        .outputs
        .iter()
        .map(|o| crate::ir::Output {
            name: o.name.clone(),
            value: map[o.value.index()].expect("outputs are kept or moved"),
        })
        .collect();
    new_body.prune();
    // A per-iteration output that is now a moved value is that value, stacked: its readers
    // read the value computed outside instead.
    let passed: Vec<Option<ValueId>> = body
        .outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let k = o.value.index();
            (i >= scan.carries && k >= operands && depends[k] == Depends::Iteration)
                .then(|| outside[k])
                .flatten()
        })
        .collect();
    let mut new_scan = scan.clone();
    new_scan.stacked += moved.len();
    new_scan.body = new_body;
    program.nodes[index].op = Op::Scan(Box::new(new_scan));
    program.nodes[index].args = new_args;
    read_instead(program, index, &passed);
    true
}

/// The stacked operands that work staying in the loop reads: their rows are read at every
/// iteration whatever else moves out.
fn streamed_leaves(scan: &crate::ir::Scan, depends: &[Depends]) -> Vec<bool> {
    let operands = scan.operands();
    let mut streamed = vec![false; operands];
    for (k, node) in scan.body.nodes.iter().enumerate().skip(operands) {
        if depends[k] == Depends::Carried {
            for a in &node.args {
                let a = a.index();
                if a < operands && scan.role(a) == ScanInput::Stacked {
                    streamed[a] = true;
                }
            }
        }
    }
    streamed
}

/// Whether body node `k` is elementwise work (maps, views, constants) on invariants and on
/// stacked operands the loop reads anyway: moved out, it would be one more stacked array
/// written and read back for no fewer operations (a reverse scan's `1 − tanh²` of a
/// residual), where in the loop it fuses into the kernel that reads it.
fn elementwise_of_streamed(scan: &crate::ir::Scan, streamed: &[bool], k: usize) -> bool {
    let body = &scan.body;
    let mut stack = vec![k];
    let mut seen = vec![false; body.nodes.len()];
    while let Some(v) = stack.pop() {
        if std::mem::replace(&mut seen[v], true) {
            continue;
        }
        if v < streamed.len() {
            match scan.role(v) {
                ScanInput::Stacked if streamed[v] => continue,
                ScanInput::Invariant => continue,
                _ => return false,
            }
        }
        let node = &body.nodes[v];
        match node.op {
            Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Const(_)
            | Op::Broadcast
            | Op::Reshape => stack.extend(node.args.iter().map(|a| a.index())),
            _ => return false,
        }
    }
    true
}

/// Makes every reader of result `i` of the scan node `index` read `instead[i]` where it is
/// given (a per-iteration output computed outside the loop).
fn read_instead(program: &mut Program, index: usize, instead: &[Option<ValueId>]) {
    let mut replace: Vec<Option<ValueId>> = vec![None; program.nodes.len()];
    for (j, node) in program.nodes.iter().enumerate() {
        if let Op::Result(i) = node.op {
            if node.args[0].index() == index {
                replace[j] = instead.get(i).copied().flatten();
            }
        }
    }
    if replace.iter().all(Option::is_none) {
        return;
    }
    let with = |v: ValueId| replace.get(v.index()).copied().flatten().unwrap_or(v);
    for node in &mut program.nodes {
        for a in &mut node.args {
            *a = with(*a);
        }
    }
    for o in &mut program.outputs {
        o.value = with(o.value);
    }
}

/// Work in a scan's body whose values only per-iteration outputs read (a parameter's
/// gradient at each iteration, `x_tᵀ · dz_t`, summed after the loop) moves out of the loop,
/// computed once over every iteration from its operands' stacked values: the loop outputs
/// those operands instead. With [`fold_summed_products`], the iterations' products and their
/// sum become one product over all `T·B` rows.
/// Makes each scan of `program` (and of scans nested in their bodies) read an operand that
/// is a constant array (a zero probe of the exact sweep, stacked over the iterations) as the
/// same constant in its body, where the body's folds see it: `x + 0` is `x`, and the array
/// is neither filled nor streamed. Carried initial values stay operands.
pub fn inline_constant_operands(program: &mut Program) {
    for i in 0..program.nodes.len() {
        let Op::Scan(scan) = &program.nodes[i].op else {
            continue;
        };
        let constants: Vec<(usize, f64)> = program.nodes[i]
            .args
            .iter()
            .enumerate()
            .skip(scan.carries)
            .filter_map(|(k, a)| match program.nodes[a.index()].op {
                Op::Const(c) => Some((k, c)),
                _ => None,
            })
            .collect();
        let Op::Scan(scan) = &mut program.nodes[i].op else {
            unreachable!("matched above")
        };
        inline_constant_operands(&mut scan.body);
        if constants.is_empty() {
            continue;
        }
        let body = &mut scan.body;
        for (k, c) in constants {
            let leaf = ValueId(k as u32);
            let constant = body.constant(c, body.nodes[k].shape.clone());
            for node in &mut body.nodes {
                for a in &mut node.args {
                    if *a == leaf {
                        *a = constant;
                    }
                }
            }
            for o in &mut body.outputs {
                if o.value == leaf {
                    o.value = constant;
                }
            }
        }
        body.sort_topologically();
    }
}

/// Lays out, before each scan of `program` (and of scans nested in their bodies), the
/// invariant strided views that its body's products read as their right operand. Run after
/// the passes that make the views (`dead_parts` slices a transposed weight).
pub fn lay_out_invariant_operands(program: &mut Program) {
    let mut moved = false;
    for i in 0..program.nodes.len() {
        if let Op::Scan(scan) = &mut program.nodes[i].op {
            lay_out_invariant_operands(&mut scan.body);
            moved |= lay_out_one(program, i);
        }
    }
    if moved {
        program.sort_topologically();
    }
}

/// Lays out the invariant strided views that the products of scan `index`'s body read as
/// their right operand (see the module's documentation). Returns whether any moved.
fn lay_out_one(program: &mut Program, index: usize) -> bool {
    let (scan, args, region) = scan_at(program, index);
    let body = &scan.body;
    let operands = scan.operands();
    // Invariant operands and views of them only.
    let mut invariant = vec![false; body.nodes.len()];
    for (k, node) in body.nodes.iter().enumerate() {
        invariant[k] = if k < operands {
            scan.role(k) == ScanInput::Invariant
        } else {
            is_view(&node.op) && invariant[node.args[0].index()]
        };
    }
    let mut laid_out: Vec<ValueId> = Vec::new();
    for node in body.nodes.iter().skip(operands) {
        if node.op != Op::MatMul {
            continue;
        }
        let rhs = node.args[1];
        let strided = crate::opt::hoist::strided_view(body, rhs);
        if invariant[rhs.index()] && strided && !laid_out.contains(&rhs) {
            laid_out.push(rhs);
        }
    }
    if laid_out.is_empty() {
        return false;
    }
    // Each laid-out view, computed outside from the scan's operands.
    let mut outside: Vec<Option<ValueId>> = vec![None; body.nodes.len()];
    for k in 0..body.nodes.len() {
        if k < operands {
            outside[k] = Some(args[k]);
        } else if invariant[k] {
            outside[k] = Some(replay_outside(program, &body.nodes[k], &outside, region));
        }
    }
    // The body with each laid-out view one more invariant operand, read in its place.
    let mut new_body = Program::new(body.name.clone());
    let mut map: Vec<ValueId> = Vec::with_capacity(body.nodes.len());
    for node in &body.nodes[..operands] {
        map.push(new_body.push(node.clone()));
    }
    let mut new_args = args.clone();
    let mut leaf_of = std::collections::HashMap::new();
    for &v in &laid_out {
        let shape = body.shape(v).clone();
        let leaf = new_body.leaf(
            crate::ir::LeafKind::State,
            format!("laid_out.{}", v.index()),
            shape,
        );
        leaf_of.insert(v, leaf);
        new_args.push(outside[v.index()].expect("laid-out views are computed"));
    }
    for (k, node) in body.nodes.iter().enumerate().skip(operands) {
        let id = match leaf_of.get(&ValueId(k as u32)) {
            Some(&leaf) => leaf,
            None => new_body.push(Node {
                args: node.args.iter().map(|a| map[a.index()]).collect(),
                ..node.clone()
            }),
        };
        map.push(id);
    }
    new_body.outputs = body
        .outputs
        .iter()
        .map(|o| crate::ir::Output {
            name: o.name.clone(),
            value: map[o.value.index()],
        })
        .collect();
    new_body.prune();
    let mut new_scan = scan.clone();
    new_scan.body = new_body;
    program.nodes[index].op = Op::Scan(Box::new(new_scan));
    program.nodes[index].args = new_args;
    true
}

/// An invariant body node computed once outside the loop (in `region`), from the outside
/// values of its operands.
fn replay_outside(
    program: &mut Program,
    node: &Node,
    outside: &[Option<ValueId>],
    region: crate::ir::Region,
) -> ValueId {
    let args = node
        .args
        .iter()
        .map(|a| outside[a.index()].expect("operands first"))
        .collect();
    program.push(Node {
        args,
        name: None,
        region,
        ..node.clone()
    })
}

fn sink_one(program: &mut Program, index: usize) -> bool {
    let (scan, args, region) = scan_at(program, index);
    let body = &scan.body;
    let operands = scan.operands();
    let n = body.nodes.len();
    if body.nodes.iter().any(|node| matches!(node.op, Op::Scan(_))) {
        return false;
    }
    let users = body.users();
    let mut carried_output = vec![false; n];
    let mut per_iteration_output = vec![false; n];
    for (i, o) in body.outputs.iter().enumerate() {
        if i < scan.carries {
            carried_output[o.value.index()] = true;
        } else {
            per_iteration_output[o.value.index()] = true;
        }
    }
    // Whether a node's value changes from one iteration to the next.
    let mut varies = vec![false; n];
    for (k, node) in body.nodes.iter().enumerate() {
        varies[k] = if k < operands {
            k < scan.carries + scan.stacked
        } else {
            node.args.iter().any(|a| varies[a.index()])
        };
    }
    // Sunk: varying, read only by sunk nodes and per-iteration outputs, and stackable.
    let mut sunk = vec![false; n];
    for k in (operands..n).rev() {
        let node = &body.nodes[k];
        sunk[k] = varies[k]
            && stackable(&node.op)
            && !carried_output[k]
            && (per_iteration_output[k] || !users[k].is_empty())
            && users[k].iter().all(|u| sunk[u.index()]);
    }
    // Worth it where a product moves out.
    let product = (operands..n).any(|k| sunk[k] && matches!(body.nodes[k].op, Op::MatMul));
    if !product {
        return false;
    }
    // The values sunk nodes read from the loop: outputs of the loop, stacked.
    let mut outside: Vec<Option<ValueId>> = vec![None; n];
    let mut depends = vec![Depends::Iteration; n];
    let mut new_outputs: Vec<(usize, crate::ir::Output)> = Vec::new();
    let mut new_body = body.clone();
    for k in 0..n {
        if !sunk[k] {
            continue;
        }
        for a in &body.nodes[k].args {
            let a = a.index();
            if sunk[a] || outside[a].is_some() {
                continue;
            }
            if !varies[a] {
                // The same at every iteration: computed once, outside.
                replay_invariant(program, body, a, &args, region, &mut outside);
                depends[a] = Depends::Invariant;
            } else if a >= scan.carries && a < scan.carries + scan.stacked {
                outside[a] = Some(args[a]);
            } else {
                let name = body.nodes[a]
                    .name
                    .clone()
                    .map_or_else(|| format!("sunk.{a}"), |n| format!("sunk.{n}"));
                new_body.outputs.push(crate::ir::Output {
                    name,
                    value: ValueId(a as u32),
                });
                new_outputs.push((a, new_body.outputs.last().expect("pushed").clone()));
            }
        }
    }
    // The scan with its new outputs, and their results.
    let mut new_scan = scan.clone();
    new_scan.body = new_body;
    let first = scan.body.outputs.len();
    let shapes: Vec<Shape> = (first..new_scan.results())
        .map(|i| new_scan.result_shape(i).expect("one shape per result"))
        .collect();
    program.nodes[index].op = Op::Scan(Box::new(new_scan));
    for (j, ((a, _), shape)) in new_outputs.iter().zip(shapes).enumerate() {
        outside[*a] = Some(program.push(Node {
            op: Op::Result(first + j),
            args: vec![ValueId(index as u32)],
            shape,
            name: None,
            region,
        }));
    }
    for k in 0..n {
        if sunk[k] {
            let value = stacked_node(
                program,
                body,
                &body.nodes[k],
                &depends,
                &outside,
                scan.trips,
            );
            program.nodes[value.index()].region = region;
            outside[k] = Some(value);
        }
    }
    let instead: Vec<Option<ValueId>> = body
        .outputs
        .iter()
        .map(|o| {
            let k = o.value.index();
            sunk[k].then(|| outside[k]).flatten()
        })
        .collect();
    read_instead(program, index, &instead);
    true
}

/// Body node `k`, which reads only invariants, computed outside the loop (once), with what it
/// reads; `outside` records each value.
fn replay_invariant(
    program: &mut Program,
    body: &Program,
    k: usize,
    args: &[ValueId],
    region: crate::ir::Region,
    outside: &mut [Option<ValueId>],
) -> ValueId {
    if let Some(v) = outside[k] {
        return v;
    }
    let node = &body.nodes[k];
    let value = if matches!(node.op, Op::Leaf(_)) {
        args[k]
    } else {
        let node_args = node
            .args
            .iter()
            .map(|a| replay_invariant(program, body, a.index(), args, region, outside))
            .collect();
        program.push(Node {
            args: node_args,
            name: None,
            region,
            ..node.clone()
        })
    };
    outside[k] = Some(value);
    value
}

/// `sum over t of a_t @ b_t`, the iterations' products summed (reduce_sum over the leading
/// axis of a batched product that nothing else reads), becomes one product with the
/// iterations' rows joined along the contracted axis: `[m, T·k] @ [T·k, n]`.
pub fn fold_summed_products(program: &mut Program) {
    let users = program.users();
    let mut changed = false;
    for r in 0..program.nodes.len() {
        let Op::Reduce(ReduceOp::Sum, axes) = &program.nodes[r].op else {
            continue;
        };
        let product = program.nodes[r].args[0];
        if axes.as_slice() != [0]
            || !matches!(program.node(product).op, Op::MatMul)
            || users[product.index()].len() != 1
            || program.shape(product).rank() != 3
        {
            continue;
        }
        let (a, b) = (program.node(product).args[0], program.node(product).args[1]);
        let (a_dims, b_dims) = (
            program.shape(a).dims().to_vec(),
            program.shape(b).dims().to_vec(),
        );
        let (t, m, k, n) = (a_dims[0], a_dims[1], a_dims[2], b_dims[2]);
        let left = program.transpose(a, vec![1, 0, 2]);
        let left = program.reshape(left, Shape::new(vec![m, t * k]));
        let right = program.reshape(b, Shape::new(vec![t * k, n]));
        let region = program.nodes[r].region;
        let joined = program.build(Op::MatMul, &[left, right], None);
        program.nodes[joined.index()].region = region;
        // The reduction becomes a reshape of the joined product (same shape, [m, n]).
        program.nodes[r].op = Op::Reshape;
        program.nodes[r].args = vec![joined];
        changed = true;
    }
    if changed {
        program.sort_topologically();
        program.prune();
    }
}

/// `shape` with the iteration axis in front: `[trips, ...]`.
fn stacked_shape(trips: usize, shape: &Shape) -> Shape {
    let mut dims = vec![trips];
    dims.extend_from_slice(shape.dims());
    Shape::new(dims)
}

/// Body node `node`, which reads per-iteration values, computed for every iteration at once.
fn stacked_node(
    program: &mut Program,
    body: &Program,
    node: &Node,
    depends: &[Depends],
    outside: &[Option<ValueId>],
    trips: usize,
) -> ValueId {
    let stacked = |s: &Shape| stacked_shape(trips, s);
    let value = |a: ValueId| outside[a.index()].expect("operands first");
    let per_iteration = |a: ValueId| depends[a.index()] == Depends::Iteration;
    // An operand as `[T, ...]`: invariants broadcast along the iteration axis.
    let stacked_operand = |program: &mut Program, a: ValueId| {
        if per_iteration(a) {
            value(a)
        } else {
            program.broadcast(value(a), stacked(body.shape(a)))
        }
    };
    let shape = stacked(&node.shape);
    match &node.op {
        Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Concat { .. } => {
            let node_args: Vec<ValueId> = node
                .args
                .iter()
                .map(|&a| stacked_operand(program, a))
                .collect();
            let op = match &node.op {
                Op::Concat { axis } => Op::Concat { axis: axis + 1 },
                op => op.clone(),
            };
            program.build(op, &node_args, Some(shape))
        }
        Op::Reduce(r, axes) => {
            let axes = axes.iter().map(|a| a + 1).collect();
            program.build(Op::Reduce(*r, axes), &[value(node.args[0])], None)
        }
        Op::Reshape => program.build(Op::Reshape, &[value(node.args[0])], Some(shape)),
        Op::Transpose(perm) => {
            let mut p = vec![0];
            p.extend(perm.iter().map(|a| a + 1));
            program.build(Op::Transpose(p), &[value(node.args[0])], None)
        }
        Op::Broadcast => {
            // Right-aligned: the operand's axes get 1s between the iteration axis and them.
            let a = node.args[0];
            let from = body.shape(a).dims();
            let mut dims = vec![trips];
            dims.extend(std::iter::repeat_n(1, node.shape.rank() - from.len()));
            dims.extend_from_slice(from);
            let reshaped = program.reshape(value(a), Shape::new(dims));
            program.build(Op::Broadcast, &[reshaped], Some(shape))
        }
        Op::Slice { axis, start, end } => program.build(
            Op::Slice {
                axis: axis + 1,
                start: *start,
                end: *end,
            },
            &[value(node.args[0])],
            None,
        ),
        Op::Pad {
            axis,
            before,
            after,
        } => program.build(
            Op::Pad {
                axis: axis + 1,
                before: *before,
                after: *after,
            },
            &[value(node.args[0])],
            None,
        ),
        Op::MatMul => {
            let (a, b) = (node.args[0], node.args[1]);
            let a_dims = body.shape(a).dims();
            if per_iteration(a) && !per_iteration(b) && a_dims.len() == 2 {
                // Every iteration's rows against one matrix: one product of T·m rows.
                let rows =
                    program.reshape(value(a), Shape::new(vec![trips * a_dims[0], a_dims[1]]));
                let product = program.build(Op::MatMul, &[rows, value(b)], None);
                program.reshape(product, shape)
            } else {
                let left = stacked_operand(program, a);
                let right = stacked_operand(program, b);
                program.build(Op::MatMul, &[left, right], None)
            }
        }
        op => unreachable!("{op} has no stacked form here"),
    }
}
