//! The predictive-coding transform: a forward program to its relaxation and learning
//! programs, both IR.
//!
//! **Nodes.** A PC node is a computed model value (not a constant) that is either bound by
//! `let` (granularity `named`, the default) or any primitive op (granularity `all`), plus every
//! such value the loss reads. Inputs and targets are clamped to the data: they carry no units. Each PC node i has a prediction μ_i = f_i(v_parents; θ), the
//! composite of the primitive ops between it and the PC nodes (or clamped values) it reads.
//!
//! **Units.** Nodes that the model reads further are *relaxed*: they get a value unit v_i and
//! an error unit ε_i = v_i − μ_i. Nodes that only the loss reads are *outputs*: their error is
//! clamped to ε_o = −∂L/∂μ_o. A relaxed node the loss also reads (a recurrent state with a
//! loss term at every step) receives the loss's message −∂L/∂v_i as well.
//!
//! **Relaxation** (synchronous: every node updates from the previous step's state):
//!
//! ```text
//! v_i ← v_i + η ( −π_i ε_i + Σ_{j ∈ children(i)} (∂μ_j/∂v_i)ᵀ π_j ε_j − ∂L/∂v_i )
//! ```
//!
//! All children's messages come from one vector-Jacobian product of the *cut graph* — the
//! model with every relaxed node's users reading v_i instead of the computed value — seeded
//! with π_j ε_j at every prediction μ_j. Modes:
//! - `fixed`: the cut graph is evaluated at the feedforward values, so predictions and
//!   Jacobians are frozen; the loop hoisting pass then moves all of that out of the loop.
//!   The loop carries the error units e_i = v_i − μ_i (state `e.<label>`, starting at 0)
//!   instead of the values: with μ_i frozen this is a change of variables, v_i = μ_i + e_i,
//!   under which a step reads no frozen value but the Jacobian factors,
//!   e_i ← e_i + η (−π_i e_i + Σ_j (∂μ_j/∂v_i)ᵀ π_j e_j − ∂L/∂v_i).
//! - `strict`: the cut graph is evaluated at the current values every step.
//! - `momentum = m` (fixed and strict): heavy-ball momentum on the same update, with a
//!   velocity u_i per relaxed node (state `u.<label>`, starting at 0): u_i ← m u_i + d_i,
//!   then v_i ← v_i + η u_i (or e_i ← e_i + η u_i), where d_i is the bracket above — SGD with
//!   momentum on the energy, as PCX relaxes its states. m = 0 is the plain update.
//! - `schedule = incremental` (fixed and strict): the parameters also learn at every step,
//!   from the same state as the step's value update (see `train::schedule`).
//! - `tol = ε` (fixed and strict): the loop stops after the first step at which the energy
//!   changed by at most ε relative to the previous step's ([`stopping_test`]).
//! - `epc` (error-based PC, Goemaere et al., ICML 2026): the strict energy relaxed through
//!   its errors. The state is the error units e_i (state `e.<label>`, starting at 0); each
//!   value is its prediction plus its error, v_i = μ_i(v_parents) + e_i, computed by a
//!   forward pass, so F(e) = ½ Σ_i π_i ‖e_i‖² + β L(v(e)) and a step is
//!   e_i ← e_i + η (−π_i e_i − β ∂L/∂e_i), the derivative taken through the whole forward
//!   pass (a backward pass per step). It is a change of variables of strict mode: the fixed
//!   points are strict mode's, and learning reads the values v(e) of the final errors as
//!   strict mode reads its value units. A model with loops is relaxed unrolled (each
//!   iteration's value is its own prediction plus error, sequentially).
//! - `optimizer` (every mode but exact): how a step moves each unit along its drive d —
//!   `sgd` (the momentum above), `nesterov` (u ← m u + d, the unit moves by η (d + m u)) or
//!   `adam` (moments `u.<label>`, `s.<label>`, bias-corrected by the powers β₁ᵗ, β₂ᵗ the loop
//!   carries as `relax.power1`, `relax.power2`).
//! - `clip = c`: each node's step is scaled down to norm at most c per row of its first axis
//!   (the batch axis; for a value computed in a loop, the axis of its iterations).
//! - `rates { node = η_i }`: a step size per node; `energy = mean` divides every relaxed
//!   node's precision by the batch size (PCX's batch-averaged energy).
//! - `exact`: `fixed` with η = 1 and (by default) as many steps as the graph is deep; after
//!   k steps the errors of nodes k hops from the loss are exact, so after `depth` steps every
//!   error equals backprop's gradient — one reverse-topological sweep, one level per step.
//!
//! **Learning**: Δθ = Σ_{j uses θ} (∂μ_j/∂θ)ᵀ π_j ε_j — the same product taken with respect to
//! the parameters, at the final state (frozen Jacobians in fixed and exact modes). The
//! learning program also reports the messages to the inputs (Σ over their children), which
//! equal −∂L/∂x at equilibrium.
//!
//! The energy F = ½ Σ_i π_i ‖ε_i‖² (outputs included) is an output of every step.

mod dot;
pub mod stack;

pub use crate::opt::relaxation::{
    coefficients, evaluation, fuse_step, solve, solve_until, Evaluation,
};
pub use dot::to_dot;
pub use stack::{Feedback, Stacked};

use crate::autodiff::{self, AutodiffError};
use crate::ir::UnaryOp;
use crate::ir::{BinaryOp, LeafKind, LoopProgram, Node, Op, Program, Region, Shape, ValueId};
use crate::sema::{
    EnergyReduction, InferenceConfig, Mode, NodeGranularity, Schedule, StateOptimizer, Target,
};
use std::collections::{BTreeMap, HashMap};

/// The role of a PC node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Has a value unit that relaxes; `loss_reads` when the loss also reads it.
    Relaxed { loss_reads: bool },
    /// Read only by the loss: error clamped to −∂L/∂μ.
    Output,
}

/// One PC node of the forward program.
#[derive(Clone, Debug, PartialEq)]
pub struct PcNode {
    /// The forward program's value.
    pub value: ValueId,
    /// A unique label, used in state names (`v.<label>`) and dumps.
    pub label: String,
    pub role: Role,
    pub precision: f64,
    /// The step size of its unit (relaxed nodes): the inference rate, or its own.
    pub rate: f64,
    /// PC nodes whose predictions read this node's value (through unnamed intermediates).
    pub children: Vec<usize>,
    /// Parameters its prediction reads directly or through intermediates.
    pub params: Vec<String>,
    pub shape: Shape,
}

/// The PC view of a forward program.
#[derive(Clone, Debug, PartialEq)]
pub struct PcGraph {
    pub nodes: Vec<PcNode>,
    /// Longest chain of relaxed nodes from any node to the loss: the steps exact mode needs.
    pub depth: usize,
}

/// The programs of predictive-coding training for one model.
#[derive(Clone, Debug)]
pub struct PcPrograms {
    pub graph: PcGraph,
    /// The feedforward initialisation (prologue) and one relaxation step (body).
    pub relax: LoopProgram,
    /// Weight updates from the relaxed state: outputs `update.<param>` (ascent direction,
    /// −∂L/∂θ at equilibrium) and `message.<input>` for every input.
    pub learn: Program,
    pub mode: Mode,
    pub rate: f64,
    /// Heavy-ball momentum of the value units' updates (0: none).
    pub momentum: f64,
    /// How each step moves the units (with `momentum`).
    pub optimizer: StateOptimizer,
    /// The largest norm of a node's step per row of its first axis, if clipped.
    pub clip: Option<f64>,
    /// How the loss drives the network.
    pub target: Target,
    /// The relaxation's stopping tolerance (`relax.until` is then its test).
    pub tol: Option<f64>,
    /// When the parameters learn. With `Incremental` the relaxation body here is left as the
    /// transform built it (not hoisted): the training step's loop, which also updates the
    /// parameters, is made from it and the learning program (`train::schedule`).
    pub schedule: Schedule,
    /// The forward program the programs were made from, and its loops stacked: the PC nodes
    /// (`graph`) are nodes of `forward.program`.
    pub forward: Stacked,
}

#[derive(Debug)]
pub enum PcError {
    /// The model's loss was not found (the forward program has no `loss` output).
    NoLoss,
    /// The inference settings do not make sense together.
    Settings(String),
    /// Differentiating a node's prediction failed.
    Autodiff(AutodiffError),
}

impl std::fmt::Display for PcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PcError::NoLoss => f.write_str("the forward program has no `loss` output"),
            PcError::Settings(why) => f.write_str(why),
            PcError::Autodiff(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PcError {}

impl From<AutodiffError> for PcError {
    fn from(e: AutodiffError) -> Self {
        PcError::Autodiff(e)
    }
}

/// The name of the state entry holding a node's value unit.
pub fn value_state(label: &str) -> String {
    format!("v.{label}")
}

/// The name of the state entry holding a node's error unit (fixed and exact modes, where
/// the relaxation carries errors instead of values).
pub fn error_state(label: &str) -> String {
    format!("e.{label}")
}

/// The state entry a relaxation carries for a node: its error unit in fixed, exact and ePC
/// modes, its value unit in strict mode.
pub fn carried_state(mode: Mode, label: &str) -> String {
    if mode == Mode::Strict {
        value_state(label)
    } else {
        error_state(label)
    }
}

/// The name of the state entry holding a node's velocity (the relaxation with momentum).
pub fn velocity_state(label: &str) -> String {
    format!("u.{label}")
}

/// The name of the state entry holding a node's second moment (Adam on the states).
pub fn second_moment_state(label: &str) -> String {
    format!("s.{label}")
}

/// The state entries holding β₁ᵗ and β₂ᵗ, the bias corrections of Adam on the states.
pub const STATE_POWERS: [&str; 2] = ["relax.power1", "relax.power2"];

/// The name of the state entry holding a node's feedforward value.
pub fn feedforward_state(label: &str) -> String {
    format!("ff.{label}")
}

/// The default number of relaxation steps for a mode.
pub fn default_steps(graph: &PcGraph, config: &InferenceConfig) -> usize {
    match config.mode {
        Mode::Exact => graph.depth.max(1),
        _ => config.steps,
    }
}

/// Finds the PC nodes of a forward program. With loops, the nodes are those of the program
/// with its loops stacked ([`stack::stack`]), not of `forward`: use [`analyse_stacked`] to
/// read them.
pub fn analyse(forward: &Program, config: &InferenceConfig) -> PcGraph {
    analyse_stacked(&stack::stack(forward), config)
}

/// Finds the PC nodes of a stacked forward program. A carried value is always a relaxed node:
/// its value unit is what the next iteration reads.
pub fn analyse_stacked(stacked: &Stacked, config: &InferenceConfig) -> PcGraph {
    let forward = &stacked.program;
    let is_carried = |id: ValueId| {
        stacked
            .feedback
            .iter()
            .any(|f| f.carried_node(forward) == id)
    };
    // A loop's initial value is read by its first iteration, through the feedback leaf.
    let is_initial = |id: ValueId| stacked.feedback.iter().any(|f| f.init == id);
    let n = forward.nodes.len();
    let users = forward.users();
    // Which nodes depend on a leaf (data or parameters); the rest are constants.
    let mut on_leaf = vec![false; n];
    for id in forward.ids() {
        let node = forward.node(id);
        on_leaf[id.index()] =
            matches!(node.op, Op::Leaf(_)) || node.args.iter().any(|a| on_leaf[a.index()]);
    }
    let is_model_op = |id: ValueId| {
        let node = forward.node(id);
        node.region == Region::Model && !matches!(node.op, Op::Leaf(_)) && on_leaf[id.index()]
    };
    let loss_reads = |id: ValueId| {
        users[id.index()]
            .iter()
            .any(|&u| forward.node(u).region == Region::Loss)
    };
    let model_reads = |id: ValueId| {
        users[id.index()]
            .iter()
            .any(|&u| forward.node(u).region == Region::Model)
    };
    let mut index_of: HashMap<ValueId, usize> = HashMap::new();
    let mut nodes = Vec::new();
    let mut name_count: HashMap<String, usize> = HashMap::new();
    for id in forward.ids() {
        if let Some(name) = &forward.node(id).name {
            *name_count.entry(name.clone()).or_default() += 1;
        }
    }
    let mut name_seen: HashMap<String, usize> = HashMap::new();
    // `energy = mean`: each relaxed node's term is averaged over the batch (axis 0 of the
    // inputs).
    let batch = forward
        .leaves(LeafKind::Input)
        .first()
        .and_then(|&(id, _)| forward.shape(id).dims().first().copied())
        .unwrap_or(1);
    let per_example = match config.energy {
        EnergyReduction::Sum => 1.0,
        EnergyReduction::Mean => 1.0 / batch.max(1) as f64,
    };
    for id in forward.ids() {
        if !is_model_op(id) {
            continue;
        }
        let node = forward.node(id);
        let chosen = match config.nodes {
            NodeGranularity::All => true,
            NodeGranularity::Named => node.name.is_some() || loss_reads(id) || is_carried(id),
        };
        if !chosen {
            continue;
        }
        let label = match &node.name {
            Some(name) if name_count[name] == 1 => name.clone(),
            Some(name) => {
                let k = name_seen.entry(name.clone()).or_default();
                *k += 1;
                format!("{name}.{}", *k - 1)
            }
            None => format!("n{}", id.0),
        };
        let role = if model_reads(id) || is_carried(id) || is_initial(id) {
            Role::Relaxed {
                loss_reads: loss_reads(id),
            }
        } else {
            Role::Output
        };
        let given = |per_node: &BTreeMap<String, f64>| {
            node.name
                .as_ref()
                .and_then(|name| per_node.get(name))
                .copied()
        };
        let precision = given(&config.precision).unwrap_or(1.0) * per_example;
        let rate = match config.mode {
            Mode::Exact => 1.0,
            _ => given(&config.rates).unwrap_or(config.rate),
        };
        index_of.insert(id, nodes.len());
        nodes.push(PcNode {
            value: id,
            label,
            role,
            precision: if role == Role::Output { 1.0 } else { precision },
            rate,
            children: Vec::new(),
            params: Vec::new(),
            shape: node.shape.clone(),
        });
    }
    // Children and parameters: walk each prediction's composite back to the PC nodes and
    // parameters it reads.
    for (j, pc) in nodes.clone().iter().enumerate() {
        let mut stack: Vec<ValueId> = forward.node(pc.value).args.clone();
        let mut seen = std::collections::HashSet::new();
        let mut params = Vec::new();
        while let Some(a) = stack.pop() {
            if !seen.insert(a) {
                continue;
            }
            if let Some(&i) = index_of.get(&a) {
                if !nodes[i].children.contains(&j) {
                    nodes[i].children.push(j);
                }
                continue;
            }
            let node = forward.node(a);
            if node.op == Op::Leaf(LeafKind::Param) {
                params.push(node.name.clone().unwrap_or_default());
            }
            // A carried value read by the next iteration: its node is a parent.
            if let Some(f) = stacked.feedback.iter().find(|f| f.leaf == a) {
                stack.push(f.carried);
                stack.push(f.init);
            }
            stack.extend(node.args.iter().copied());
        }
        params.sort();
        params.dedup();
        nodes[j].params = params;
    }
    // Depth: relaxed hops from each node to the loss.
    let mut level = vec![0usize; nodes.len()];
    for j in (0..nodes.len()).rev() {
        level[j] = match nodes[j].role {
            Role::Output => 0,
            Role::Relaxed { .. } => {
                1 + nodes[j]
                    .children
                    .iter()
                    .map(|&c| level[c])
                    .max()
                    .unwrap_or(0)
            }
        };
    }
    let mut depth = level.iter().copied().max().unwrap_or(0);
    if !stacked.feedback.is_empty() {
        // Messages cross iterations through the carried values: the depth is the unrolled
        // graph's (a chain through every iteration).
        let mut unrolled = stacked.sequential.clone();
        crate::opt::unroll::unroll(&mut unrolled, &|_| true);
        depth = analyse(&unrolled, config).depth;
    }
    PcGraph { nodes, depth }
}

/// Builds the relaxation and learning programs of a forward program.
pub fn transform(model: &Program, config: &InferenceConfig) -> Result<PcPrograms, PcError> {
    // ePC computes each value from its prediction and error in order: a loop's iterations
    // become nodes of their own.
    let stacked = if config.mode == Mode::Epc && stack::has_loops(model) {
        let mut unrolled = model.clone();
        crate::opt::unroll::unroll(&mut unrolled, &|_| true);
        stack::stack(&unrolled)
    } else {
        stack::stack(model)
    };
    let forward = &stacked;
    let loss = forward.program.output("loss").ok_or(PcError::NoLoss)?;
    let graph = analyse_stacked(forward, config);
    let (mode, rate) = match config.mode {
        Mode::Exact => (Mode::Exact, 1.0),
        m => (m, config.rate),
    };
    let momentum = config.momentum;
    let target = config.target;
    if !(0.0..1.0).contains(&momentum) {
        return Err(PcError::Settings(format!(
            "momentum {momentum} is outside 0 <= m < 1"
        )));
    }
    let optimizer = config.optimizer;
    let optimised = momentum > 0.0 || optimizer != StateOptimizer::Sgd;
    if optimised && mode == Mode::Exact {
        return Err(PcError::Settings(
            "momentum and state optimisers have no meaning in exact mode (its steps are the reverse sweep); use fixed, strict or epc"
                .to_string(),
        ));
    }
    if mode == Mode::Exact && (config.clip.is_some() || !config.rates.is_empty()) {
        return Err(PcError::Settings(
            "clip and per-node rates have no meaning in exact mode (its steps are the reverse sweep, of size 1); use fixed, strict or epc"
                .to_string(),
        ));
    }
    if let Some(c) = config.clip {
        if !(c.is_finite() && c > 0.0) {
            return Err(PcError::Settings(format!(
                "clip {c} is not a positive number"
            )));
        }
    }
    let schedule = config.schedule;
    if schedule == Schedule::Incremental && mode == Mode::Exact {
        return Err(PcError::Settings(
            "the incremental schedule has no meaning in exact mode (its steps are the reverse sweep, with the parameters fixed); use fixed or strict"
                .to_string(),
        ));
    }
    if let Some(tol) = config.tol {
        if !(tol > 0.0 && tol < 1.0) {
            return Err(PcError::Settings(format!(
                "tol {tol} is outside 0 < tol < 1 (a relative change of the energy)"
            )));
        }
        if mode == Mode::Exact {
            return Err(PcError::Settings(
                "tol has no meaning in exact mode (its relaxation is exact after as many steps as the graph is deep); use fixed or strict"
                    .to_string(),
            ));
        }
    }
    let steps = default_steps(&graph, config);

    // Each phase relaxes its own copy of the units (state names with the phase's suffix) with
    // the loss term scaled by its β: one phase, or two (+β and −β) for a centered target.
    let phase_graphs: Vec<(PcGraph, f64)> = target
        .phases()
        .into_iter()
        .map(|(suffix, beta)| {
            let mut phase = graph.clone();
            for pc in &mut phase.nodes {
                pc.label.push_str(suffix);
            }
            (phase, beta)
        })
        .collect();

    // Prologue: the feedforward pass; every relaxed node starts at its prediction.
    let mut prologue = Program::new(format!("{}.relax.prologue", model.name));
    let ff = feedforward(forward, &mut prologue);
    for (phase, _) in &phase_graphs {
        for pc in relaxed(phase) {
            let ff = ff[pc.value.index()];
            match mode {
                Mode::Strict => prologue.set_output(value_state(&pc.label), ff),
                Mode::Epc => {
                    let zero = prologue.constant_like(0.0, ff);
                    prologue.set_output(error_state(&pc.label), zero);
                }
                Mode::Fixed | Mode::Exact => {
                    let zero = prologue.constant_like(0.0, ff);
                    prologue.set_output(error_state(&pc.label), zero);
                    prologue.set_output(feedforward_state(&pc.label), ff);
                }
            }
            let zero = prologue.constant_like(0.0, ff);
            match optimizer {
                StateOptimizer::Sgd | StateOptimizer::Nesterov if momentum > 0.0 => {
                    prologue.set_output(velocity_state(&pc.label), zero);
                }
                StateOptimizer::Sgd | StateOptimizer::Nesterov => {}
                StateOptimizer::Adam { .. } => {
                    prologue.set_output(velocity_state(&pc.label), zero);
                    prologue.set_output(second_moment_state(&pc.label), zero);
                }
            }
        }
    }
    if let StateOptimizer::Adam { .. } = optimizer {
        for power in STATE_POWERS {
            let one = prologue.constant(1.0, Shape::scalar());
            prologue.set_output(power, one);
        }
    }
    prologue.set_output("loss", ff[loss.index()]);

    // Body: one synchronous step of every phase.
    let mut body = Program::new(format!("{}.relax.step", model.name));
    let stepper = Stepper::new(&mut body, optimizer, momentum, config.clip);
    let mut energy_terms = Vec::new();
    for (phase, beta) in &phase_graphs {
        let drives = if mode == Mode::Epc {
            epc_drives(forward, phase, &mut body, *beta)?
        } else {
            state_drives(forward, phase, &mut body, mode, *beta)?
        };
        for (pc, (unit, drive)) in relaxed(phase).zip(drives.moves) {
            let step = stepper.step(&mut body, pc, drive);
            let next = body.add_values(unit, step);
            body.set_output(carried_state(mode, &pc.label), next);
        }
        for (pc, eps) in phase.nodes.iter().zip(drives.errors) {
            energy_terms.push(half_weighted_norm(&mut body, eps, pc.precision));
        }
    }
    let energy = sum_all(&mut body, &energy_terms);
    body.set_output("energy", energy);
    let until = config
        .tol
        .map(|tol| stopping_test(&mut prologue, &mut body, energy, tol));

    let mut relax = LoopProgram {
        prologue,
        body,
        steps,
        until,
    };
    crate::opt::simplify(&mut relax.body);
    if schedule == Schedule::Standard {
        optimise_loop(&mut relax);
    }

    // Learning: the same product with respect to the parameters and inputs, divided by each
    // phase's β and averaged over the phases.
    let mut learn = Program::new(format!("{}.learn", model.name));
    let mut updates: Vec<ValueId> = Vec::new();
    let mut energy_terms = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (phase, beta) in &phase_graphs {
        let units = errors(forward, phase, &mut learn, mode, *beta, true)?;
        let params: Vec<(ValueId, String)> = learn
            .leaves(LeafKind::Param)
            .into_iter()
            .map(|(id, n)| (id, format!("update.{n}")))
            .collect();
        let inputs: Vec<(ValueId, String)> = learn
            .leaves(LeafKind::Input)
            .into_iter()
            .map(|(id, n)| (id, format!("message.{n}")))
            .collect();
        let wrt: Vec<ValueId> = params.iter().chain(&inputs).map(|(id, _)| *id).collect();
        let mut grads = autodiff::vjp(&mut learn, &units.seeds, &wrt)?;
        // An input the loss also reads gets the loss's direct term besides its children's.
        for ((id, _), g) in inputs.iter().zip(&mut grads[params.len()..]) {
            if let Some(&from_loss) = units.input_messages.get(id) {
                *g = learn.add_values(*g, from_loss);
            }
        }
        let weight = 1.0 / (beta * phase_graphs.len() as f64);
        let grads: Vec<ValueId> = grads
            .into_iter()
            .map(|g| scaled(&mut learn, g, weight))
            .collect();
        if updates.is_empty() {
            names = params
                .iter()
                .chain(&inputs)
                .map(|(_, n)| n.clone())
                .collect();
            updates = grads;
        } else {
            for (u, g) in updates.iter_mut().zip(grads) {
                *u = learn.add_values(*u, g);
            }
        }
        for pc in &phase.nodes {
            energy_terms.push(half_weighted_norm(
                &mut learn,
                units.errors[&pc.value],
                pc.precision,
            ));
        }
    }
    for (name, u) in names.iter().zip(&updates) {
        learn.set_output(name.clone(), *u);
    }
    let energy = sum_all(&mut learn, &energy_terms);
    learn.set_output("energy", energy);
    crate::opt::simplify(&mut learn);
    Ok(PcPrograms {
        graph,
        relax,
        learn,
        mode,
        rate,
        momentum,
        optimizer,
        clip: config.clip,
        target,
        schedule,
        tol: config.tol,
        forward: stacked,
    })
}

/// What a relaxation step moves: for each relaxed node (in graph order) its carried unit and
/// the drive d along which it moves (the negated gradient of the energy with respect to the
/// unit), and every node's error unit ε (for the energy).
struct Drives {
    moves: Vec<(ValueId, ValueId)>,
    errors: Vec<ValueId>,
}

/// The drives of fixed, exact and strict modes: d_i = −π_i ε_i + Σ children's messages
/// − ∂L/∂v_i, the messages from one product of the cut graph.
fn state_drives(
    forward: &Stacked,
    phase: &PcGraph,
    body: &mut Program,
    mode: Mode,
    beta: f64,
) -> Result<Drives, PcError> {
    let units = errors(forward, phase, body, mode, beta, false)?;
    let wrt: Vec<ValueId> = relaxed(phase).map(|pc| units.cut[&pc.value]).collect();
    let messages = autodiff::vjp(body, &units.seeds, &wrt)?;
    let mut moves = Vec::new();
    for (k, pc) in relaxed(phase).enumerate() {
        let eps = units.errors[&pc.value];
        let weighted = scaled(body, eps, pc.precision);
        let mut drive = body.sub(messages[k], weighted);
        if let Some(&from_loss) = units.loss_messages.get(&pc.value) {
            drive = body.add_values(drive, from_loss);
        }
        moves.push((units.carried[&pc.value], drive));
    }
    let errors = phase
        .nodes
        .iter()
        .map(|pc| units.errors[&pc.value])
        .collect();
    Ok(Drives { moves, errors })
}

/// The drives of ePC: d_i = −π_i e_i − β ∂L/∂e_i, with L the loss of the forward pass whose
/// every relaxed value is its prediction plus its error e_i (the state), differentiated
/// through that whole pass. The outputs' errors are the loss's clamped ones, as in strict
/// mode at the values v(e).
fn epc_drives(
    forward: &Stacked,
    phase: &PcGraph,
    body: &mut Program,
    beta: f64,
) -> Result<Drives, PcError> {
    let loss = forward.program.output("loss").ok_or(PcError::NoLoss)?;
    let units: HashMap<ValueId, ValueId> = relaxed(phase)
        .map(|pc| {
            let leaf = body.leaf(LeafKind::State, error_state(&pc.label), pc.shape.clone());
            (pc.value, leaf)
        })
        .collect();
    let (computed, values) = perturbed(forward, body, &units);
    let wrt: Vec<ValueId> = relaxed(phase).map(|pc| units[&pc.value]).collect();
    let seed = body.constant(-beta, Shape::scalar());
    let from_loss = autodiff::vjp(body, &[(computed[loss.index()], seed)], &wrt)?;
    let mut moves = Vec::new();
    for (pc, message) in relaxed(phase).zip(from_loss) {
        let e = units[&pc.value];
        let weighted = scaled(body, e, pc.precision);
        moves.push((e, body.sub(message, weighted)));
    }
    let clamped = loss_gradients(forward, body, phase, &computed, &values, beta)?;
    let mut clamped = clamped.into_iter();
    let mut errors = Vec::new();
    for pc in &phase.nodes {
        match pc.role {
            Role::Output => errors.push(clamped.next().expect("one gradient per output")),
            Role::Relaxed { loss_reads } => {
                if loss_reads {
                    clamped.next();
                }
                errors.push(units[&pc.value]);
            }
        }
    }
    Ok(Drives { moves, errors })
}

/// The forward pass (of a program without feedback) with each node in `errors` perturbed:
/// its users read its computed value plus the given error. Returns every node's computed
/// value (for a perturbed node, its prediction μ) and each perturbed node's value v = μ + e.
fn perturbed(
    forward: &Stacked,
    program: &mut Program,
    errors: &HashMap<ValueId, ValueId>,
) -> (Vec<ValueId>, HashMap<ValueId, ValueId>) {
    debug_assert!(forward.feedback.is_empty(), "ePC relaxes loops unrolled");
    let source = &forward.program;
    let mut computed: Vec<ValueId> = Vec::with_capacity(source.nodes.len());
    let mut values: HashMap<ValueId, ValueId> = HashMap::new();
    for id in source.ids() {
        let node = source.node(id);
        let new = match node.op {
            Op::Leaf(kind) => {
                let name = node.name.clone().unwrap_or_default();
                match program.leaf_named(kind, &name) {
                    Some(existing) => existing,
                    None => program.leaf(kind, name, node.shape.clone()),
                }
            }
            _ => {
                let args = node
                    .args
                    .iter()
                    .map(|a| values.get(a).copied().unwrap_or(computed[a.index()]))
                    .collect();
                program.push(Node {
                    args,
                    ..node.clone()
                })
            }
        };
        if let Some(&e) = errors.get(&id) {
            values.insert(id, program.add_values(new, e));
        }
        computed.push(new);
    }
    for (name, init) in &source.inits {
        program.inits.insert(name.clone(), init.clone());
    }
    (computed, values)
}

/// How a relaxation step turns each unit's drive into its step, building the optimiser's
/// state updates into the body.
struct Stepper {
    optimizer: StateOptimizer,
    momentum: f64,
    clip: Option<f64>,
    /// Adam: 1 / (1 − β₁ᵗ) and 1 / (1 − β₂ᵗ) at this step, scalars.
    corrections: Option<[ValueId; 2]>,
}

impl Stepper {
    fn new(
        body: &mut Program,
        optimizer: StateOptimizer,
        momentum: f64,
        clip: Option<f64>,
    ) -> Stepper {
        let corrections = match optimizer {
            StateOptimizer::Adam { beta1, beta2, .. } => {
                let mut corrections = [ValueId(0); 2];
                for ((power, beta), c) in STATE_POWERS
                    .iter()
                    .zip([beta1, beta2])
                    .zip(&mut corrections)
                {
                    let before = body.leaf(LeafKind::State, *power, Shape::scalar());
                    let after = body.scale(before, beta);
                    body.set_output(*power, after);
                    let one = body.constant(1.0, Shape::scalar());
                    let remaining = body.sub(one, after);
                    *c = body.binary(BinaryOp::Div, one, remaining);
                }
                Some(corrections)
            }
            _ => None,
        };
        Stepper {
            optimizer,
            momentum,
            clip,
            corrections,
        }
    }

    /// The step of `pc`'s unit for the drive d, its optimiser state updated in `body`.
    fn step(&self, body: &mut Program, pc: &PcNode, drive: ValueId) -> ValueId {
        let state =
            |body: &mut Program, name: String| body.leaf(LeafKind::State, name, pc.shape.clone());
        let m = self.momentum;
        let direction = match self.optimizer {
            StateOptimizer::Sgd if m == 0.0 => drive,
            StateOptimizer::Sgd | StateOptimizer::Nesterov => {
                let velocity = state(body, velocity_state(&pc.label));
                let kept = body.scale(velocity, m);
                let velocity = body.add_values(kept, drive);
                body.set_output(velocity_state(&pc.label), velocity);
                if self.optimizer == StateOptimizer::Nesterov {
                    let ahead = body.scale(velocity, m);
                    body.add_values(drive, ahead)
                } else {
                    velocity
                }
            }
            StateOptimizer::Adam { beta1, beta2, eps } => {
                let first = state(body, velocity_state(&pc.label));
                let second = state(body, second_moment_state(&pc.label));
                let first = body.moving_average(first, drive, beta1);
                let squared = body.mul(drive, drive);
                let second = body.moving_average(second, squared, beta2);
                body.set_output(velocity_state(&pc.label), first);
                body.set_output(second_moment_state(&pc.label), second);
                let [c1, c2] = self.corrections.expect("Adam's corrections");
                let c1 = body.broadcast(c1, pc.shape.clone());
                let c2 = body.broadcast(c2, pc.shape.clone());
                let first = body.mul(first, c1);
                let second = body.mul(second, c2);
                let root = body.unary(UnaryOp::Sqrt, second);
                let floor = body.constant_like(eps, root);
                let below = body.add_values(root, floor);
                body.binary(BinaryOp::Div, first, below)
            }
        };
        let step = body.scale(direction, pc.rate);
        match self.clip {
            Some(c) => clipped(body, step, c),
            None => step,
        }
    }
}

/// `step` scaled down, row by row along its first axis, to Euclidean norm at most `c`:
/// step · min(1, c / ‖row‖).
fn clipped(body: &mut Program, step: ValueId, c: f64) -> ValueId {
    let shape = body.shape(step).clone();
    let dims = shape.dims().to_vec();
    let squared = body.mul(step, step);
    let (rows, axes): (Vec<usize>, Vec<usize>) = match dims.split_first() {
        Some((&first, rest)) if !rest.is_empty() => (vec![first], (1..dims.len()).collect()),
        _ => (vec![], (0..dims.len()).collect()),
    };
    let total = body.reduce_sum(squared, axes);
    let norm = body.unary(UnaryOp::Sqrt, total);
    let bound = body.constant_like(c, norm);
    let over = body.binary(BinaryOp::Max, norm, bound);
    let factor = body.binary(BinaryOp::Div, bound, over);
    let mut kept = rows;
    kept.resize(dims.len(), 1);
    let factor = body.reshape(factor, Shape::new(kept));
    let factor = body.broadcast(factor, shape);
    body.mul(step, factor)
}

/// The state entry holding the energy the previous step started from (`tol`).
pub const ENERGY_BEFORE: &str = "energy.previous";

/// The body output that is 1 while the energy still changes by more than `tol` and 0 once it
/// does not: the relaxation's stopping test.
pub const CHANGING: &str = "energy.changing";

/// The stopping test of `tol = ε`: with F_t the energy of the state step t starts from,
/// `changing` = |F_t − F_{t−1}| > ε F_{t−1} (energies are never negative). The prologue sets
/// F_0's predecessor to −1, which no energy is within ε of, so the first step never stops.
/// A non-finite energy compares false and stops the loop too, where the step's guard sees it.
/// Returns the name of the test's output.
pub(crate) fn stopping_test(
    prologue: &mut Program,
    body: &mut Program,
    energy: ValueId,
    tol: f64,
) -> String {
    let none = prologue.constant(-1.0, Shape::scalar());
    prologue.set_output(ENERGY_BEFORE, none);
    let before = body.leaf(LeafKind::State, ENERGY_BEFORE, Shape::scalar());
    let difference = body.sub(energy, before);
    let change = body.unary(crate::ir::UnaryOp::Abs, difference);
    let bound = body.scale(before, tol);
    let changing = body.binary(BinaryOp::Greater, change, bound);
    body.set_output(ENERGY_BEFORE, energy);
    body.set_output(CHANGING, changing);
    CHANGING.to_string()
}

/// The passes every relaxation loop gets once its body is complete: invariant hoisting (in
/// fixed mode, the frozen predictions and Jacobians leave the loop) and the batching of
/// products that share a weight.
pub fn optimise_loop(relax: &mut LoopProgram) {
    crate::opt::hoist_invariants(relax);
    crate::opt::batching::batch_products(&mut relax.body);
}

/// The header's note of the variants' settings that differ from the plain relaxation.
fn settings(programs: &PcPrograms) -> String {
    let mut out = String::new();
    match programs.optimizer {
        StateOptimizer::Sgd if programs.momentum > 0.0 => out.push_str(&format!(
            ", momentum {}",
            crate::ir::fmt_f64(programs.momentum)
        )),
        StateOptimizer::Sgd => {}
        other => out.push_str(&format!(
            ", state optimiser {}",
            other.describe(programs.momentum)
        )),
    }
    if let Some(c) = programs.clip {
        out.push_str(&format!(
            ", steps clipped to norm {}",
            crate::ir::fmt_f64(c)
        ));
    }
    if programs.target != Target::Clamp {
        out.push_str(&format!(", target {}", programs.target.describe()));
    }
    if programs.schedule != Schedule::Standard {
        out.push_str(&format!(", schedule {}", programs.schedule.name()));
    }
    if let Some(tol) = programs.tol {
        out.push_str(&format!(
            ", stopping once the energy changes by at most {} in a step",
            crate::ir::fmt_f64(tol)
        ));
    }
    out
}

pub(crate) fn relaxed(graph: &PcGraph) -> impl Iterator<Item = &PcNode> {
    graph
        .nodes
        .iter()
        .filter(|pc| matches!(pc.role, Role::Relaxed { .. }))
}

/// The error units of one step, built into `program`.
struct Units {
    /// Forward value → the leaf its users read in the cut graph (relaxed nodes only).
    cut: HashMap<ValueId, ValueId>,
    /// Forward value → the unit the relaxation carries for it (relaxed nodes): its value in
    /// strict mode, its error in fixed and exact modes.
    carried: HashMap<ValueId, ValueId>,
    /// Forward value → its error unit ε (every PC node).
    errors: HashMap<ValueId, ValueId>,
    /// Forward value → −∂L/∂v for relaxed nodes the loss reads.
    loss_messages: HashMap<ValueId, ValueId>,
    /// Input leaf → the loss's direct message −β ∂L/∂x to it (what reaches the input from
    /// the loss region without passing through a PC node), when asked for.
    input_messages: HashMap<ValueId, ValueId>,
    /// (prediction μ_j, π_j ε_j) for every PC node j: the seeds of the message product.
    seeds: Vec<(ValueId, ValueId)>,
}

/// Builds the cut graph and the error units into `program`. The cut reads `ff.*` state in
/// fixed and exact modes (frozen predictions and Jacobians), whose errors are the `e.*`
/// state, `v.*` in strict mode, whose errors are v − μ, and in ePC the values its `e.*`
/// state gives (each its prediction plus its error). `with_inputs` adds the loss's
/// direct messages to the inputs (the learning program reports them).
fn errors(
    forward: &Stacked,
    graph: &PcGraph,
    program: &mut Program,
    mode: Mode,
    beta: f64,
    with_inputs: bool,
) -> Result<Units, PcError> {
    let mut cut = HashMap::new();
    let mut carried = HashMap::new();
    for pc in relaxed(graph) {
        let unit = program.leaf(
            LeafKind::State,
            carried_state(mode, &pc.label),
            pc.shape.clone(),
        );
        carried.insert(pc.value, unit);
        let at = match mode {
            Mode::Strict => unit,
            Mode::Fixed | Mode::Exact => program.leaf(
                LeafKind::State,
                feedforward_state(&pc.label),
                pc.shape.clone(),
            ),
            // The values v(e), computed below.
            Mode::Epc => continue,
        };
        cut.insert(pc.value, at);
    }
    if mode == Mode::Epc {
        // The values of the errors' forward pass, held constant: learning reads them as
        // strict mode reads its value units.
        let (_, values) = perturbed(forward, program, &carried);
        for pc in relaxed(graph) {
            let value = program.unary(UnaryOp::StopGradient, values[&pc.value]);
            cut.insert(pc.value, value);
        }
    }
    let computed = replay(forward, program, &cut);
    let inputs: Vec<ValueId> = if with_inputs {
        program
            .leaves(LeafKind::Input)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    } else {
        Vec::new()
    };
    let (loss_grads, from_loss) =
        loss_partials(forward, program, graph, &computed, &cut, beta, &inputs)?;
    let input_messages = inputs.into_iter().zip(from_loss).collect();
    let mut loss_grads = loss_grads.into_iter();
    let mut errors = HashMap::new();
    let mut loss_messages = HashMap::new();
    let mut seeds = Vec::new();
    for pc in &graph.nodes {
        let mu = computed[pc.value.index()];
        let eps = match pc.role {
            Role::Output => loss_grads.next().expect("one gradient per output"),
            Role::Relaxed { loss_reads } => {
                if loss_reads {
                    loss_messages.insert(
                        pc.value,
                        loss_grads.next().expect("one gradient per loss-read node"),
                    );
                }
                if mode == Mode::Strict {
                    program.sub(carried[&pc.value], mu)
                } else {
                    carried[&pc.value]
                }
            }
        };
        errors.insert(pc.value, eps);
        seeds.push((mu, scaled(program, eps, pc.precision)));
    }
    Ok(Units {
        cut,
        carried,
        errors,
        loss_messages,
        input_messages,
        seeds,
    })
}

/// −β ∂L/∂ for every output (at its prediction, `computed`) and for every relaxed node the loss
/// reads (at its cut value), in the order of `graph.nodes`: the clamped output errors and the
/// loss's messages, with the loss term scaled by β.
///
/// These are partial derivatives of the loss as a function of the PC nodes it reads: the loss
/// is replayed reading a copy of each output's prediction, so that the message to a relaxed
/// node the loss reads does not also carry what reaches it through an output computed from it
/// (that part arrives as the output's error times its Jacobian, like every child's).
pub(crate) fn loss_gradients(
    forward: &Stacked,
    program: &mut Program,
    graph: &PcGraph,
    computed: &[ValueId],
    cut: &HashMap<ValueId, ValueId>,
    beta: f64,
) -> Result<Vec<ValueId>, PcError> {
    loss_partials(forward, program, graph, computed, cut, beta, &[]).map(|(grads, _)| grads)
}

/// [`loss_gradients`], and −β ∂L/∂x for each leaf x of `program` in `leaves`: the partial
/// derivative of the loss with respect to a leaf it reads directly (an autoencoder's input,
/// which the loss compares with the reconstruction), zero for a leaf it reads only through
/// PC nodes. Those paths are cut here; their share arrives as the nodes' errors.
fn loss_partials(
    forward: &Stacked,
    program: &mut Program,
    graph: &PcGraph,
    computed: &[ValueId],
    cut: &HashMap<ValueId, ValueId>,
    beta: f64,
    leaves: &[ValueId],
) -> Result<(Vec<ValueId>, Vec<ValueId>), PcError> {
    let loss = forward.program.output("loss").ok_or(PcError::NoLoss)?;
    let mut reads = cut.clone();
    let mut wrt = Vec::new();
    // Each output's prediction stands in the replayed loss as a leaf of its own, so that the
    // product stops there; once it is built, the leaf becomes a copy of the prediction.
    let mut stand_ins = Vec::new();
    for pc in &graph.nodes {
        match pc.role {
            Role::Output => {
                let name = format!("prediction.{}", pc.label);
                let leaf = program.leaf(LeafKind::State, name, pc.shape.clone());
                reads.insert(pc.value, leaf);
                wrt.push(leaf);
                stand_ins.push((leaf, computed[pc.value.index()]));
            }
            Role::Relaxed { loss_reads: true } => wrt.push(cut[&pc.value]),
            Role::Relaxed { loss_reads: false } => {}
        }
    }
    let of_nodes = wrt.len();
    if of_nodes == 0 && leaves.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    wrt.extend_from_slice(leaves);
    let replayed = replay(forward, program, &reads);
    let seed = program.constant(-beta, Shape::scalar());
    let mut grads = autodiff::vjp(program, &[(replayed[loss.index()], seed)], &wrt)?;
    let of_leaves = grads.split_off(of_nodes);
    for (leaf, prediction) in stand_ins {
        // The prediction comes before the leaf, so the program stays in topological order.
        let node = &mut program.nodes[leaf.index()];
        *node = Node {
            op: Op::Reshape,
            args: vec![prediction],
            shape: node.shape.clone(),
            name: None,
            region: Region::Model,
        };
    }
    Ok((grads, of_leaves))
}

/// Copies the stacked forward program into `program`: leaves become leaves of the same kind
/// and name, and every user of a node in `cut` reads the given value instead. A feedback leaf
/// reads its carried node's cut value (a relaxed node's unit) shifted by one iteration.
/// Returns, for each forward node, the node computing it (for cut nodes: their prediction
/// from the cut inputs).
pub(crate) fn replay(
    forward: &Stacked,
    program: &mut Program,
    cut: &HashMap<ValueId, ValueId>,
) -> Vec<ValueId> {
    replay_with(forward, program, cut, cut, &HashMap::new())
}

/// [`replay`], with the carried values feedback leaves read given apart from the cut:
/// `carried` maps each carried node to the stacked value its feedback leaf shifts. Nodes in
/// `known` are not computed: their values are given.
fn replay_with(
    forward: &Stacked,
    program: &mut Program,
    cut: &HashMap<ValueId, ValueId>,
    carried: &HashMap<ValueId, ValueId>,
    known: &HashMap<ValueId, ValueId>,
) -> Vec<ValueId> {
    let source = &forward.program;
    let mut computed: Vec<ValueId> = Vec::with_capacity(source.nodes.len());
    let read =
        |computed: &Vec<ValueId>, a: ValueId| cut.get(&a).copied().unwrap_or(computed[a.index()]);
    for id in source.ids() {
        let node = source.node(id);
        if let Some(&value) = known.get(&id) {
            computed.push(value);
            continue;
        }
        let new = match node.op {
            Op::Leaf(kind) => {
                if let Some(f) = forward.feedback.iter().find(|f| f.leaf == id) {
                    let value = match carried.get(&f.carried) {
                        Some(&value) => value,
                        None => {
                            let node = *carried
                                .get(&f.carried_node(source))
                                .expect("a carried node is relaxed, or its value is given");
                            f.carried_from(source, program, node)
                        }
                    };
                    let init = read(&computed, f.init);
                    f.shifted(program, value, init)
                } else {
                    let name = node.name.clone().unwrap_or_default();
                    match program.leaf_named(kind, &name) {
                        Some(existing) => existing,
                        None => program.leaf(kind, name, node.shape.clone()),
                    }
                }
            }
            _ => {
                let args = node.args.iter().map(|&a| read(&computed, a)).collect();
                program.push(Node {
                    args,
                    ..node.clone()
                })
            }
        };
        computed.push(new);
    }
    for (name, init) in &source.inits {
        program.inits.insert(name.clone(), init.clone());
    }
    computed
}

/// For a sweep over a forward program whose loops are not nested: the feedforward pass into
/// `program` (as [`feedforward`]), for each feedback −β times the cotangent its carried
/// node's stacked value receives from the iterations after each one — by backpropagation
/// through time on the sequential program, through a tap on each carried value
/// ([`stack::tapped`]) — and, for the nodes `wanted` of the stacked program that are loop
/// bodies' nodes, the sequential scans' own values of them (the same numbers as the stacked
/// feedforward pass computes again, to rounding).
pub fn feedback_sweep(
    forward: &Stacked,
    program: &mut Program,
    beta: f64,
    wanted: &[ValueId],
) -> Result<FeedbackSweep, PcError> {
    let stack::Tapped {
        program: mut sequential,
        exposed,
        taps,
        origins,
    } = stack::tapped(forward, wanted);
    let loss = sequential.output("loss").ok_or(PcError::NoLoss)?;
    let mut outputs = vec![crate::ir::Output {
        name: "loss".to_string(),
        value: loss,
    }];
    for (k, &(_, value)) in origins.iter().enumerate() {
        outputs.push(crate::ir::Output {
            name: format!("origin.{k}"),
            value,
        });
    }
    for (k, (&e, &t)) in exposed.iter().zip(&taps).enumerate() {
        outputs.push(crate::ir::Output {
            name: format!("exposed.{k}"),
            value: e,
        });
        outputs.push(crate::ir::Output {
            name: format!("tap.{k}"),
            value: t,
        });
    }
    sequential.outputs = outputs;
    let values = program.append(&sequential, &HashMap::new());
    let at = |name: &str| {
        values
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.value)
            .expect("an output just named")
    };
    let seed = program.constant(-beta, Shape::scalar());
    let tap_values: Vec<ValueId> = (0..taps.len()).map(|k| at(&format!("tap.{k}"))).collect();
    let tapped = autodiff::vjp(program, &[(at("loss"), seed)], &tap_values)?;
    // The stacked carried nodes hold the iterations `rows`. The last of them that runs is read
    // by what follows the stack (the loop's final value, or the peeled last iteration), which
    // the stacked program computes itself: its tap's cotangent is dropped.
    let later = forward
        .feedback
        .iter()
        .zip(tapped)
        .map(|(f, cotangent)| {
            let stacked = f.stacked_rows(program, cotangent);
            let mut dims = program.shape(stacked).dims().to_vec();
            let trips = dims[0];
            if trips == 1 {
                return program.constant(0.0, Shape::new(dims));
            }
            let kept = if f.reverse { 1..trips } else { 0..trips - 1 };
            let kept = program.build(
                Op::Slice {
                    axis: 0,
                    start: kept.start,
                    end: kept.end,
                },
                &[stacked],
                None,
            );
            dims[0] = 1;
            let zero = program.constant(0.0, Shape::new(dims));
            let parts = if f.reverse {
                [zero, kept]
            } else {
                [kept, zero]
            };
            program.build(Op::Concat { axis: 0 }, &parts, None)
        })
        .collect();
    let carried: HashMap<ValueId, ValueId> = forward
        .feedback
        .iter()
        .enumerate()
        .map(|(k, f)| {
            (
                f.carried,
                f.stacked_rows(program, at(&format!("exposed.{k}"))),
            )
        })
        .collect();
    // The carried nodes are computed here (not taken from the scans), so that the cotangents
    // seeded at them reach the nodes they are computed from.
    let sequential_values = origins
        .iter()
        .enumerate()
        .map(|(k, &(stacked, _))| (stacked, at(&format!("origin.{k}"))))
        .collect();
    let ff = replay_with(forward, program, &HashMap::new(), &carried, &HashMap::new());
    Ok(FeedbackSweep {
        ff,
        later,
        sequential_values,
    })
}

/// What [`feedback_sweep`] builds.
pub struct FeedbackSweep {
    /// Each node of the stacked forward program's value, computed stacked.
    pub ff: Vec<ValueId>,
    /// Each feedback's cotangent from the iterations after each one, times −β.
    pub later: Vec<ValueId>,
    /// The sequential scans' values of the wanted nodes, by their node in the stacked program.
    pub sequential_values: HashMap<ValueId, ValueId>,
}

/// The feedforward pass into `program`: each node of the stacked forward program's value.
/// Its loops run as scans (they are sequential), made to output each carried value's every
/// iteration; the rest is the stacked program, reading those.
pub(crate) fn feedforward(forward: &Stacked, program: &mut Program) -> Vec<ValueId> {
    if forward.feedback.is_empty() {
        return replay(forward, program, &HashMap::new());
    }
    let mut sequential = forward.sequential.clone();
    let exposed: Vec<ValueId> = forward
        .feedback
        .iter()
        .map(|f| stack::expose(&mut sequential, &f.path, f.index))
        .collect();
    sequential.outputs = exposed
        .iter()
        .enumerate()
        .map(|(k, &value)| crate::ir::Output {
            name: format!("carried.{k}"),
            value,
        })
        .collect();
    sequential.prune();
    let values = program.append(&sequential, &HashMap::new());
    let carried: HashMap<ValueId, ValueId> = forward
        .feedback
        .iter()
        .zip(values)
        .map(|(f, o)| (f.carried, f.stacked_rows(program, o.value)))
        .collect();
    // The carried nodes' values are the scans' own: the stacked program computes the rest.
    replay_with(forward, program, &HashMap::new(), &carried, &carried)
}

fn scaled(program: &mut Program, x: ValueId, c: f64) -> ValueId {
    if c == 1.0 {
        x
    } else {
        program.scale(x, c)
    }
}

/// ½ π ‖x‖², a scalar.
fn half_weighted_norm(program: &mut Program, x: ValueId, precision: f64) -> ValueId {
    let sq = program.binary(BinaryOp::Mul, x, x);
    let rank = program.shape(sq).rank();
    let total = program.reduce_sum(sq, (0..rank).collect());
    program.scale(total, 0.5 * precision)
}

fn sum_all(program: &mut Program, terms: &[ValueId]) -> ValueId {
    match terms.split_first() {
        None => program.constant(0.0, Shape::scalar()),
        Some((&first, rest)) => rest
            .iter()
            .fold(first, |acc, &t| program.add_values(acc, t)),
    }
}

/// A header for `pcg ir --stage pc`: the PC nodes, their roles and the schedule.
pub fn describe(programs: &PcPrograms) -> String {
    let g = &programs.graph;
    let relaxed_count = relaxed(g).count();
    let mut out = format!(
        "// predictive coding: {} nodes ({} relaxed, {} outputs), depth {}, mode {}, {} steps of rate {}{}\n",
        g.nodes.len(),
        relaxed_count,
        g.nodes.len() - relaxed_count,
        g.depth,
        programs.mode.name(),
        programs.relax.steps,
        crate::ir::fmt_f64(programs.rate),
        settings(programs),
    );
    let chosen = evaluation(programs, programs.relax.steps);
    let how = match (chosen, programs.tol) {
        (Evaluation::ClosedForm, Some(_)) => format!(
            "closed form with the stopping test (depth {} < {} steps: {} message products, then a loop over {} coefficients)",
            g.depth,
            programs.relax.steps,
            g.depth.saturating_sub(1),
            g.depth
        ),
        _ => chosen.describe(g, programs.relax.steps),
    };
    out.push_str(&format!("// final state: {how}\n"));
    for pc in &g.nodes {
        let role = match pc.role {
            Role::Relaxed { loss_reads: false } => "relaxed",
            Role::Relaxed { loss_reads: true } => "relaxed+loss",
            Role::Output => "output",
        };
        let children: Vec<&str> = pc
            .children
            .iter()
            .map(|&c| g.nodes[c].label.as_str())
            .collect();
        out.push_str(&format!(
            "//   {} {} {} <- params [{}] -> children [{}]{}\n",
            pc.label,
            role,
            pc.shape,
            pc.params.join(", "),
            children.join(", "),
            if pc.precision != 1.0 {
                format!(" precision {}", crate::ir::fmt_f64(pc.precision))
            } else {
                String::new()
            } + &if pc.rate != programs.rate && matches!(pc.role, Role::Relaxed { .. }) {
                format!(" rate {}", crate::ir::fmt_f64(pc.rate))
            } else {
                String::new()
            },
        ));
    }
    out
}
