//! IR-to-IR optimisations: every pass that rewrites a program into a cheaper one with the same
//! results lives here, one small module each, with a `//!` saying what it rewrites and why that
//! is sound.
//!
//! The passes, in the order they run:
//!
//! 1. [`concat`] — sums of pads over adjacent parts of an axis become one concat (gradients of
//!    tensors sliced into parts).
//! 2. [`cse`] — common subexpressions shared, identities folded, dead nodes pruned.
//!
//! [`simplify`] runs these two on every derived program (gradient, learning, closed-form step).
//! A relaxation loop is then [`hoist`]ed: everything that does not depend on carried state moves
//! to the prologue, which is simplified again.

pub mod concat;
pub mod cse;
pub mod hoist;

pub use cse::cse;
pub use hoist::hoist_invariants;

use crate::ir::Program;

/// The clean-up every derived program gets: the pad/concat fold, then CSE.
pub fn simplify(program: &mut Program) {
    concat::join_padded_sums(program);
    cse::cse(program);
}
