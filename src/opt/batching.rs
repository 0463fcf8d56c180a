//! Horizontal batching: independent matrix products with the same right operand become one
//! product over their left operands stacked.
//!
//! An unrolled recurrent graph applies one weight at every time step; a synchronous
//! relaxation step sends every time step's message through it at once — fifty products of
//! `[B, 4H] × [4H, H]` in the LSTM's step. Each small product pays for packing the weight and
//! runs its micro-kernels on few rows; one product over all the rows pays once and runs at the
//! rate of a large one:
//!
//! ```text
//! A_i B  (i < G, independent)   =   slices of  (stack(A_0 … A_{G−1}) B)
//! stack = reshape(concat(reshape(A_i, [m, 1, k]), axis 1), [m·G, k])
//! ```
//!
//! The stack keeps each row's G left-operand rows together (`[m, G, k]`), so that a block of
//! rows — one part's samples in a split relaxation loop — is still a block of the stack.
//! Exact: every element is the same dot product. Only products none of which depends on
//! another are batched, and only where it pays: groups of at least [`MIN_GROUP`] whose
//! results are at least [`MIN_COLUMNS`] wide (the stack is a copy of the left operands).

use crate::ir::{Node, Op, Program, Region, Shape, ValueId};
use std::collections::HashMap;

/// The fewest products batched together.
pub const MIN_GROUP: usize = 4;
/// The narrowest results batched: below this, copying the left operands costs more than the
/// products gain.
pub const MIN_COLUMNS: usize = 16;
/// The most products in one batch.
const MAX_GROUP: usize = 64;

/// Batches the independent products of `program` that share a right operand.
pub fn batch_products(program: &mut Program) {
    // Candidate products by (right operand, left operand's shape), in program order.
    let mut by_weight: HashMap<(ValueId, Vec<usize>), Vec<ValueId>> = HashMap::new();
    for id in program.ids() {
        let node = program.node(id);
        if node.op != Op::MatMul || node.shape.rank() != 2 || node.shape.dims()[1] < MIN_COLUMNS {
            continue;
        }
        let a = program.shape(node.args[0]).dims().to_vec();
        by_weight.entry((node.args[1], a)).or_default().push(id);
    }
    let mut groups: Vec<Vec<ValueId>> = by_weight
        .into_values()
        .flat_map(|candidates| independent_groups(program, &candidates))
        .filter(|g| g.len() >= MIN_GROUP)
        .collect();
    if groups.is_empty() {
        return;
    }
    groups.sort();
    let mut replace: HashMap<ValueId, ValueId> = HashMap::new();
    for group in &groups {
        let first = program.node(group[0]).clone();
        let (weight, g) = (first.args[1], group.len());
        let [m, k] = program.shape(first.args[0]).dims().try_into().expect("2-D");
        let n = first.shape.dims()[1];
        let node = |op, args, dims: Vec<usize>| Node {
            op,
            args,
            shape: Shape::new(dims),
            name: None,
            region: Region::Model,
        };
        let rows: Vec<ValueId> = group
            .iter()
            .map(|&p| {
                let a = program.node(p).args[0];
                program.push(node(Op::Reshape, vec![a], vec![m, 1, k]))
            })
            .collect();
        let stacked = program.push(node(Op::Concat { axis: 1 }, rows, vec![m, g, k]));
        let flat = program.push(node(Op::Reshape, vec![stacked], vec![m * g, k]));
        let product = program.push(node(Op::MatMul, vec![flat, weight], vec![m * g, n]));
        let split = program.push(node(Op::Reshape, vec![product], vec![m, g, n]));
        for (i, &p) in group.iter().enumerate() {
            let slice = Op::Slice {
                axis: 1,
                start: i,
                end: i + 1,
            };
            let one = program.push(node(slice, vec![split], vec![m, 1, n]));
            let result = program.push(Node {
                name: program.node(p).name.clone(),
                region: program.node(p).region,
                ..node(Op::Reshape, vec![one], vec![m, n])
            });
            replace.insert(p, result);
        }
    }
    // Users read the batched results; the program is put back in an order where every node
    // follows its operands (the new nodes were appended at the end).
    for node in &mut program.nodes {
        for a in &mut node.args {
            if let Some(&r) = replace.get(a) {
                *a = r;
            }
        }
    }
    for o in &mut program.outputs {
        if let Some(&r) = replace.get(&o.value) {
            o.value = r;
        }
    }
    program.sort_topologically();
    program.prune();
}

/// `candidates` (in program order) split into groups of products none of which depends on
/// another in its group: each product joins the first group it is independent of.
fn independent_groups(program: &Program, candidates: &[ValueId]) -> Vec<Vec<ValueId>> {
    if candidates.len() < MIN_GROUP {
        return Vec::new();
    }
    // For every node, the candidates it depends on (as a bit set over their indices, in
    // words of 64).
    let words = candidates.len().div_ceil(64);
    let index: HashMap<ValueId, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, &c)| (c, i))
        .collect();
    let mut depends = vec![vec![0u64; words]; program.nodes.len()];
    for id in program.ids() {
        let mut set = vec![0u64; words];
        for a in &program.node(id).args {
            for (w, bits) in set.iter_mut().zip(&depends[a.index()]) {
                *w |= bits;
            }
        }
        if let Some(&i) = index.get(&id) {
            set[i / 64] |= 1 << (i % 64);
        }
        depends[id.index()] = set;
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, &c) in candidates.iter().enumerate() {
        let reads = &depends[program.node(c).args[0].index()];
        let free = |g: &Vec<usize>| {
            g.len() < MAX_GROUP && g.iter().all(|&j| reads[j / 64] & (1 << (j % 64)) == 0)
        };
        match groups.iter_mut().find(|g| free(g)) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
        .into_iter()
        .map(|g| g.into_iter().map(|i| candidates[i]).collect())
        .collect()
}
