//! The relaxation's final state without simulating it, for fixed and exact modes.
//!
//! With predictions and Jacobians frozen, one synchronous step is linear in the errors:
//!
//! ```text
//! e(t+1) = (1 − η) e(t) + η (M e(t) + c),   e(0) = 0
//! ```
//!
//! where M e is the message product (each relaxed node's children's (∂μ_j/∂v_i)ᵀ e_j) and c the
//! constant drive from the clamped outputs and the loss. The graph is a DAG, so M is nilpotent:
//! M^D = 0 for D the number of relaxed levels (`PcGraph::depth`). Expanding
//! ((1 − η) I + η M)^t binomially gives the state after T steps exactly:
//!
//! ```text
//! e(T) = Σ_{k<D} γ_k M^k (η c),   γ_k = Σ_{t=k}^{T−1} C(t, k) (1 − η)^(t−k) η^k
//! ```
//!
//! Three ways to evaluate it, the cheapest that applies chosen by [`evaluation`]:
//!
//! - **sweep** — with η = 1 and T ≥ D every γ_k is 1, so e(T) = Σ_{k<D} M^k c = (I − M)⁻¹ c:
//!   the solution of e_i = c_i + Σ_{j ∈ children(i)} (∂μ_j/∂v_i)ᵀ e_j, which one pass over the
//!   nodes in reverse topological order gives. That pass is the reverse sweep of backprop
//!   through the feedforward graph, seeded with −1 at the loss: e_i = −∂L/∂v_i. It costs one
//!   backward pass whatever the depth (exact mode on the LSTM: one sweep, not D − 1 products).
//! - **closed form** — D − 1 message products u_k = M u_{k−1} and the weighted sum above; pays
//!   when D < T, and its program grows with D.
//! - **simulated** — everything else (strict mode, a per-node precision, which breaks the
//!   scalar expansion, momentum, which makes the recurrence second order, a centered target,
//!   which relaxes two copies of the units, the incremental schedule, whose parameters change
//!   at every step, and graphs at least T deep with η < 1): the
//!   loop, step by step.
//!
//! Each gives the simulated loop's result up to rounding (tested).
use crate::autodiff;
use crate::ir::{LeafKind, LoopProgram, Node, Op, Program, Region, Shape, ValueId};
use crate::pc::{
    error_state, feedback_sweep, feedforward, feedforward_state, loss_gradients, relaxed, replay,
    PcError, PcGraph, PcPrograms, Role, Stacked,
};
use std::collections::HashMap;

/// γ_k for k < depth: the weight of M^k (η c) in the errors after `steps` steps of size `rate`.
pub fn coefficients(rate: f64, steps: usize, depth: usize) -> Vec<f64> {
    (0..depth)
        .map(|k| {
            if k >= steps {
                return 0.0;
            }
            if rate == 1.0 {
                // Only the t = k term survives: (1 − η)^0 η^k = 1.
                return 1.0;
            }
            // In logs: ln C(t, k) + (t − k) ln(1 − η) + k ln η, with C(t + 1, k) = C(t, k) (t + 1) / (t + 1 − k).
            let (ln_keep, ln_rate) = ((1.0 - rate).ln(), rate.ln());
            let mut ln_binomial = 0.0;
            let mut sum = 0.0;
            for t in k..steps {
                if t > k {
                    ln_binomial += ((t as f64) / ((t - k) as f64)).ln();
                }
                sum += (ln_binomial + (t - k) as f64 * ln_keep + k as f64 * ln_rate).exp();
            }
            sum
        })
        .collect()
}

/// How the final state of a relaxation is computed; see the module's documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evaluation {
    /// One reverse sweep: η = 1 and at least as many steps as the graph is deep.
    Sweep,
    /// D − 1 message products: fewer relaxed levels than steps.
    ClosedForm,
    /// The loop, step by step.
    Simulated,
}

impl Evaluation {
    /// A line for `pcg ir --stage pc`: what was chosen and why.
    pub fn describe(self, graph: &PcGraph, steps: usize) -> String {
        match self {
            Evaluation::Sweep => format!(
                "one reverse sweep (rate 1 and {steps} steps >= depth {}: the errors are (I - M)^-1 c, backprop's)",
                graph.depth
            ),
            Evaluation::ClosedForm => format!(
                "closed form (depth {} < {steps} steps: {} message products instead of {steps} steps)",
                graph.depth,
                graph.depth.saturating_sub(1)
            ),
            Evaluation::Simulated => "simulated step by step".to_string(),
        }
    }
}

/// The cheapest evaluation of a relaxation that gives the simulated loop's final state.
pub fn evaluation(programs: &PcPrograms, steps: usize) -> Evaluation {
    let (graph, mode, rate) = (&programs.graph, programs.mode, programs.rate);
    let unit_precision = relaxed(graph).all(|pc| pc.precision == 1.0);
    let one_phase = programs.target.phases().len() == 1;
    let standard = programs.schedule == crate::sema::Schedule::Standard;
    let plain_steps = programs.optimizer == crate::sema::StateOptimizer::Sgd
        && programs.clip.is_none()
        && relaxed(graph).all(|pc| pc.rate == rate);
    if mode.moves_predictions()
        || !unit_precision
        || !plain_steps
        || programs.momentum != 0.0
        || !one_phase
        || !standard
    {
        Evaluation::Simulated
    } else if programs.tol.is_some() {
        // The stopping test needs each step's energy: the sweep has none.
        if graph.depth < steps.max(1) {
            Evaluation::ClosedForm
        } else {
            Evaluation::Simulated
        }
    } else if rate == 1.0 && steps >= graph.depth && sweepable(&programs.forward) {
        Evaluation::Sweep
    } else if graph.depth < steps.max(1) {
        Evaluation::ClosedForm
    } else {
        Evaluation::Simulated
    }
}

/// Whether the sweep applies to a forward program: one without loops, or whose loops are not
/// nested (their carried values' cotangents come from a reverse scan; see [`sweep`]).
fn sweepable(forward: &Stacked) -> bool {
    forward.feedback.iter().all(|f| f.path.len() == 1)
}

/// The final relaxation state without the loop, with the same outputs as the simulated loop's
/// final state (`e.*`, `ff.*`, `loss`); `None` where only the simulated loop applies, or where
/// a stopping tolerance makes the solution a loop ([`solve_until`]).
pub fn solve(programs: &PcPrograms, steps: usize) -> Result<Option<Program>, PcError> {
    let forward = &programs.forward;
    let graph = &programs.graph;
    if programs.tol.is_some() {
        return Ok(None);
    }
    // Simulated unless there is one phase (see `evaluation`).
    let beta = programs.target.phases()[0].1;
    match evaluation(programs, steps) {
        Evaluation::Simulated => Ok(None),
        Evaluation::Sweep => sweep(forward, graph, beta).map(Some),
        Evaluation::ClosedForm => closed_form(forward, graph, programs.rate, beta, steps).map(Some),
    }
}

/// The converged errors by one reverse sweep: e_i = −∂L/∂v_i at the feedforward values.
///
/// With loops, the sweep through the stacked program alone would miss what reaches a node
/// through later iterations: each carried value's cotangent from the iterations after it
/// comes from backpropagation through time on the sequential program ([`feedback_sweep`]) and
/// seeds the carried node's stacked value besides the loss.
fn sweep(forward: &Stacked, graph: &PcGraph, beta: f64) -> Result<Program, PcError> {
    let loss = forward.program.output("loss").ok_or(PcError::NoLoss)?;
    let mut p = Program::new(format!("{}.relax.swept", forward.program.name));
    let nodes: Vec<ValueId> = relaxed(graph).map(|pc| pc.value).collect();
    let (mut ff, later, sequential_values) = if forward.feedback.is_empty() {
        let ff = replay(forward, &mut p, &HashMap::new());
        (ff, Vec::new(), HashMap::new())
    } else {
        let swept = feedback_sweep(forward, &mut p, beta, &nodes)?;
        (swept.ff, swept.later, swept.sequential_values)
    };
    let values: Vec<ValueId> = relaxed(graph).map(|pc| ff[pc.value.index()]).collect();
    let seed = p.constant(-beta, Shape::scalar());
    let mut seeds = vec![(ff[loss.index()], seed)];
    seeds.extend(
        forward
            .feedback
            .iter()
            .zip(later)
            .map(|(f, cotangent)| (ff[f.carried.index()], cotangent)),
    );
    let errors = autodiff::vjp(&mut p, &seeds, &values)?;
    // The derivatives read each relaxed node's value at the feedforward pass: where a loop
    // computed it already, they read the loop's, and the stacked pass computing it again (a
    // loop body's products and gates over all iterations) is left unread. An output's
    // prediction stays stacked: the learning program computes the same one from the relaxed
    // values, and the fused step computes it, and the loss's derivatives at it, once.
    for id in nodes {
        if let Some(&value) = sequential_values.get(&id) {
            p.replace_uses(ff[id.index()], value);
            ff[id.index()] = value;
        }
    }
    Ok(solved(p, graph, &ff, errors, loss))
}

/// Finishes a solved relaxation: the relaxed nodes' errors and feedforward values and the loss
/// as outputs, named as the simulated loop's final state.
fn solved(
    mut p: Program,
    graph: &PcGraph,
    ff: &[ValueId],
    errors: Vec<ValueId>,
    loss: ValueId,
) -> Program {
    for (pc, e) in relaxed(graph).zip(errors) {
        p.set_output(error_state(&pc.label), e);
        p.set_output(feedforward_state(&pc.label), ff[pc.value.index()]);
    }
    p.set_output("loss", ff[loss.index()]);
    crate::opt::simplify(&mut p);
    p
}

/// The feedforward pass and the relaxation's powers u_k = M^k (η c), k < depth, built into
/// one program: what the closed form weighs.
struct Powers {
    p: Program,
    ff: Vec<ValueId>,
    /// `u[k][i]`: u_k at the i-th relaxed node.
    u: Vec<Vec<ValueId>>,
    /// The outputs' clamped errors.
    output_errors: Vec<ValueId>,
    loss: ValueId,
}

fn powers(
    forward: &Stacked,
    graph: &PcGraph,
    rate: f64,
    beta: f64,
    name: &str,
) -> Result<Powers, PcError> {
    let loss = forward.program.output("loss").ok_or(PcError::NoLoss)?;
    let mut p = Program::new(format!("{}.{name}", forward.program.name));
    let ff = feedforward(forward, &mut p);
    // The cut: an identity copy of each relaxed node's feedforward value. The predictions read
    // the copies, so a vector-Jacobian product with respect to them stops there: one
    // application of M, not a backward pass through the whole graph.
    let mut cut = HashMap::new();
    for pc in relaxed(graph) {
        let id = p.push(Node {
            op: Op::Reshape,
            args: vec![ff[pc.value.index()]],
            shape: pc.shape.clone(),
            name: None,
            region: Region::Model,
        });
        cut.insert(pc.value, id);
    }
    let predicted = replay(forward, &mut p, &cut);
    let cuts: Vec<ValueId> = relaxed(graph).map(|pc| cut[&pc.value]).collect();

    // The clamped errors of the outputs and the loss's messages to relaxed nodes it reads.
    let mut loss_grads =
        loss_gradients(forward, &mut p, graph, &predicted, &cut, beta)?.into_iter();
    let mut output_seeds = Vec::new();
    let mut loss_messages = HashMap::new();
    for pc in &graph.nodes {
        match pc.role {
            Role::Output => output_seeds.push((
                predicted[pc.value.index()],
                loss_grads.next().expect("an output error"),
            )),
            Role::Relaxed { loss_reads: true } => {
                loss_messages.insert(pc.value, loss_grads.next().expect("a loss message"));
            }
            Role::Relaxed { loss_reads: false } => {}
        }
    }

    // u_0 = η c, with c the outputs' messages plus the loss's.
    let from_outputs = if output_seeds.is_empty() {
        cuts.iter().map(|&c| p.constant_like(0.0, c)).collect()
    } else {
        autodiff::vjp(&mut p, &output_seeds, &cuts)?
    };
    let first: Vec<ValueId> = relaxed(graph)
        .zip(from_outputs)
        .map(|(pc, m)| {
            let drive = match loss_messages.get(&pc.value) {
                Some(&l) => p.add_values(m, l),
                None => m,
            };
            p.scale(drive, rate)
        })
        .collect();
    // A graph of depth 0 has no relaxed nodes, so no errors to solve for.
    let mut u = vec![first];
    for _ in 1..graph.depth {
        // u_k = M u_{k−1}: the relaxed nodes' messages to their parents.
        let seeds: Vec<(ValueId, ValueId)> = relaxed(graph)
            .zip(&u[u.len() - 1])
            .map(|(pc, &x)| (predicted[pc.value.index()], x))
            .collect();
        u.push(autodiff::vjp(&mut p, &seeds, &cuts)?);
    }
    let output_errors = output_seeds.into_iter().map(|(_, e)| e).collect();
    Ok(Powers {
        p,
        ff,
        u,
        output_errors,
        loss,
    })
}

/// Σ_k γ_k u_k at every relaxed node, the γ_k being values of `p` (scalars) or constants.
fn weighted(p: &mut Program, u: &[Vec<ValueId>], gamma: &[Weight]) -> Vec<ValueId> {
    let nodes = u.first().map_or(0, Vec::len);
    (0..nodes)
        .map(|i| {
            let mut terms = u.iter().zip(gamma).map(|(u_k, g)| (u_k[i], g));
            let (x, g) = terms.next().expect("at least one power");
            let mut sum = g.times(p, x);
            for (x, g) in terms {
                let term = g.times(p, x);
                sum = p.add_values(sum, term);
            }
            sum
        })
        .collect()
}

/// A coefficient of the closed form: a constant, or a scalar computed by the program.
#[derive(Clone, Copy)]
enum Weight {
    Constant(f64),
    Value(ValueId),
}

impl Weight {
    fn times(self, p: &mut Program, x: ValueId) -> ValueId {
        match self {
            Weight::Constant(c) => p.scale(x, c),
            Weight::Value(g) => {
                let shape = p.shape(x).clone();
                let g = p.broadcast(g, shape);
                p.mul(g, x)
            }
        }
    }
}

/// The errors after `steps` steps as Σ_k γ_k M^k (η c).
fn closed_form(
    forward: &Stacked,
    graph: &PcGraph,
    rate: f64,
    beta: f64,
    steps: usize,
) -> Result<Program, PcError> {
    let Powers {
        mut p, ff, u, loss, ..
    } = powers(forward, graph, rate, beta, "relax.solved")?;
    let gamma: Vec<Weight> = coefficients(rate, steps, graph.depth)
        .into_iter()
        .map(Weight::Constant)
        .collect();
    let errors = if u[0].is_empty() {
        Vec::new()
    } else {
        weighted(&mut p, &u, &gamma)
    };
    Ok(solved(p, graph, &ff, errors, loss))
}

/// The state names of the closed form's loop under a stopping tolerance.
fn power_state(k: usize, label: &str) -> String {
    format!("power.{k}.{label}")
}
fn gamma_state(k: usize) -> String {
    format!("gamma.{k}")
}

/// The relaxation with a stopping tolerance in closed form (fixed mode, where [`evaluation`]
/// picks the closed form): a loop over D scalars instead of the errors. The prologue computes
/// the powers u_k = M^k (η c), their Gram matrix G_kl = Σ_i ⟨u_k,i, u_l,i⟩ and the outputs'
/// energy F_o; step t advances the coefficients by the recurrence of e(t+1) = (1 − η) e(t) +
/// η (M e(t) + c),
///
/// ```text
/// γ_0 ← (1 − η) γ_0 + 1,   γ_k ← (1 − η) γ_k + η γ_{k−1},   γ(0) = 0,
/// ```
///
/// takes the energy of the state it starts from as F_o + ½ Σ_kl γ_k γ_l G_kl, applies the
/// same stopping test as the simulated loop, and writes the errors e = Σ_k γ_k u_k. It stops
/// after the same steps as the simulated loop (up to rounding in the energies) with its
/// state, at the cost of D − 1 message products and D axpys per step.
pub fn solve_until(programs: &PcPrograms, steps: usize) -> Result<Option<LoopProgram>, PcError> {
    let forward = &programs.forward;
    let Some(tol) = programs.tol else {
        return Ok(None);
    };
    if evaluation(programs, steps) != Evaluation::ClosedForm {
        return Ok(None);
    }
    let graph = &programs.graph;
    let (rate, beta) = (programs.rate, programs.target.phases()[0].1);
    let Powers {
        p: mut prologue,
        ff,
        u,
        output_errors,
        loss,
    } = powers(forward, graph, rate, beta, "relax.powers")?;
    let labels: Vec<&str> = relaxed(graph).map(|pc| pc.label.as_str()).collect();
    let depth = u.len();
    for (k, u_k) in u.iter().enumerate() {
        for (&x, label) in u_k.iter().zip(&labels) {
            prologue.set_output(power_state(k, label), x);
        }
        let zero = prologue.constant(0.0, Shape::scalar());
        prologue.set_output(gamma_state(k), zero);
    }
    let dot = |p: &mut Program, a: ValueId, b: ValueId| {
        let product = p.mul(a, b);
        let rank = p.shape(product).rank();
        p.reduce_sum(product, (0..rank).collect())
    };
    for k in 0..depth {
        for l in k..depth {
            let terms: Vec<ValueId> = (0..labels.len())
                .map(|i| dot(&mut prologue, u[k][i], u[l][i]))
                .collect();
            let gram = sum_scalars(&mut prologue, &terms);
            prologue.set_output(format!("gram.{k}.{l}"), gram);
        }
    }
    let squares: Vec<ValueId> = output_errors
        .iter()
        .map(|&e| dot(&mut prologue, e, e))
        .collect();
    let outputs = sum_scalars(&mut prologue, &squares);
    let outputs = prologue.scale(outputs, 0.5);
    prologue.set_output("energy.outputs", outputs);
    for pc in relaxed(graph) {
        prologue.set_output(feedforward_state(&pc.label), ff[pc.value.index()]);
    }
    prologue.set_output("loss", ff[loss.index()]);

    let mut body = Program::new(format!("{}.relax.solved.step", forward.program.name));
    let scalar =
        |body: &mut Program, name: String| body.leaf(LeafKind::State, name, Shape::scalar());
    let gamma: Vec<ValueId> = (0..depth)
        .map(|k| scalar(&mut body, gamma_state(k)))
        .collect();
    // The energy of the state the step starts from.
    let mut terms = vec![scalar(&mut body, "energy.outputs".to_string())];
    for k in 0..depth {
        for l in k..depth {
            let gram = scalar(&mut body, format!("gram.{k}.{l}"));
            let pair = body.mul(gamma[k], gamma[l]);
            let term = body.mul(pair, gram);
            terms.push(body.scale(term, if k == l { 0.5 } else { 1.0 }));
        }
    }
    let energy = sum_scalars(&mut body, &terms);
    body.set_output("energy", energy);
    let test = crate::pc::stopping_test(&mut prologue, &mut body, energy, tol);
    let next: Vec<ValueId> = (0..depth)
        .map(|k| {
            let kept = body.scale(gamma[k], 1.0 - rate);
            let fed = if k == 0 {
                body.constant(1.0, Shape::scalar())
            } else {
                body.scale(gamma[k - 1], rate)
            };
            body.add_values(kept, fed)
        })
        .collect();
    for (k, &g) in next.iter().enumerate() {
        body.set_output(gamma_state(k), g);
    }
    let powers: Vec<Vec<ValueId>> = (0..depth)
        .map(|k| {
            relaxed(graph)
                .map(|pc| body.leaf(LeafKind::State, power_state(k, &pc.label), pc.shape.clone()))
                .collect()
        })
        .collect();
    let weights: Vec<Weight> = next.into_iter().map(Weight::Value).collect();
    if depth > 0 {
        let errors = weighted(&mut body, &powers, &weights);
        for (pc, e) in relaxed(graph).zip(errors) {
            body.set_output(error_state(&pc.label), e);
        }
    }
    crate::opt::simplify(&mut prologue);
    crate::opt::simplify(&mut body);
    Ok(Some(LoopProgram {
        prologue,
        body,
        steps,
        until: Some(test),
    }))
}

fn sum_scalars(p: &mut Program, terms: &[ValueId]) -> ValueId {
    match terms.split_first() {
        None => p.constant(0.0, Shape::scalar()),
        Some((&first, rest)) => rest.iter().fold(first, |acc, &t| p.add_values(acc, t)),
    }
}

/// One program for a whole predictive-coding training step: the closed-form relaxation
/// followed by the learning program, reading the relaxed state directly. Common
/// subexpression elimination then shares the feedforward pass and the frozen Jacobians
/// between the two. Outputs: the learning program's (`update.*`, `message.*`, `energy`) and
/// `loss`.
pub fn fuse_step(solved: &Program, learn: &Program) -> Program {
    let mut step = solved.clone();
    step.name = learn.name.replace(".learn", ".step");
    let state: HashMap<String, ValueId> = solved
        .outputs
        .iter()
        .map(|o| (o.name.clone(), o.value))
        .collect();
    let loss = solved.output("loss");
    step.outputs = step.append(learn, &state);
    if let Some(loss) = loss {
        step.set_output("loss", loss);
    }
    // The step runs its loops as scans and is not split by samples: its stacked products
    // take their rows in their own order.
    crate::opt::row_order::products_in_row_order(&mut step);
    crate::opt::simplify(&mut step);
    crate::opt::leading_rows::share_leading_rows(&mut step);
    crate::opt::cse(&mut step);
    step
}
