//! The incremental schedule (incremental PC, Salvatori et al., ICLR 2024): the parameters take
//! an optimiser step after every relaxation step, from that step's local errors, instead of
//! once from the relaxed state.
//!
//! Its training step is one loop whose body is three programs composed:
//!
//! ```text
//! relaxation step    v ← v + η d(v, θ)          (the PC body: value units, velocities)
//! learning           Δθ = Σ_j (∂μ_j/∂θ)ᵀ π_j ε_j   at the same (v, θ)
//! optimiser          θ, moments ← update(θ, −Δθ, moments)
//! ```
//!
//! so that both updates read the state the step starts from (the step is synchronous in the
//! values and the parameters alike). The parameters and the optimiser's moments are loop
//! state: the prologue copies them in, the body carries them, and the caller stores the final
//! ones back — a step that diverges on the way leaves the parameters as they were. With Adam
//! the bias corrections 1 − β^t change at every step: the loop carries the powers β^t
//! (`optimizer.power1`, `optimizer.power2`, given at the batch's start) and multiplies them
//! by β once a step. T relaxation steps are T optimiser steps.
//!
//! In fixed mode the activations stay frozen at the feedforward pass of the batch's first
//! parameters; the predictions and Jacobians read the current parameters, so nothing that
//! reads a parameter leaves the loop.

use super::optim::{self, Optimizer, CORRECTIONS, POWERS};
use crate::ir::{LeafKind, LoopProgram, Op, Program, Shape, ValueId};
use crate::pc::{optimise_loop, PcPrograms};
use crate::sema::OptimizerConfig;
use std::collections::HashMap;

/// Why `pcg grad` and `gradcheck` refuse the incremental schedule.
pub const NO_GRADIENT: &str = "the incremental schedule updates the parameters at every relaxation step, so a step has no single gradient to report or check; use `schedule = standard` (or `--schedule standard`) for `grad` and `gradcheck`";

/// The parameters `pc`'s learning program updates, with their shapes.
pub fn learned_params(pc: &PcPrograms) -> Vec<(String, Shape)> {
    pc.learn
        .outputs
        .iter()
        .filter_map(|o| {
            let name = o.name.strip_prefix("update.")?;
            Some((name.to_string(), pc.learn.shape(o.value).clone()))
        })
        .collect()
}

/// The training step's loop under the incremental schedule: `pc`'s relaxation body, its
/// learning program at the same state and the optimiser's update, run `steps` times. Its
/// final state holds the new parameters (under their names) and moments, whose names come
/// second.
pub fn incremental_loop<F: crate::interp::Real>(
    pc: &PcPrograms,
    optimizer: &Optimizer<F>,
    steps: usize,
) -> (LoopProgram, Vec<String>) {
    let params = learned_params(pc);
    let mut prologue = pc.relax.prologue.clone();
    let mut body = pc.relax.body.clone();
    body.name = format!("{}.incremental", body.name);

    // Learning at the step's state: its leaves are the body's (same kinds and names).
    let learned: HashMap<String, ValueId> = body
        .append(&pc.learn, &HashMap::new())
        .into_iter()
        .map(|o| (o.name, o.value))
        .collect();

    // The optimiser, reading the updates as its gradients and, for Adam, this step's
    // corrections from the carried powers β^t.
    let mut update = optimizer.update_program(&params, true);
    let mut state: HashMap<String, ValueId> = params
        .iter()
        .map(|(name, _)| {
            let delta = learned[&format!("update.{name}")];
            (optim::gradient_state(name), delta)
        })
        .collect();
    if let OptimizerConfig::Adam { beta1, beta2, .. } = *optimizer.config() {
        for ((power, correction), beta) in POWERS.iter().zip(CORRECTIONS).zip([beta1, beta2]) {
            let before = body.leaf(LeafKind::State, *power, Shape::scalar());
            let after = body.scale(before, beta);
            let one = body.constant(1.0, Shape::scalar());
            state.insert(correction.to_string(), body.sub(one, after));
            body.set_output(*power, after);
        }
        // The corrections become values of the body, not inputs of the step.
        for node in &mut update.nodes {
            if node.op == Op::Leaf(LeafKind::Input)
                && CORRECTIONS.contains(&node.name.as_deref().unwrap_or(""))
            {
                node.op = Op::Leaf(LeafKind::State);
            }
        }
    }
    for out in body.append(&update, &state) {
        body.set_output(out.name, out.value);
    }

    // The prologue copies the parameters and moments in as the loop's initial state.
    let mut stored = Vec::new();
    for (id, name) in update.leaves(LeafKind::Param) {
        let leaf = leaf_in(&mut prologue, LeafKind::Param, name, update.shape(id));
        prologue.set_output(name, leaf);
        stored.push(name.to_string());
    }
    for (id, name) in update.leaves(LeafKind::State) {
        if name.starts_with(optim::STATE_PREFIX) && !CORRECTIONS.contains(&name) {
            let leaf = leaf_in(&mut prologue, LeafKind::State, name, update.shape(id));
            prologue.set_output(name, leaf);
            stored.push(name.to_string());
        }
    }
    crate::opt::simplify(&mut body);
    let mut looped = LoopProgram {
        prologue,
        body,
        steps,
        until: pc.relax.until.clone(),
    };
    optimise_loop(&mut looped);
    (looped, stored)
}

/// The leaf of `program` with this kind and name, added if it is not there.
fn leaf_in(program: &mut Program, kind: LeafKind, name: &str, shape: &Shape) -> ValueId {
    program
        .leaf_named(kind, name)
        .unwrap_or_else(|| program.leaf(kind, name, shape.clone()))
}
