//! IR-to-IR optimisations: every pass that rewrites a program into a cheaper one with the same
//! results lives here, one small module each, with a `//!` saying what it rewrites and why that
//! is sound.
//!
//! The passes, in the order they run:
//!
//! 0. [`scan_hoist`] — a loop's work that reads no carried value moves out of the loop, as one
//!    computation over every iteration (the replay in a reverse scan, products of the
//!    iterations' slices); after passes 1–3, an invariant strided view a body's product reads
//!    (a transposed weight's slice) is laid out once before the loop. Elementwise work on rows
//!    the loop streams anyway stays in it, and constant operands become constants of the body.
//! 1. [`concat`] — sums of pads over adjacent parts of an axis become one concat (gradients of
//!    tensors sliced into parts), and elementwise ops on a concat the concat of the ops on its
//!    parts (the concat is then never written for them).
//! 2. [`dead_parts`] — a product only partly used is computed only for the parts used (the
//!    message to the clamped input's half of `concat(x, h) @ w`).
//! 3. [`cse`] — common subexpressions shared, identities folded, dead nodes pruned.
//!
//! [`simplify`] runs these on every derived program (gradient, learning, closed-form step)
//! and passes 1–3 on the bodies of its loops too.
//! [`batching`] — independent products with one right operand become one product over their
//! stacked left operands — runs on a relaxation loop's body once its invariants are hoisted
//! (the weight a body's products share is then one state leaf).
//! [`relaxation`] — a fixed- or exact-mode relaxation's final state by one reverse sweep or in
//! closed form instead of the simulated loop — replaces the loop where it applies (its
//! `evaluation` says which is chosen and why). The fused step it makes takes its stacked
//! products over rows in their own order ([`row_order`]): nothing splits it by samples.
//!
//! A relaxation loop is then [`hoist`]ed: everything that does not depend on carried state moves
//! to the prologue, which is simplified again. Last, the backend asks [`split`] whether the loop
//! body can run as independent blocks of samples on several cores.

pub mod batching;
pub mod concat;
pub mod cse;
pub mod dead_parts;
pub mod hoist;
pub mod leading_rows;
pub mod relaxation;
pub mod row_order;
pub mod scan_hoist;
pub mod split;
pub mod unroll;

pub use cse::cse;
pub use hoist::hoist_invariants;

use crate::ir::Program;

/// The clean-up every derived program gets: carry-free work out of loops, constant operands
/// into their loops, the pad/concat fold, dead parts of products, then CSE.
pub fn simplify(program: &mut Program) {
    scan_hoist::hoist_scans(program);
    scan_hoist::inline_constant_operands(program);
    simplify_bodies(program);
    scan_hoist::lay_out_invariant_operands(program);
    scan_hoist::fold_summed_products(program);
}

/// The local passes (the pad/concat fold, dead parts of products, CSE) on `program` and, first,
/// on every loop body in it: a reverse scan's body is built like any derived program (the
/// gradient of an LSTM's gate slices is a sum of pads there, its message to the clamped input a
/// dead part of a product), and its result is computed once per iteration.
fn simplify_bodies(program: &mut Program) {
    for node in &mut program.nodes {
        if let crate::ir::Op::Scan(scan) = &mut node.op {
            simplify_bodies(&mut scan.body);
        }
    }
    concat::join_padded_sums(program);
    concat::split_padded_sums(program);
    concat::distribute(program);
    dead_parts::narrow_products(program);
    cse::cse(program);
}

/// Makes node `i` of `program` read `replace[a]` for each operand `a` (a pass that replaces
/// earlier nodes as it walks forward) and returns its new operands.
fn read_replaced(
    program: &mut Program,
    i: usize,
    replace: &[crate::ir::ValueId],
) -> Vec<crate::ir::ValueId> {
    let args: Vec<_> = program.nodes[i]
        .args
        .iter()
        .map(|a| replace[a.index()])
        .collect();
    program.nodes[i].args.clone_from(&args);
    args
}

/// Makes every operand and output of `program` read `replace[v]` for each node `v` the
/// vector covers (a pass that appended the replacements after the nodes they replace), puts
/// the nodes back in order and prunes the replaced ones.
fn settle_replacements(program: &mut Program, replace: &[crate::ir::ValueId]) {
    let replaced = |v: crate::ir::ValueId| replace.get(v.index()).copied().unwrap_or(v);
    for node in &mut program.nodes {
        for a in &mut node.args {
            *a = replaced(*a);
        }
    }
    for o in &mut program.outputs {
        o.value = replaced(o.value);
    }
    program.sort_topologically();
    program.prune();
}
