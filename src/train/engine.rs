//! Engines: what one training step computes, behind one interface, for each backend. An engine
//! owns the compiled programs of a model — backprop's gradient program, or predictive coding's
//! relaxation and learning programs — and the evaluation program. It turns a batch and the
//! parameters into a loss and a gradient (`gradients`, for `pcg grad` and checks), and, for
//! training, holds the parameters and the optimiser between steps and takes whole steps
//! (`start`, `train_step`, `trained`): the compiled backend runs a step — gradient and update —
//! as one native function over parameters that stay in its memory.

use super::optim::{self, Optimizer};
use super::schedule;
use crate::autodiff;
use crate::distributed::World;
use crate::interp::{self, Bindings, EvalError, Real};
use crate::ir::{LeafKind, LoopProgram, Program, Shape, ValueId};
use crate::jit::{JitError, JitLoop, JitOptions, JitProgram, JitStep, Stage};
use crate::npz::Arrays;
use crate::pc::{self, PcPrograms};
use crate::sema::{Dtype, InferenceConfig, Method, Schedule};
use ndarray::ArrayD;
use std::borrow::Cow;
use std::fmt;

/// The element types training computes in: `f32`, the default, and `f64` (`dtype = f64`).
/// Data, initial parameters and dropout masks are made in `f32` and widened (exactly), so that
/// a model starts from the same point in either type.
///
/// The dtype, as the train block and `--dtype` name it, is `jit::Float::DTYPE`.
pub trait Element: crate::jit::Float + ndarray_npy::WritableElement {
    /// `arrays` in this type.
    fn from_f32(arrays: Arrays) -> Arrays<Self>;

    /// The compiled backend's engine of `programs`, in this type.
    fn jit_engine(
        programs: Programs,
        options: &JitOptions,
    ) -> Result<Box<dyn Engine<Self> + Send>, String> {
        Ok(Box::new(
            JitEngine::<Self>::new(programs, options).map_err(|e| e.to_string())?,
        ))
    }
}

impl Element for f32 {
    fn from_f32(arrays: Arrays) -> Arrays {
        arrays
    }
}

impl Element for f64 {
    fn from_f32(arrays: Arrays) -> Arrays<f64> {
        arrays
            .into_iter()
            .map(|(k, v)| (k, v.mapv(f64::from)))
            .collect()
    }
}

/// The outcome of one step's gradient computation.
#[derive(Clone, Debug)]
pub struct StepResult<F: Real = f32> {
    /// The loss at the feedforward pass.
    pub loss: f64,
    /// The relaxation's final energy (predictive coding only).
    pub energy: Option<f64>,
    /// ∂L/∂θ (backprop) or −Δθ (predictive coding), by parameter.
    pub grads: Arrays<F>,
    /// The relaxation steps run, where a stopping tolerance may end it early.
    pub relaxation_steps: Option<f64>,
}

/// Why a step failed.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineError {
    /// A program could not run (a compiler bug or a leaf of the wrong shape).
    Eval(String),
    /// A value stopped being finite.
    Diverged {
        /// The PC node, parameter or quantity that went non-finite.
        what: String,
        /// The relaxation step at which it happened (predictive coding).
        relaxation_step: Option<usize>,
    },
    /// The step was abandoned at a request to stop (`jit::interrupt`), before anything was
    /// updated.
    Interrupted,
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Eval(e) => f.write_str(e),
            EngineError::Diverged {
                what,
                relaxation_step: Some(step),
            } => write!(f, "{what} is not finite at relaxation step {step}"),
            EngineError::Diverged {
                what,
                relaxation_step: None,
            } => write!(f, "{what} is not finite"),
            EngineError::Interrupted => f.write_str("the step was abandoned at a request to stop"),
        }
    }
}

impl From<EvalError> for EngineError {
    fn from(e: EvalError) -> Self {
        EngineError::Eval(e.to_string())
    }
}

/// What one training step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// The loss at the feedforward pass.
    pub loss: f64,
    /// The relaxation's final energy (predictive coding only).
    pub energy: Option<f64>,
    /// The relaxation steps run, where a stopping tolerance may end it early.
    pub relaxation_steps: Option<f64>,
}

/// The steps a relaxation with a stopping test ran, from its final state.
fn steps_run<F: Real>(state: &Bindings<F>) -> Option<f64> {
    state.get(crate::ir::STEPS_RUN).map(sum)
}

/// The sum of a tensor's elements, in f64.
fn sum<F: Real>(t: &ArrayD<F>) -> f64 {
    t.iter().map(|&x| Real::to_f64(x)).sum()
}

/// One training step's computation for one backend, in element type `F`.
pub trait Engine<F: Element = f32> {
    /// The backend's name, as `--backend` spells it.
    fn backend(&self) -> &'static str;
    /// Loss and gradients on one batch (inputs and targets by name).
    fn gradients(
        &mut self,
        params: &Arrays<F>,
        batch: &Arrays<F>,
    ) -> Result<StepResult<F>, EngineError>;
    /// Starts training from `params` with `optimizer` (and its state).
    fn start(&mut self, params: Arrays<F>, optimizer: Optimizer<F>) -> Result<(), EngineError>;
    /// One training step on a batch: the gradient and the optimiser's update. A step whose
    /// gradient is not finite leaves the parameters as they were and says where it diverged;
    /// one whose update is not finite names the parameter.
    fn train_step(&mut self, batch: &Arrays<F>) -> Result<StepReport, EngineError>;
    /// The parameters and the optimiser as training has left them.
    fn trained(&mut self) -> (Arrays<F>, Optimizer<F>);
    /// Shares every training step from `start` on with the other processes of `world`: each
    /// step's parameter updates, loss and energy are summed over them (one exchange per step)
    /// before the same optimiser step is taken on every one. Refused for a schedule that
    /// learns during the relaxation.
    fn distribute(&mut self, world: World) -> Result<(), String>;
    /// The processes training is shared between ([`World::single`] unless distributed).
    fn world(&self) -> &World;
    /// What one training step does, where the backend counts it (after `start`).
    fn step_cost(&self) -> Option<crate::jit::StepCost> {
        None
    }
    /// Training steps so far that shared their work between threads, and steps run on one
    /// thread because that measured faster (trials of the other mode left out); `None` where
    /// the backend does not choose.
    fn sharing_counts(&self) -> Option<(usize, usize)> {
        None
    }
    /// The kernels of the compiled training step (after `start`), by index; none where the
    /// backend compiles no step.
    fn kernels(&self) -> Vec<crate::jit::KernelInfo> {
        Vec::new()
    }
    /// Loss and, where the model has one prediction shaped like its target, the prediction.
    fn evaluate(
        &mut self,
        params: &Arrays<F>,
        batch: &Arrays<F>,
    ) -> Result<(f64, Option<ArrayD<F>>), EngineError>;
}

/// The backends that run a model's programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Native code compiled with Cranelift.
    #[default]
    Jit,
    /// The reference interpreter.
    Interp,
}

impl Backend {
    /// The backend's name, as `--backend` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Jit => "jit",
            Backend::Interp => "interp",
        }
    }

    /// The engine that runs `programs` on this backend in element type `F` (`options`: how
    /// the JIT compiles).
    pub fn engine<F: Element>(
        self,
        programs: Programs,
        options: &JitOptions,
    ) -> Result<Box<dyn Engine<F> + Send>, String> {
        match self {
            Backend::Jit => F::jit_engine(programs, options),
            Backend::Interp => Ok(Box::new(InterpEngine::<F>::new(programs))),
        }
    }
}

/// The programs a model trains with, independent of the backend that runs them.
#[derive(Clone, Debug)]
pub struct Programs {
    pub method: Method,
    /// Backprop: outputs `loss` and `grad.<param>`.
    pub grad: Option<Program>,
    /// Predictive coding: relaxation and learning.
    pub pc: Option<PcPrograms>,
    /// Relaxation steps per training step.
    pub steps: usize,
    /// The whole PC step as one program — the relaxation solved in closed form, then the
    /// learning — in fixed and exact modes where that saves work; `None` runs the relaxation
    /// step by step.
    pub fused: Option<Program>,
    /// The relaxation training runs instead of `pc.relax` where it is cheaper and gives the
    /// same final state: in fixed mode with a stopping tolerance, the closed form's loop over
    /// coefficients (`pc::solve_until`).
    pub solved_relax: Option<LoopProgram>,
    /// The forward program with an extra output `prediction` when there is one.
    pub eval: Program,
}

impl Programs {
    /// The programs of `method`; `steps` overrides the relaxation's default step count.
    pub fn build(
        forward: &Program,
        method: Method,
        inference: &InferenceConfig,
        steps: Option<usize>,
    ) -> Result<Self, String> {
        let (grad, mut pc, steps) = match method {
            Method::Bp => (Some(gradient(forward)?), None, 0),
            Method::Pc => {
                let programs = pc::transform(forward, inference).map_err(|e| e.to_string())?;
                let steps = steps.unwrap_or(programs.relax.steps);
                (None, Some(programs), steps)
            }
        };
        // Training needs the updates, not the messages to the inputs (which gradcheck reads).
        if let Some(p) = &mut pc {
            p.learn.outputs.retain(|o| !o.name.starts_with("message."));
            p.learn.prune();
        }
        let fused = match &pc {
            Some(p) => pc::solve(p, steps)
                .map_err(|e| e.to_string())?
                .map(|solved| pc::fuse_step(&solved, &p.learn)),
            None => None,
        };
        let solved_relax = match &pc {
            Some(p) => pc::solve_until(p, steps).map_err(|e| e.to_string())?,
            None => None,
        };
        Ok(Programs {
            fused,
            solved_relax,
            method,
            grad,
            pc,
            steps,
            eval: eval_program(forward, inference),
        })
    }
}

impl Programs {
    /// The floating-point operations of one training step, as the programs count them.
    pub fn step_flops(&self) -> u64 {
        match (&self.grad, &self.fused, &self.pc) {
            (Some(g), _, _) | (_, Some(g), _) => crate::ir::flops(g),
            (_, _, Some(pc)) => {
                // The incremental schedule learns at every step.
                let learning = match pc.schedule {
                    Schedule::Standard => 1,
                    Schedule::Incremental => self.steps as u64,
                };
                crate::ir::flops(&pc.relax.prologue)
                    + self.steps as u64 * crate::ir::flops(&pc.relax.body)
                    + learning * crate::ir::flops(&pc.learn)
            }
            _ => 0,
        }
    }

    /// The predictive-coding programs when they learn at every relaxation step.
    pub fn incremental(&self) -> Option<&PcPrograms> {
        self.pc
            .as_ref()
            .filter(|pc| pc.schedule == Schedule::Incremental)
    }

    /// The training step's loop under the incremental schedule (see `train::schedule`), for
    /// `optimizer`, and the names of the parameters and moments it leaves.
    pub fn incremental_loop<F: Real>(
        &self,
        optimizer: &Optimizer<F>,
    ) -> Option<(LoopProgram, Vec<String>)> {
        let pc = self.incremental()?;
        Some(schedule::incremental_loop(pc, optimizer, self.steps))
    }

    /// The same programs without the closed form: every relaxation step is run.
    pub fn simulated(mut self) -> Self {
        self.fused = None;
        self.solved_relax = None;
        self
    }

    /// The relaxation loop a training step runs (when it runs one).
    pub fn relaxation(&self) -> Option<&LoopProgram> {
        self.solved_relax
            .as_ref()
            .or(self.pc.as_ref().map(|pc| &pc.relax))
    }
}

/// Backprop's gradient program, simplified as every derived program is.
pub fn gradient(forward: &Program) -> Result<Program, String> {
    let mut grad = autodiff::grad_program(forward).map_err(|e| e.to_string())?;
    crate::opt::simplify(&mut grad);
    Ok(grad)
}

/// The forward program plus an output `prediction`: the one value the loss reads whose shape
/// is the target's (a classifier's logits or scores), if there is exactly one.
pub fn eval_program(forward: &Program, inference: &InferenceConfig) -> Program {
    let mut eval = forward.clone();
    let targets = forward.leaves(LeafKind::Target);
    if let [(target, _)] = targets.as_slice() {
        // The outputs are found on the loops unrolled, and read where the forward program has
        // them (outside any loop).
        let mut flat = forward.clone();
        let at = crate::opt::unroll::unroll_mapped(&mut flat, &|_| true);
        let graph = pc::analyse(&flat, inference);
        let candidates: Vec<_> = graph
            .nodes
            .iter()
            .filter(|n| n.role == pc::Role::Output && n.shape == *forward.shape(*target))
            .collect();
        if let [one] = candidates.as_slice() {
            if let Some(k) = at.iter().position(|&v| v == Some(one.value)) {
                eval.set_output("prediction", ValueId(k as u32));
            }
        }
    }
    eval
}

/// `batch` with every dropout mask of the model that it does not give itself: drawn for
/// training step `step`, or all ones when evaluating (`None`). The step's programs all read
/// the same masks: the relaxation and the learning of a PC step see one mask.
fn noisy<'a, F: Element>(
    programs: &Programs,
    batch: &'a Arrays<F>,
    step: Option<u64>,
) -> Cow<'a, Arrays<F>> {
    let masks = F::from_f32(super::batch::noise(&programs.eval, step));
    if masks.keys().all(|k| batch.contains_key(k)) {
        return Cow::Borrowed(batch);
    }
    let mut with = batch.clone();
    for (name, mask) in masks {
        with.entry(name).or_insert(mask);
    }
    Cow::Owned(with)
}

/// Parameters and a batch in one map (the interpreter binds leaves from one map).
fn merged<F: Real>(params: &Arrays<F>, batch: &Arrays<F>) -> Bindings<F> {
    let mut leaves = params.clone();
    leaves.extend(batch.iter().map(|(k, v)| (k.clone(), v.clone())));
    leaves
}

fn scalar<F: Real>(b: &Bindings<F>, name: &str) -> f64 {
    b.get(name).map_or(f64::NAN, sum)
}

fn all_finite<F: Real>(a: &ArrayD<F>) -> bool {
    a.iter().all(|x| x.is_finite())
}

/// A loss that is not finite. (Engines check the scalars they compute anyway — the loss and
/// the energy; the training loop checks the parameters after each update, once.)
fn check_loss(loss: f64) -> Result<(), EngineError> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(EngineError::Diverged {
            what: "the loss".into(),
            relaxation_step: None,
        })
    }
}

/// The reference backend: the interpreter, in element type `F`.
pub struct InterpEngine<F: Element = f32> {
    programs: Programs,
    training: Option<(Arrays<F>, Optimizer<F>)>,
    /// The incremental schedule's loop and the names it stores, from `start` on.
    incremental: Option<(LoopProgram, Vec<String>)>,
    world: World,
}

impl<F: Element> InterpEngine<F> {
    pub fn new(programs: Programs) -> Self {
        InterpEngine {
            programs,
            training: None,
            incremental: None,
            world: World::single(),
        }
    }
}

/// `world`, unless `programs` learn during the relaxation, which is not shared between
/// processes, or compute in f64 (a job's exchanges carry f32).
fn distributable<F: Element>(programs: &Programs, world: World) -> Result<World, String> {
    if world.is_distributed() && F::DTYPE != Dtype::F32 {
        return Err(format!(
            "training in {} runs in one process: a job of several processes exchanges f32 updates (use dtype f32)",
            F::DTYPE.name()
        ));
    }
    if world.is_distributed() && programs.incremental().is_some() {
        return Err(
            "the incremental schedule learns at every relaxation step; training it over several processes is not supported (use the standard schedule)"
                .into(),
        );
    }
    Ok(world)
}

/// The divergence a process reports whose own shard was healthy when another's was not.
fn diverged_elsewhere(world: &World) -> EngineError {
    let ranks: Vec<String> = world
        .diverged_ranks()
        .iter()
        .map(|r| r.to_string())
        .collect();
    EngineError::Diverged {
        what: format!("the step on rank {}", ranks.join(", ")),
        relaxation_step: None,
    }
}

/// One step's gradient summed over the processes of `world`: the parameters' updates, the
/// loss, the energy and the relaxation steps in one exchange. A step that failed on this
/// process takes part with values that are not finite, so that every process fails it.
fn exchanged<F: Real>(
    world: &World,
    params: &Arrays<F>,
    step: Result<StepResult<F>, EngineError>,
) -> Result<StepResult<F>, EngineError> {
    let mut payload = Vec::new();
    let ok = step.as_ref().ok();
    for (name, p) in params {
        match ok.and_then(|s| s.grads.get(name)) {
            Some(g) => payload.extend(g.iter().map(|&x| Real::to_f64(x) as f32)),
            None if ok.is_some() => payload.extend(std::iter::repeat_n(0.0, p.len())),
            None => payload.extend(std::iter::repeat_n(f32::NAN, p.len())),
        }
    }
    let scalars = ok.map_or([f64::NAN; 3], |s| {
        [
            s.loss,
            s.energy.unwrap_or(0.0),
            s.relaxation_steps.unwrap_or(0.0),
        ]
    });
    payload.extend(scalars.map(|x| x as f32));
    world.exchange(&mut payload);
    let step = step?;
    let n = payload.len();
    let (loss, energy, steps) = (payload[n - 3], payload[n - 2], payload[n - 1]);
    if !loss.is_finite() || !energy.is_finite() {
        return Err(diverged_elsewhere(world));
    }
    let mut grads = Arrays::new();
    let mut at = 0;
    for (name, p) in params {
        let values = payload[at..at + p.len()]
            .iter()
            .map(|&x| F::from_f64(f64::from(x)))
            .collect();
        at += p.len();
        if step.grads.contains_key(name) {
            let g = ArrayD::from_shape_vec(p.shape(), values)
                .map_err(|e| EngineError::Eval(e.to_string()))?;
            grads.insert(name.clone(), g);
        }
    }
    Ok(StepResult {
        loss: f64::from(loss),
        energy: step.energy.map(|_| f64::from(energy)),
        grads,
        relaxation_steps: step
            .relaxation_steps
            .map(|_| f64::from(steps) / world.size() as f64),
    })
}

/// Runs a relaxation loop on the interpreter, stopping at the first step whose energy is not
/// finite and naming the node to blame.
fn relax_watched<F: Real>(
    pc: &PcPrograms,
    looped: &LoopProgram,
    leaves: &Bindings<F>,
    steps: usize,
) -> Result<Bindings<F>, EngineError> {
    let mut diverged = None;
    let state = interp::run_loop(looped, leaves, steps, |step, env| {
        let finite = env
            .get("energy")
            .is_none_or(|e| e.iter().all(|x| x.is_finite()));
        if !finite {
            diverged = Some((step, first_non_finite_node(pc, env)));
        }
        finite
    })?;
    match diverged {
        Some((step, node)) => Err(EngineError::Diverged {
            what: node,
            relaxation_step: Some(step),
        }),
        None => Ok(state),
    }
}

/// An incremental schedule's step refused where a gradient is asked for.
fn no_gradient(programs: &Programs) -> Result<(), EngineError> {
    match programs.incremental() {
        Some(_) => Err(EngineError::Eval(schedule::NO_GRADIENT.to_string())),
        None => Ok(()),
    }
}

/// One training step of the incremental schedule on the interpreter: `looped` (from
/// [`Programs::incremental_loop`]) over the parameters, the optimiser's moments and the
/// batch. Returns the new parameters and moments (the `stored` names), or the node and the
/// relaxation step where it diverged.
fn incremental_step<F: Real>(
    pc: &PcPrograms,
    (looped, stored): (&LoopProgram, &[String]),
    params: &Arrays<F>,
    optimizer: &Optimizer<F>,
    batch: &Arrays<F>,
) -> Result<(Arrays<F>, Arrays<F>, StepReport), EngineError> {
    let mut leaves = merged(params, batch);
    if optimizer.moments().is_empty() {
        let shapes = schedule::learned_params(pc);
        leaves.extend(optimizer.initial_moments(&shapes));
    } else {
        leaves.extend(optimizer.moments().clone());
    }
    leaves.extend(optimizer.powers());
    let mut state = relax_watched(pc, looped, &leaves, looped.steps)?;
    let loss = scalar(&state, "loss");
    check_loss(loss)?;
    let (moments, new_params): (Arrays<F>, Arrays<F>) = stored
        .iter()
        .filter_map(|name| state.remove(name).map(|v| (name.clone(), v)))
        .partition(|(name, _)| name.starts_with(optim::STATE_PREFIX));
    let energy = Some(scalar(&state, "energy"));
    let report = StepReport {
        loss,
        energy,
        relaxation_steps: steps_run(&state),
    };
    Ok((new_params, moments, report))
}

/// The first parameter that is not finite everywhere, as a divergence.
fn non_finite_param<'a>(mut names: impl Iterator<Item = &'a str>) -> Result<(), EngineError> {
    match names.next() {
        Some(name) => Err(EngineError::Diverged {
            what: format!("parameter `{name}` after the update"),
            relaxation_step: None,
        }),
        None => Ok(()),
    }
}

/// The first of `params` that is not finite everywhere, as a divergence.
fn check_params<F: Real>(params: &Arrays<F>) -> Result<(), EngineError> {
    non_finite_param(
        params
            .iter()
            .filter(|(_, p)| !all_finite(p))
            .map(|(name, _)| name.as_str()),
    )
}

/// An engine's training state before `start`.
fn not_started() -> EngineError {
    EngineError::Eval("training has not been started".into())
}

impl<F: Element> Engine<F> for InterpEngine<F> {
    fn backend(&self) -> &'static str {
        "interp"
    }

    fn start(&mut self, params: Arrays<F>, optimizer: Optimizer<F>) -> Result<(), EngineError> {
        self.incremental = self.programs.incremental_loop(&optimizer);
        self.training = Some((params, optimizer));
        Ok(())
    }

    fn train_step(&mut self, batch: &Arrays<F>) -> Result<StepReport, EngineError> {
        let step = self.training.as_ref().map_or(0, |(_, o)| o.steps());
        let batch = &*noisy(&self.programs, batch, Some(step));
        if let (Some(pc), Some((looped, stored))) = (self.programs.incremental(), &self.incremental)
        {
            let (params, optimizer) = self.training.as_mut().ok_or_else(not_started)?;
            let (new_params, moments, report) =
                incremental_step(pc, (looped, stored), params, optimizer, batch)?;
            params.extend(new_params);
            if !moments.is_empty() {
                optimizer.set_moments(moments);
            }
            optimizer.count_steps(looped.steps);
            check_params(params)?;
            return Ok(report);
        }
        let (params, _) = self.training.as_ref().ok_or_else(not_started)?;
        let params_before = params.clone();
        let mut step = self.gradients(&params_before, batch);
        if self.world.is_distributed() {
            step = exchanged(&self.world, &params_before, step);
        }
        let step = step?;
        let (params, optimizer) = self.training.as_mut().ok_or_else(not_started)?;
        optimizer.step(params, &step.grads);
        check_params(params)?;
        Ok(StepReport {
            loss: step.loss,
            energy: step.energy,
            relaxation_steps: step.relaxation_steps,
        })
    }

    fn distribute(&mut self, world: World) -> Result<(), String> {
        self.world = distributable::<F>(&self.programs, world)?;
        Ok(())
    }

    fn world(&self) -> &World {
        &self.world
    }

    fn trained(&mut self) -> (Arrays<F>, Optimizer<F>) {
        self.training.clone().expect("training was started")
    }

    fn gradients(
        &mut self,
        params: &Arrays<F>,
        batch: &Arrays<F>,
    ) -> Result<StepResult<F>, EngineError> {
        no_gradient(&self.programs)?;
        let step = self.training.as_ref().map_or(0, |(_, o)| o.steps());
        let batch = &*noisy(&self.programs, batch, Some(step));
        let leaves = &merged(params, batch);
        if let Some(grad) = &self.programs.grad {
            let out = interp::eval_outputs(grad, leaves)?;
            let loss = scalar(&out, "loss");
            if !loss.is_finite() {
                return Err(EngineError::Diverged {
                    what: "the loss".into(),
                    relaxation_step: None,
                });
            }
            let grads: Arrays<F> = out
                .into_iter()
                .filter_map(|(k, v)| k.strip_prefix("grad.").map(|n| (n.to_string(), v)))
                .collect();
            check_loss(loss)?;
            return Ok(StepResult {
                loss,
                energy: None,
                grads,
                relaxation_steps: None,
            });
        }
        let pc = self
            .programs
            .pc
            .as_ref()
            .ok_or_else(|| EngineError::Eval("no programs".into()))?;
        if let Some(fused) = &self.programs.fused {
            let out = interp::eval_outputs(fused, leaves)?;
            let loss = scalar(&out, "loss");
            if check_loss(loss).is_err() || out.get("energy").is_some_and(|e| !all_finite(e)) {
                // Replay step by step to say where it went wrong.
                return Err(diverged(&self.programs, params, batch));
            }
            return learned(loss, out);
        }
        let relax = self.programs.relaxation().unwrap_or(&pc.relax);
        let state = relax_watched(pc, relax, leaves, self.programs.steps)?;
        let loss = scalar(&state, "loss");
        let relaxation_steps = steps_run(&state);
        let mut env = leaves.clone();
        env.extend(state);
        let result = learned(loss, interp::eval_outputs(&pc.learn, &env)?)?;
        Ok(StepResult {
            relaxation_steps,
            ..result
        })
    }

    fn evaluate(
        &mut self,
        params: &Arrays<F>,
        batch: &Arrays<F>,
    ) -> Result<(f64, Option<ArrayD<F>>), EngineError> {
        let batch = &*noisy(&self.programs, batch, None);
        let mut out = interp::eval_outputs(&self.programs.eval, &merged(params, batch))?;
        Ok((scalar(&out, "loss"), out.remove("prediction")))
    }
}

/// The step's result from the learning program's outputs: the negated updates are the
/// gradients; the energy is the relaxed state's.
fn learned<F: Real>(loss: f64, mut out: Bindings<F>) -> Result<StepResult<F>, EngineError> {
    let energy = out.remove("energy").map(|e| sum(&e));
    if energy.is_some_and(|e| !e.is_finite()) {
        return Err(EngineError::Diverged {
            what: "the energy".into(),
            relaxation_step: None,
        });
    }
    let grads: Arrays<F> = out
        .into_iter()
        .filter_map(|(k, mut v)| {
            let name = k.strip_prefix("update.")?.to_string();
            v.mapv_inplace(|x| -x);
            Some((name, v))
        })
        .collect();
    Ok(StepResult {
        loss,
        energy,
        grads,
        relaxation_steps: None,
    })
}

/// Replays a step that went non-finite on the interpreter, simulating every relaxation step,
/// to name the node and the step where it diverged.
fn diverged<F: Element>(programs: &Programs, params: &Arrays<F>, batch: &Arrays<F>) -> EngineError {
    match InterpEngine::<F>::new(programs.clone().simulated()).gradients(params, batch) {
        Err(e @ EngineError::Diverged { .. }) => e,
        // Finite on the interpreter (whose sums run in f64): say how large the step is.
        Ok(replayed) => EngineError::Diverged {
            what: format!(
                "a value of the step ({})",
                magnitudes(replayed.loss, replayed.energy, &replayed.grads, "gradient")
            ),
            relaxation_step: None,
        },
        Err(e) => replay_failed(&e),
    }
}

/// A step whose replay failed for another reason than divergence.
fn replay_failed(e: &EngineError) -> EngineError {
    EngineError::Diverged {
        what: format!("the relaxed state (the interpreter's replay of the step failed: {e})"),
        relaxation_step: None,
    }
}

/// A replayed step's loss, energy and largest `kind` (gradient, parameter) in words.
fn magnitudes<F: Real>(loss: f64, energy: Option<f64>, arrays: &Arrays<F>, kind: &str) -> String {
    let mut words = format!("the replay's loss is {loss:.3e}");
    if let Some(energy) = energy {
        words.push_str(&format!(", its energy {energy:.3e}"));
    }
    let largest = arrays
        .iter()
        .map(|(name, g)| {
            (
                name,
                g.iter().fold(0f64, |m, &x| m.max(Real::to_f64(x).abs())),
            )
        })
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((name, g)) = largest {
        words.push_str(&format!(", its largest {kind} {g:.3e} (of `{name}`)"));
    }
    words
}

/// The PC node to blame for a non-finite energy: the first whose carried unit (value, or
/// error in fixed and exact modes) is not finite, or else the one with the largest (its error
/// overflowed when squared).
pub fn first_non_finite_node<F: Real>(pc: &PcPrograms, state: &Bindings<F>) -> String {
    let unit = if pc.mode == crate::sema::Mode::Strict {
        "value"
    } else {
        "error"
    };
    // Each phase of the target relaxes its own units (state names with the phase's suffix).
    let phases = pc.target.phases();
    let values = pc.graph.nodes.iter().flat_map(|n| {
        phases.iter().filter_map(move |(suffix, _)| {
            let name = pc::carried_state(pc.mode, &format!("{}{suffix}", n.label));
            state.get(&name).map(|v| (n, v))
        })
    });
    let mut largest: Option<(&str, f64)> = None;
    for (node, v) in values {
        if !all_finite(v) {
            return format!("the {unit} of node `{}`", node.label);
        }
        let peak = v.iter().fold(0.0f64, |m, &x| m.max(Real::to_f64(x).abs()));
        if largest.is_none_or(|(_, p)| peak > p) {
            largest = Some((&node.label, peak));
        }
    }
    match largest {
        Some((label, peak)) => format!("the energy (node `{label}` has grown to |v| = {peak:.3e})"),
        None => "the energy".to_string(),
    }
}

/// The relaxation loop as the compiled backend runs it: without the per-step energy, which is
/// for the interpreter's replay of a diverged step (a healthy step needs only the final
/// state's, which the learning program reports).
pub fn compiled_relaxation(relax: &LoopProgram) -> LoopProgram {
    let mut relax = relax.clone();
    relax.retain_outputs(|name| name != "energy");
    relax
}

/// The compiled backend: every program compiled to native code with Cranelift, the whole
/// relaxation loop in one function. On a non-finite result it replays the step on the
/// interpreter to name the node and the relaxation step where it went wrong.
pub struct JitEngine<F: Element = f32> {
    programs: Programs,
    options: JitOptions,
    /// The programs of `gradients`, compiled at its first call.
    separate: Option<Separate>,
    /// The training step and the optimiser, from `start` on.
    training: Option<(JitStep, Optimizer<F>)>,
    eval: JitProgram,
    world: World,
}

/// Training steps with fewer floating-point operations than this run on one thread unless
/// the threads were asked for.
pub const SMALL_STEP_FLOPS: u64 = 30_000_000;

/// The gradient programs compiled one by one, for `gradients`.
struct Separate {
    grad: Option<JitProgram>,
    relax: Option<JitLoop>,
    fused: Option<JitProgram>,
    learn: Option<JitProgram>,
}

impl Separate {
    fn compile(programs: &Programs, options: &JitOptions) -> Result<Self, JitError> {
        let compile = |p: &Program| JitProgram::compile(p, options);
        let grad = programs.grad.as_ref().map(compile).transpose()?;
        let fused = programs.fused.as_ref().map(compile).transpose()?;
        let (relax, learn) = match &programs.pc {
            Some(_) if fused.is_some() => (None, None),
            Some(pc) => (
                Some(JitLoop::compile(
                    &compiled_relaxation(programs.relaxation().unwrap_or(&pc.relax)),
                    options,
                )?),
                Some(compile(&pc.learn)?),
            ),
            None => (None, None),
        };
        Ok(Separate {
            grad,
            relax,
            fused,
            learn,
        })
    }
}

impl<F: Element> JitEngine<F> {
    /// The engine of `programs`, compiled for `F` whatever `options.dtype` says.
    pub fn new(programs: Programs, options: &JitOptions) -> Result<Self, JitError> {
        let mut options = JitOptions {
            dtype: F::DTYPE,
            ..options.clone()
        };
        // A small step loses more to handing work between cores than it gains (measured by
        // scripts/threads.sh: the RNN's and the batch-of-one MLP's steps are faster alone).
        if options.auto_threads && programs.step_flops() < SMALL_STEP_FLOPS {
            options.threads = 1;
        }
        let eval = JitProgram::compile(&programs.eval, &options)?;
        Ok(JitEngine {
            programs,
            options,
            separate: None,
            training: None,
            eval,
            world: World::single(),
        })
    }

    /// The training step as one function: the gradient, a guard on the loss (and energy),
    /// and `optimizer`'s update, with the parameters and the optimiser's moments resident.
    pub fn compile_step(&self, optimizer: &Optimizer<F>) -> Result<JitStep, JitError> {
        let programs = &self.programs;
        if let Some((looped, stored)) = programs.incremental_loop(optimizer) {
            // The loop learns as it relaxes; its final parameters and moments go home once
            // the loss and the energy are known to be finite.
            let stages = [
                Stage::Loop(&looped),
                Stage::Guard(vec!["loss".to_string(), "energy".to_string()]),
                Stage::Store(stored.clone()),
            ];
            let resident = stored
                .into_iter()
                .filter(|n| n.starts_with(optim::STATE_PREFIX))
                .collect();
            return JitStep::compile(&stages, &resident, programs.steps, &self.options);
        }
        let gradient_named = |p: &Program, prefix: &str| {
            let mut p = p.clone();
            for o in &mut p.outputs {
                if let Some(name) = o.name.strip_prefix(prefix) {
                    o.name = optim::gradient_state(name);
                }
            }
            p
        };
        let (gradient, relax, ascent) = match (&programs.grad, &programs.fused, &programs.pc) {
            (Some(grad), _, _) => (gradient_named(grad, "grad."), None, false),
            (_, Some(fused), _) => (gradient_named(fused, "update."), None, true),
            (_, _, Some(pc)) => {
                // What the learning program would compute again is the loop prologue's.
                let mut relax = compiled_relaxation(programs.relaxation().unwrap_or(&pc.relax));
                let mut learn = gradient_named(&pc.learn, "update.");
                crate::opt::hoist::hoist_epilogue(&mut relax, &mut learn);
                (learn, Some(relax), true)
            }
            _ => return Err(JitError::Codegen("no programs".into())),
        };
        let params: Vec<(String, Shape)> = gradient
            .outputs
            .iter()
            .filter_map(|o| {
                let name = o.name.strip_prefix("gradient.")?;
                Some((name.to_string(), gradient.shape(o.value).clone()))
            })
            .collect();
        let update = optimizer.update_program(&params, ascent);
        let mut guard = vec!["loss".to_string()];
        if programs.pc.is_some() {
            guard.push("energy".to_string());
        }
        let mut stages = Vec::new();
        if let Some(relax) = &relax {
            stages.push(Stage::Loop(relax));
        }
        stages.push(Stage::Run(&gradient));
        if self.world.is_distributed() {
            // Every process's updates, loss and energy summed, before any of them is guarded
            // or applied: a shard that diverged makes every process's step fail.
            let mut exchanged: Vec<String> = params
                .iter()
                .map(|(name, _)| optim::gradient_state(name))
                .collect();
            exchanged.extend(guard.iter().cloned());
            exchanged.push(crate::ir::STEPS_RUN.to_string());
            stages.push(Stage::Exchange(exchanged, self.world.exchange_fn()));
        }
        stages.push(Stage::Guard(guard));
        stages.push(Stage::Run(&update));
        let resident = optimizer.initial_moments(&params).into_keys().collect();
        JitStep::compile(&stages, &resident, programs.steps, &self.options)
    }
}

impl From<JitError> for EngineError {
    fn from(e: JitError) -> Self {
        EngineError::Eval(e.to_string())
    }
}

impl<F: Element> Engine<F> for JitEngine<F> {
    fn backend(&self) -> &'static str {
        "jit"
    }

    fn start(&mut self, params: Arrays<F>, optimizer: Optimizer<F>) -> Result<(), EngineError> {
        let mut step = self.compile_step(&optimizer)?;
        let mut resident = params;
        let shapes: Vec<(String, Shape)> = resident
            .iter()
            .map(|(k, v)| (k.clone(), Shape::new(v.shape())))
            .collect();
        let moments = if optimizer.moments().is_empty() {
            optimizer.initial_moments(&shapes)
        } else {
            optimizer.moments().clone()
        };
        resident.extend(moments);
        step.load(&resident)?;
        self.training = Some((step, optimizer));
        Ok(())
    }

    fn train_step(&mut self, batch: &Arrays<F>) -> Result<StepReport, EngineError> {
        let steps = self.training.as_ref().map_or(0, |(_, o)| o.steps());
        let batch = &*noisy(&self.programs, batch, Some(steps));
        let (step, optimizer) = self.training.as_mut().ok_or_else(not_started)?;
        let incremental = self.programs.incremental().is_some();
        let scalars = if incremental {
            optimizer.powers()
        } else {
            optimizer.corrections()
        };
        // The batch is bound where it is (not copied into a merged map first: at a long
        // sequence that copy was a tenth of the step).
        match step.run(&[batch, &scalars.into_iter().collect()]) {
            Ok(()) => {}
            Err(JitError::Diverged)
                if self.world.is_distributed()
                    && !self.world.diverged_ranks().contains(&self.world.rank()) =>
            {
                return Err(diverged_elsewhere(&self.world));
            }
            Err(JitError::Diverged) => {
                // Nothing was updated: replay the step on the interpreter to say where.
                let (moments, params): (Arrays<F>, Arrays<F>) = step
                    .resident()
                    .into_iter()
                    .partition(|(k, _)| k.starts_with(optim::STATE_PREFIX));
                if let (Some(pc), Some((looped, stored))) = (
                    self.programs.incremental(),
                    self.programs.incremental_loop(optimizer),
                ) {
                    let mut optimizer = optimizer.clone();
                    optimizer.set_moments(moments);
                    let replayed =
                        incremental_step(pc, (&looped, &stored), &params, &optimizer, batch);
                    return Err(match replayed {
                        Err(e @ EngineError::Diverged { .. }) => e,
                        // Finite on the interpreter (whose sums run in f64).
                        Ok((params, _, report)) => EngineError::Diverged {
                            what: format!(
                                "a value of the step ({})",
                                magnitudes(report.loss, report.energy, &params, "parameter")
                            ),
                            relaxation_step: None,
                        },
                        Err(e) => replay_failed(&e),
                    });
                }
                return Err(diverged(&self.programs, &params, batch));
            }
            Err(JitError::Interrupted) => return Err(EngineError::Interrupted),
            Err(e) => return Err(e.into()),
        }
        if incremental {
            optimizer.count_steps(self.programs.steps);
        } else {
            optimizer.count_step();
        }
        non_finite_param(step.non_finite().into_iter())?;
        let loss = step.scalar("loss").unwrap_or(f64::NAN);
        let energy = step.scalar("energy");
        let relaxation_steps = step
            .scalar(crate::ir::STEPS_RUN)
            .map(|t| t / self.world.size() as f64);
        Ok(StepReport {
            loss,
            energy,
            relaxation_steps,
        })
    }

    fn step_cost(&self) -> Option<crate::jit::StepCost> {
        self.training.as_ref().map(|(step, _)| step.cost())
    }

    fn sharing_counts(&self) -> Option<(usize, usize)> {
        self.training.as_ref()?.0.sharing_counts()
    }

    fn kernels(&self) -> Vec<crate::jit::KernelInfo> {
        self.training
            .as_ref()
            .map_or(Vec::new(), |(step, _)| step.kernels().to_vec())
    }

    fn distribute(&mut self, world: World) -> Result<(), String> {
        self.world = distributable::<F>(&self.programs, world)?;
        Ok(())
    }

    fn world(&self) -> &World {
        &self.world
    }

    fn trained(&mut self) -> (Arrays<F>, Optimizer<F>) {
        let (step, optimizer) = self.training.as_mut().expect("training was started");
        let (moments, params): (Arrays<F>, Arrays<F>) = step
            .resident()
            .into_iter()
            .partition(|(k, _)| k.starts_with(optim::STATE_PREFIX));
        optimizer.set_moments(moments);
        (params, optimizer.clone())
    }

    fn gradients(
        &mut self,
        params: &Arrays<F>,
        batch: &Arrays<F>,
    ) -> Result<StepResult<F>, EngineError> {
        no_gradient(&self.programs)?;
        let step = self.training.as_ref().map_or(0, |(_, o)| o.steps());
        let batch = &*noisy(&self.programs, batch, Some(step));
        if self.separate.is_none() {
            self.separate = Some(Separate::compile(&self.programs, &self.options)?);
        }
        let Some(separate) = &mut self.separate else {
            return Err(EngineError::Eval("no programs".into()));
        };
        if let Some(grad) = &mut separate.grad {
            let out = grad.run_layered(&[batch, params])?;
            let loss = scalar(&out, "loss");
            let grads: Arrays<F> = out
                .into_iter()
                .filter_map(|(k, v)| k.strip_prefix("grad.").map(|n| (n.to_string(), v)))
                .collect();
            if check_loss(loss).is_err() {
                return Err(diverged(&self.programs, params, batch));
            }
            return Ok(StepResult {
                loss,
                energy: None,
                grads,
                relaxation_steps: None,
            });
        }
        if let Some(fused) = &mut separate.fused {
            let out = fused.run_layered(&[batch, params])?;
            let loss = scalar(&out, "loss");
            if check_loss(loss).is_err() || out.get("energy").is_some_and(|e| !all_finite(e)) {
                return Err(diverged(&self.programs, params, batch));
            }
            return learned(loss, out);
        }
        let state = match &mut separate.relax {
            Some(relax) => relax.run(&merged(params, batch), self.programs.steps)?,
            None => return Err(EngineError::Eval("no programs".into())),
        };
        let Some(learn) = &mut separate.learn else {
            return Err(EngineError::Eval("no programs".into()));
        };
        let loss = scalar(&state, "loss");
        if check_loss(loss).is_err() {
            return Err(diverged(&self.programs, params, batch));
        }
        let result = learned(loss, learn.run_layered(&[&state, batch, params])?)
            .map_err(|_| diverged(&self.programs, params, batch))?;
        Ok(StepResult {
            relaxation_steps: steps_run(&state),
            ..result
        })
    }

    fn evaluate(
        &mut self,
        params: &Arrays<F>,
        batch: &Arrays<F>,
    ) -> Result<(f64, Option<ArrayD<F>>), EngineError> {
        let batch = &*noisy(&self.programs, batch, None);
        let mut out = self.eval.run_layered(&[batch, params])?;
        Ok((scalar(&out, "loss"), out.remove("prediction")))
    }
}
