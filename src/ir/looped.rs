//! Loops over IR programs with named state: the shape of predictive-coding relaxation.
//!
//! A `LoopProgram` is a prologue, run once, and a body, run `steps` times. State is a set of
//! named tensors: the prologue's outputs set it; each body run reads it through `State`
//! leaves of the same names and overwrites the entries named by its outputs. State the body
//! never writes is loop-invariant. Both backends run this form, so the whole loop can be
//! compiled as one function.

use super::{LeafKind, Program, ValueId};
use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq)]
pub struct LoopProgram {
    pub prologue: Program,
    pub body: Program,
    pub steps: usize,
    /// A scalar body output that ends the loop after the first step at which it is 0 (a
    /// convergence test); `None`: the loop runs all its steps. A loop with one also reports
    /// the steps it ran, as the state entry [`STEPS_RUN`].
    pub until: Option<String>,
}

/// The state entry in which a loop with a stopping test reports the steps it ran (a scalar).
pub const STEPS_RUN: &str = "steps.run";

impl LoopProgram {
    /// The state names the body reads and overwrites every step: `State` leaves, and in a
    /// loop that also learns (the incremental schedule) the parameters.
    pub fn carried(&self) -> BTreeSet<String> {
        let states: BTreeSet<&str> = self
            .body
            .nodes
            .iter()
            .filter(|n| matches!(n.op, super::Op::Leaf(_)))
            .filter_map(|n| n.name.as_deref())
            .collect();
        self.body
            .outputs
            .iter()
            .filter(|o| states.contains(o.name.as_str()))
            .map(|o| o.name.clone())
            .collect()
    }

    /// Keeps only the body outputs `keep` accepts and the prologue outputs the body still
    /// reads or `keep` accepts, and drops the computation nothing kept needs any more: a loop
    /// whose caller does not read some per-step result need not compute it every step.
    pub fn retain_outputs(&mut self, keep: impl Fn(&str) -> bool) {
        self.body.outputs.retain(|o| keep(&o.name));
        self.body.prune();
        let users = self.body.users();
        let output_values: BTreeSet<ValueId> = self.body.outputs.iter().map(|o| o.value).collect();
        let read: BTreeSet<String> = self
            .body
            .leaves(LeafKind::State)
            .into_iter()
            .filter(|(id, _)| !users[id.index()].is_empty() || output_values.contains(id))
            .map(|(_, n)| n.to_string())
            .collect();
        self.prologue
            .outputs
            .retain(|o| read.contains(&o.name) || keep(&o.name));
        self.prologue.prune();
    }
}
