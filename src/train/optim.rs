//! Optimisers: SGD with momentum and weight decay, and Adam; optional clipping of each
//! parameter's gradient to a maximum L2 norm. Both methods feed them a gradient: backprop's
//! ∂L/∂θ, or predictive coding's negated weight update −Δθ.
//!
//! The update is an IR program ([`update_program`]), so that one description of the math
//! serves both backends: the interpreter runs it after each step's gradients, and the JIT
//! compiles it into the training step itself, where parameters and optimiser state stay in
//! the compiled function's memory between steps. Per parameter p with gradient g:
//!
//! ```text
//! s = min(1, c / ‖g‖)            (clipping to norm c; 1 without it)
//! SGD:      p ← p − lr (s g + wd p)                        (no momentum: no state)
//!           v ← μ v + (s g + wd p);  p ← p − lr v          (momentum μ)
//! Adam:     m ← β1 m + (1 − β1) s g;  v ← β2 v + (1 − β2) (s g)²
//!           p ← p − lr ((m / c1) / (√(v / c2) + ε) + wd p)  (decoupled weight decay)
//! ```
//!
//! with Adam's bias corrections c1 = 1 − β1^t, c2 = 1 − β2^t at step t given as scalar inputs.
//!
//! The train block may shape the learning rate ([`LrTuning`]): each parameter's `lr` is
//! multiplied by its `lr_scale` (a frozen parameter gets no update and no state), and with a
//! schedule by its factor at step t, a scalar input [`LR_FACTOR`] like the corrections.

use crate::interp::{self, Real};
use crate::ir::{BinaryOp, LeafKind, Program, Shape, UnaryOp, ValueId};
use crate::npz::Arrays;
use crate::sema::{LrTuning, OptimizerConfig};
use ndarray::ArrayD;
use std::collections::BTreeMap;

/// The prefix of optimiser state arrays in checkpoints (and of the update program's state).
pub const STATE_PREFIX: &str = "optimizer.";

/// The update program's state leaf holding a parameter's gradient.
pub fn gradient_state(param: &str) -> String {
    format!("gradient.{param}")
}

/// The state entry of a parameter's first moment (SGD: velocity) or second moment (Adam).
fn moment(which: &str, param: &str) -> String {
    format!("{STATE_PREFIX}{which}.{param}")
}

/// The scalar inputs carrying Adam's bias corrections 1 − β1^t and 1 − β2^t.
pub const CORRECTIONS: [&str; 2] = ["optimizer.correction1", "optimizer.correction2"];

/// The scalar input carrying a learning-rate schedule's factor at the step.
pub const LR_FACTOR: &str = "optimizer.lr_factor";

/// The loop state carrying Adam's β1^t and β2^t under the incremental schedule, whose
/// optimiser steps run inside the relaxation loop (`train::schedule`).
pub const POWERS: [&str; 2] = ["optimizer.power1", "optimizer.power2"];

/// One optimiser step over the parameters `params` (name and shape), as an IR program.
/// With `ascent`, the `gradient.p` leaves hold an ascent direction (predictive coding's
/// weight update Δθ) and the gradient is its negation.
///
/// Leaves: each parameter p (`Param`), its gradient `gradient.p` and its moments
/// `optimizer.first.p`, `optimizer.second.p` (`State`, where the optimiser keeps them), and
/// for Adam the corrections [`CORRECTIONS`] (`Input`, scalars). Outputs, in an order in which
/// each may overwrite its own leaf: the new parameter under the parameter's own name and the
/// new moments, each after every output that reads the old value it replaces.
pub fn update_program(
    config: &OptimizerConfig,
    clip: Option<f64>,
    params: &[(String, Shape)],
    ascent: bool,
) -> Program {
    update_program_tuned(config, clip, &LrTuning::default(), params, ascent)
}

/// [`update_program`] with the learning rate shaped by `tuning`: per parameter by its scale
/// (frozen parameters are left out: no update, no state), and with a schedule by the scalar
/// input [`LR_FACTOR`].
pub fn update_program_tuned(
    config: &OptimizerConfig,
    clip: Option<f64>,
    tuning: &LrTuning,
    params: &[(String, Shape)],
    ascent: bool,
) -> Program {
    let mut p = Program::new("update");
    let factor = tuning
        .schedule
        .map(|_| p.leaf(LeafKind::Input, LR_FACTOR, Shape::scalar()));
    // lr · scale · factor applied to a parameter's step.
    let scaled = |p: &mut Program, step: ValueId, lr: f64| {
        let delta = p.scale(step, lr);
        match factor {
            Some(f) => {
                let shape = p.shape(step).clone();
                let f = p.broadcast(f, shape);
                p.mul(delta, f)
            }
            None => delta,
        }
    };
    let corrections = match config {
        OptimizerConfig::Adam { .. } => {
            Some(CORRECTIONS.map(|name| p.leaf(LeafKind::Input, name, Shape::scalar())))
        }
        OptimizerConfig::Sgd { .. } => None,
    };
    for (name, shape) in params {
        let scale = tuning.scale(name);
        if scale == 0.0 {
            continue;
        }
        let param = p.leaf(LeafKind::Param, name.clone(), shape.clone());
        let mut grad = p.leaf(LeafKind::State, gradient_state(name), shape.clone());
        if ascent {
            grad = p.unary(UnaryOp::Neg, grad);
        }
        let g = match clip {
            Some(c) => clipped(&mut p, grad, c),
            None => grad,
        };
        match *config {
            OptimizerConfig::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                let lr = lr * scale;
                let decayed = p.scale(param, weight_decay);
                let drive = p.add_values(g, decayed);
                let mut velocity = None;
                let step = if momentum == 0.0 {
                    drive
                } else {
                    let v = p.leaf(LeafKind::State, moment("first", name), shape.clone());
                    let kept = p.scale(v, momentum);
                    let v = p.add_values(kept, drive);
                    velocity = Some(v);
                    v
                };
                let delta = scaled(&mut p, step, lr);
                let new = p.sub(param, delta);
                // Without weight decay the velocity does not read the parameter, so the
                // parameter may be overwritten first; with it, the velocity must come first.
                if weight_decay != 0.0 {
                    if let Some(v) = velocity {
                        p.set_output(moment("first", name), v);
                    }
                }
                p.set_output(name.clone(), new);
                if let (Some(v), 0.0) = (velocity, weight_decay) {
                    p.set_output(moment("first", name), v);
                }
            }
            OptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let lr = lr * scale;
                let [c1, c2] = corrections.expect("Adam has corrections");
                let m = p.leaf(LeafKind::State, moment("first", name), shape.clone());
                let v = p.leaf(LeafKind::State, moment("second", name), shape.clone());
                let m = p.moving_average(m, g, beta1);
                let g2 = p.mul(g, g);
                let v = p.moving_average(v, g2, beta2);
                p.set_output(moment("first", name), m);
                p.set_output(moment("second", name), v);
                let c1 = p.broadcast(c1, shape.clone());
                let c2 = p.broadcast(c2, shape.clone());
                let m_hat = p.binary(BinaryOp::Div, m, c1);
                let v_hat = p.binary(BinaryOp::Div, v, c2);
                let root = p.unary(UnaryOp::Sqrt, v_hat);
                let eps = p.constant(eps, shape.clone());
                let denominator = p.add_values(root, eps);
                let update = p.binary(BinaryOp::Div, m_hat, denominator);
                let decayed = p.scale(param, weight_decay);
                let step = p.add_values(update, decayed);
                let delta = scaled(&mut p, step, lr);
                let new = p.sub(param, delta);
                p.set_output(name.clone(), new);
            }
        }
    }
    crate::opt::simplify(&mut p);
    p
}

/// `g · min(1, c / ‖g‖)`: the gradient clipped to L2 norm `c`.
fn clipped(p: &mut Program, g: ValueId, c: f64) -> ValueId {
    let shape = p.shape(g).clone();
    let squares = p.mul(g, g);
    let axes = (0..shape.rank()).collect();
    let total = p.reduce_sum(squares, axes);
    let norm = p.unary(UnaryOp::Sqrt, total);
    let limit = p.constant(c, Shape::scalar());
    let over = p.binary(BinaryOp::Greater, norm, limit);
    let shrink = p.binary(BinaryOp::Div, limit, norm);
    let one = p.constant(1.0, Shape::scalar());
    let scale = p.build(crate::ir::Op::Where, &[over, shrink, one], None);
    let scale = p.broadcast(scale, shape);
    p.mul(g, scale)
}

/// An optimiser with its state (momentum buffers, Adam moments and step count), stepping the
/// parameters with [`update_program`] on the interpreter.
/// `F` is the element type of the moments, as of the parameters they follow.
#[derive(Clone, Debug)]
pub struct Optimizer<F: Real = f32> {
    config: OptimizerConfig,
    clip: Option<f64>,
    /// The learning rate's schedule and per-parameter factors.
    tuning: LrTuning,
    /// The moments, by their state names (`optimizer.first.<p>`, ...).
    moments: BTreeMap<String, ArrayD<F>>,
    steps: u64,
    /// The update program, built for the parameters of the first step.
    program: Option<Program>,
}

/// `config` with its learning rate replaced by `lr` when given.
pub fn with_lr(config: OptimizerConfig, lr: Option<f64>) -> OptimizerConfig {
    let Some(new) = lr else {
        return config;
    };
    match config {
        OptimizerConfig::Sgd {
            momentum,
            weight_decay,
            ..
        } => OptimizerConfig::Sgd {
            lr: new,
            momentum,
            weight_decay,
        },
        OptimizerConfig::Adam {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } => OptimizerConfig::Adam {
            lr: new,
            beta1,
            beta2,
            eps,
            weight_decay,
        },
    }
}

/// The learning rate of an optimiser's settings.
pub fn learning_rate(config: &OptimizerConfig) -> f64 {
    match config {
        OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } => *lr,
    }
}

impl<F: Real> Optimizer<F> {
    pub fn new(config: OptimizerConfig, clip: Option<f64>) -> Self {
        Optimizer {
            config,
            clip,
            tuning: LrTuning::default(),
            moments: BTreeMap::new(),
            steps: 0,
            program: None,
        }
    }

    /// The optimiser of a train block (plain SGD at 0.01 without one), with its learning
    /// rate replaced by `lr` when given.
    /// The optimiser of a compiled model: its train block's (plain SGD at 0.01 without one),
    /// at learning rate `lr` when given, leaving the model's `frozen` tensors alone.
    pub fn for_model(compiled: &crate::sema::Compiled, lr: Option<f64>) -> Self {
        let mut optimizer = Self::of_train_block(compiled.train.as_ref(), lr);
        for name in &compiled.frozen {
            if !optimizer.tuning.frozen.contains(name) {
                optimizer.tuning.frozen.push(name.clone());
                optimizer.program = None;
            }
        }
        optimizer
    }

    fn of_train_block(train: Option<&crate::sema::TrainConfig>, lr: Option<f64>) -> Self {
        let config = train.map_or(
            OptimizerConfig::Sgd {
                lr: 0.01,
                momentum: 0.0,
                weight_decay: 0.0,
            },
            |t| t.optimizer.clone(),
        );
        let tuning = train.map(|t| t.tuning.clone()).unwrap_or_default();
        Optimizer::new(with_lr(config, lr), train.and_then(|t| t.clip)).with_tuning(tuning)
    }

    /// The same optimiser with its learning rate shaped by `tuning`.
    pub fn with_tuning(mut self, tuning: LrTuning) -> Self {
        if tuning != self.tuning {
            self.tuning = tuning;
            self.program = None;
        }
        self
    }

    pub fn tuning(&self) -> &LrTuning {
        &self.tuning
    }

    /// The update program of this optimiser over `params` (see [`update_program_tuned`]).
    pub fn update_program(&self, params: &[(String, Shape)], ascent: bool) -> Program {
        update_program_tuned(&self.config, self.clip, &self.tuning, params, ascent)
    }

    /// The schedule's factor of the learning rate at the next step, as the input
    /// [`LR_FACTOR`] (none without a schedule).
    pub fn schedule_factor(&self) -> Vec<(String, ArrayD<F>)> {
        let Some(schedule) = self.tuning.schedule else {
            return Vec::new();
        };
        let factor = F::from_f64(schedule.factor(self.steps + 1));
        vec![(LR_FACTOR.to_string(), ndarray::arr0(factor).into_dyn())]
    }

    /// The same state (moments, steps) with other settings, e.g. another learning rate.
    pub fn with_config(mut self, config: OptimizerConfig) -> Self {
        if config != self.config {
            self.config = config;
            self.program = None;
        }
        self
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    pub fn clip(&self) -> Option<f64> {
        self.clip
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The values of Adam's corrections [`CORRECTIONS`] at the next step (none for SGD).
    /// With a schedule, its factor at the next step ([`LR_FACTOR`]) too.
    pub fn corrections(&self) -> Vec<(String, ArrayD<F>)> {
        let mut inputs = self.schedule_factor();
        let OptimizerConfig::Adam { beta1, beta2, .. } = self.config else {
            return inputs;
        };
        let t = (self.steps + 1) as i32;
        inputs.extend(
            [(CORRECTIONS[0], beta1), (CORRECTIONS[1], beta2)]
                .into_iter()
                .map(|(name, beta)| {
                    let c = F::one() - F::from_f64(beta).powi(t);
                    (name.to_string(), ndarray::arr0(c).into_dyn())
                }),
        );
        inputs
    }

    /// β1^t and β2^t after the steps taken so far, as [`POWERS`] (none for SGD): where a loop
    /// of optimiser steps starts its bias corrections. With a schedule, its factor at the
    /// next step ([`LR_FACTOR`]) too, which the loop's steps share.
    pub fn powers(&self) -> Vec<(String, ArrayD<F>)> {
        let mut inputs = self.schedule_factor();
        let OptimizerConfig::Adam { beta1, beta2, .. } = self.config else {
            return inputs;
        };
        let t = self.steps as i32;
        inputs.extend(
            [(POWERS[0], beta1), (POWERS[1], beta2)]
                .into_iter()
                .map(|(name, beta)| {
                    let power = F::from_f64(beta).powi(t);
                    (name.to_string(), ndarray::arr0(power).into_dyn())
                }),
        );
        inputs
    }

    /// The moments the parameters start with: zeros for each state entry the update program
    /// reads.
    pub fn initial_moments(&self, params: &[(String, Shape)]) -> Arrays<F> {
        let program = self.update_program(params, false);
        program
            .leaves(LeafKind::State)
            .into_iter()
            .filter(|(_, name)| name.starts_with(STATE_PREFIX))
            .map(|(id, name)| {
                let dims = program.shape(id).dims().to_vec();
                (name.to_string(), ArrayD::zeros(dims))
            })
            .collect()
    }

    /// Counts one step taken elsewhere (by a compiled step that keeps the moments itself).
    pub fn count_step(&mut self) {
        self.steps += 1;
    }

    /// Counts `n` steps taken elsewhere (a loop of them: the incremental schedule).
    pub fn count_steps(&mut self, n: usize) {
        self.steps += n as u64;
    }

    /// Applies one update to every parameter.
    pub fn step(&mut self, params: &mut Arrays<F>, grads: &Arrays<F>) {
        let shapes: Vec<(String, Shape)> = grads
            .iter()
            .filter(|(name, _)| params.contains_key(*name))
            .map(|(name, g)| (name.clone(), Shape::new(g.shape())))
            .collect();
        if self.moments.is_empty() {
            self.moments = self.initial_moments(&shapes);
        }
        if self.program.is_none() {
            self.program = Some(self.update_program(&shapes, false));
        }
        let mut leaves: interp::Bindings<F> = params.clone();
        leaves.extend(self.moments.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (name, g) in grads {
            leaves.insert(gradient_state(name), g.clone());
        }
        leaves.extend(self.corrections());
        let program = self.program.as_ref().expect("built above");
        let out =
            interp::eval_outputs(program, &leaves).expect("the update program fits its parameters");
        self.steps += 1;
        for (name, value) in out {
            if name.starts_with(STATE_PREFIX) {
                self.moments.insert(name, value);
            } else {
                params.insert(name, value);
            }
        }
    }

    /// The optimiser's state as named arrays, for checkpoints.
    pub fn state(&self) -> Arrays<F> {
        let mut out: Arrays<F> = self.moments.clone();
        // Stored as two halves exact in f32 so large step counts survive the round trip.
        let (hi, lo) = (
            F::from_f64((self.steps >> 24) as f64),
            F::from_f64((self.steps & 0xff_ffff) as f64),
        );
        out.insert(
            format!("{STATE_PREFIX}steps"),
            ndarray::arr1(&[hi, lo]).into_dyn(),
        );
        out
    }

    /// The moments alone, by state name.
    pub fn moments(&self) -> &BTreeMap<String, ArrayD<F>> {
        &self.moments
    }

    /// Replaces the moments (after a compiled step kept them).
    pub fn set_moments(&mut self, moments: Arrays<F>) {
        self.moments = moments;
    }

    /// Restores the state written by `state`.
    pub fn restore(&mut self, arrays: &Arrays<F>) {
        self.moments.clear();
        for (key, a) in arrays {
            let is_moment = key.starts_with(&format!("{STATE_PREFIX}first."))
                || key.starts_with(&format!("{STATE_PREFIX}second."));
            if is_moment {
                self.moments.insert(key.clone(), a.clone());
            }
        }
        if let Some(s) = arrays.get(&format!("{STATE_PREFIX}steps")) {
            let v: Vec<f64> = s.iter().map(|&x| Real::to_f64(x)).collect();
            if let [hi, lo] = v.as_slice() {
                self.steps = ((*hi as u64) << 24) | (*lo as u64);
            }
        }
    }
}
