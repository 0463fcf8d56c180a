//! Engines: what one training step computes, behind one interface, for each backend. An engine
//! owns the compiled programs of a model — backprop's gradient program, or predictive coding's
//! relaxation and learning programs — and the evaluation program, and turns a batch and the
//! parameters into a loss and a gradient.

use crate::autodiff;
use crate::interp::{self, Bindings, EvalError};
use crate::ir::{LeafKind, Program};
use crate::jit::{JitError, JitLoop, JitOptions, JitProgram};
use crate::npz::Arrays;
use crate::pc::{self, PcPrograms};
use crate::sema::{InferenceConfig, Method};
use ndarray::ArrayD;
use std::fmt;

/// The outcome of one step's gradient computation.
#[derive(Clone, Debug)]
pub struct StepResult {
    /// The loss at the feedforward pass.
    pub loss: f64,
    /// The relaxation's final energy (predictive coding only).
    pub energy: Option<f64>,
    /// ∂L/∂θ (backprop) or −Δθ (predictive coding), by parameter.
    pub grads: Arrays,
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
        }
    }
}

impl From<EvalError> for EngineError {
    fn from(e: EvalError) -> Self {
        EngineError::Eval(e.to_string())
    }
}

/// One training step's computation for one backend.
pub trait Engine {
    /// The backend's name, as `--backend` spells it.
    fn backend(&self) -> &'static str;
    /// Loss and gradients on one batch (inputs and targets by name).
    fn gradients(&mut self, params: &Arrays, batch: &Arrays) -> Result<StepResult, EngineError>;
    /// Loss and, where the model has one prediction shaped like its target, the prediction.
    fn evaluate(
        &mut self,
        params: &Arrays,
        batch: &Arrays,
    ) -> Result<(f64, Option<ArrayD<f32>>), EngineError>;
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
            Some(p) => pc::solve(forward, &p.graph, p.mode, p.rate, steps)
                .map_err(|e| e.to_string())?
                .map(|solved| pc::fuse_step(&solved, &p.learn)),
            None => None,
        };
        Ok(Programs {
            fused,
            method,
            grad,
            pc,
            steps,
            eval: eval_program(forward, inference),
        })
    }
}

impl Programs {
    /// The same programs without the closed form: every relaxation step is run.
    pub fn simulated(mut self) -> Self {
        self.fused = None;
        self
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
        let graph = pc::analyse(forward, inference);
        let candidates: Vec<_> = graph
            .nodes
            .iter()
            .filter(|n| n.role == pc::Role::Output && n.shape == *forward.shape(*target))
            .collect();
        if let [one] = candidates.as_slice() {
            eval.set_output("prediction", one.value);
        }
    }
    eval
}

/// Parameters and a batch in one map (the interpreter binds leaves from one map).
fn merged(params: &Arrays, batch: &Arrays) -> Bindings<f32> {
    let mut leaves = params.clone();
    leaves.extend(batch.iter().map(|(k, v)| (k.clone(), v.clone())));
    leaves
}

fn scalar(b: &Bindings<f32>, name: &str) -> f64 {
    b.get(name)
        .map_or(f64::NAN, |t| t.iter().map(|&x| f64::from(x)).sum())
}

fn all_finite(a: &ArrayD<f32>) -> bool {
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

/// The reference backend: the interpreter.
pub struct InterpEngine {
    programs: Programs,
}

impl InterpEngine {
    pub fn new(programs: Programs) -> Self {
        InterpEngine { programs }
    }
}

impl Engine for InterpEngine {
    fn backend(&self) -> &'static str {
        "interp"
    }

    fn gradients(&mut self, params: &Arrays, batch: &Arrays) -> Result<StepResult, EngineError> {
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
            let grads: Arrays = out
                .into_iter()
                .filter_map(|(k, v)| k.strip_prefix("grad.").map(|n| (n.to_string(), v)))
                .collect();
            check_loss(loss)?;
            return Ok(StepResult {
                loss,
                energy: None,
                grads,
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
        let mut diverged = None;
        let state = interp::run_loop(&pc.relax, leaves, self.programs.steps, |step, env| {
            let finite = env
                .get("energy")
                .is_none_or(|e| e.iter().all(|x| x.is_finite()));
            if !finite {
                diverged = Some((step, first_non_finite_node(pc, env)));
            }
            finite
        })?;
        if let Some((step, node)) = diverged {
            return Err(EngineError::Diverged {
                what: node,
                relaxation_step: Some(step),
            });
        }
        let loss = scalar(&state, "loss");
        let mut env = leaves.clone();
        env.extend(state);
        learned(loss, interp::eval_outputs(&pc.learn, &env)?)
    }

    fn evaluate(
        &mut self,
        params: &Arrays,
        batch: &Arrays,
    ) -> Result<(f64, Option<ArrayD<f32>>), EngineError> {
        let mut out = interp::eval_outputs(&self.programs.eval, &merged(params, batch))?;
        Ok((scalar(&out, "loss"), out.remove("prediction")))
    }
}

/// The step's result from the learning program's outputs: the negated updates are the
/// gradients; the energy is the relaxed state's.
fn learned(loss: f64, mut out: Bindings<f32>) -> Result<StepResult, EngineError> {
    let energy = out
        .remove("energy")
        .map(|e| e.iter().map(|&x| f64::from(x)).sum::<f64>());
    if energy.is_some_and(|e| !e.is_finite()) {
        return Err(EngineError::Diverged {
            what: "the energy".into(),
            relaxation_step: None,
        });
    }
    let grads: Arrays = out
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
    })
}

/// Replays a step that went non-finite on the interpreter, simulating every relaxation step,
/// to name the node and the step where it diverged.
fn diverged(programs: &Programs, params: &Arrays, batch: &Arrays) -> EngineError {
    match InterpEngine::new(programs.clone().simulated()).gradients(params, batch) {
        Err(e @ EngineError::Diverged { .. }) => e,
        _ => EngineError::Diverged {
            what: "the relaxed state".into(),
            relaxation_step: None,
        },
    }
}

/// The PC node to blame for a non-finite energy: the first whose carried unit (value, or
/// error in fixed and exact modes) is not finite, or else the one with the largest (its error
/// overflowed when squared).
pub fn first_non_finite_node(pc: &PcPrograms, state: &Bindings<f32>) -> String {
    let unit = if pc.mode == crate::sema::Mode::Strict {
        "value"
    } else {
        "error"
    };
    let values = pc.graph.nodes.iter().filter_map(|n| {
        state
            .get(&pc::carried_state(pc.mode, &n.label))
            .map(|v| (n, v))
    });
    let mut largest: Option<(&str, f32)> = None;
    for (node, v) in values {
        if !all_finite(v) {
            return format!("the {unit} of node `{}`", node.label);
        }
        let peak = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
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
pub fn compiled_relaxation(pc: &PcPrograms) -> crate::ir::LoopProgram {
    let mut relax = pc.relax.clone();
    relax.retain_outputs(|name| name != "energy");
    relax
}

/// The compiled backend: every program compiled to native code with Cranelift, the whole
/// relaxation loop in one function. On a non-finite result it replays the step on the
/// interpreter to name the node and the relaxation step where it went wrong.
pub struct JitEngine {
    programs: Programs,
    grad: Option<JitProgram>,
    relax: Option<JitLoop>,
    fused: Option<JitProgram>,
    learn: Option<JitProgram>,
    eval: JitProgram,
}

impl JitEngine {
    pub fn new(programs: Programs, options: &JitOptions) -> Result<Self, JitError> {
        let compile = |p: &Program| JitProgram::compile(p, options);
        let grad = programs.grad.as_ref().map(compile).transpose()?;
        let fused = programs.fused.as_ref().map(compile).transpose()?;
        let (relax, learn) = match &programs.pc {
            Some(_) if fused.is_some() => (None, None),
            Some(pc) => (
                Some(JitLoop::compile(&compiled_relaxation(pc), options)?),
                Some(compile(&pc.learn)?),
            ),
            None => (None, None),
        };
        let eval = compile(&programs.eval)?;
        Ok(JitEngine {
            programs,
            grad,
            relax,
            fused,
            learn,
            eval,
        })
    }
}

impl From<JitError> for EngineError {
    fn from(e: JitError) -> Self {
        EngineError::Eval(e.to_string())
    }
}

impl Engine for JitEngine {
    fn backend(&self) -> &'static str {
        "jit"
    }

    fn gradients(&mut self, params: &Arrays, batch: &Arrays) -> Result<StepResult, EngineError> {
        if let Some(grad) = &mut self.grad {
            let out = grad.run_layered(&[batch, params])?;
            let loss = scalar(&out, "loss");
            let grads: Arrays = out
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
            });
        }
        if let Some(fused) = &mut self.fused {
            let out = fused.run_layered(&[batch, params])?;
            let loss = scalar(&out, "loss");
            if check_loss(loss).is_err() || out.get("energy").is_some_and(|e| !all_finite(e)) {
                return Err(diverged(&self.programs, params, batch));
            }
            return learned(loss, out);
        }
        let state = match &mut self.relax {
            Some(relax) => relax.run(&merged(params, batch), self.programs.steps)?,
            None => return Err(EngineError::Eval("no programs".into())),
        };
        let Some(learn) = &mut self.learn else {
            return Err(EngineError::Eval("no programs".into()));
        };
        let loss = scalar(&state, "loss");
        if check_loss(loss).is_err() {
            return Err(diverged(&self.programs, params, batch));
        }
        learned(loss, learn.run_layered(&[&state, batch, params])?)
            .map_err(|_| diverged(&self.programs, params, batch))
    }

    fn evaluate(
        &mut self,
        params: &Arrays,
        batch: &Arrays,
    ) -> Result<(f64, Option<ArrayD<f32>>), EngineError> {
        let mut out = self.eval.run_layered(&[batch, params])?;
        Ok((scalar(&out, "loss"), out.remove("prediction")))
    }
}
