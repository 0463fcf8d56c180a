//! Predictive coding against backprop on one batch: the convergence trace of PC's weight
//! updates to autodiff's gradients, per parameter, as the relaxation runs.

use crate::autodiff;
use crate::interp::{self, Bindings, EvalError, Real};
use crate::ir::Program;
use crate::pc::{self, PcError, PcPrograms};
use crate::sema::InferenceConfig;
use std::fmt;

/// How close PC's update for one parameter is to backprop's gradient after some steps.
#[derive(Clone, Debug, PartialEq)]
pub struct TracePoint {
    pub step: usize,
    /// ‖g_pc − g_bp‖ / ‖g_bp‖ (or ‖g_pc‖ when ‖g_bp‖ = 0), with g_pc = −Δθ.
    pub rel_err: f64,
    pub cosine: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamTrace {
    pub name: String,
    pub trace: Vec<TracePoint>,
}

/// The result of a gradient check.
#[derive(Clone, Debug)]
pub struct Report {
    pub programs: PcPrograms,
    pub steps: usize,
    pub loss: f64,
    pub params: Vec<ParamTrace>,
    /// The energy after each step (index = step; 0 is the feedforward state).
    pub energy: Vec<f64>,
    /// The messages PC sends to each input after the last step, with backprop's −∂L/∂x.
    pub inputs: Vec<(String, f64)>,
}

impl Report {
    /// The worst relative error over parameters at the last step.
    pub fn max_rel_err(&self) -> f64 {
        self.params
            .iter()
            .filter_map(|p| p.trace.last())
            .map(|t| t.rel_err)
            .fold(0.0, f64::max)
    }
}

#[derive(Debug)]
pub enum CheckError {
    Transform(PcError),
    Autodiff(autodiff::AutodiffError),
    Eval(EvalError),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Transform(e) => write!(f, "{e}"),
            CheckError::Autodiff(e) => write!(f, "{e}"),
            CheckError::Eval(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CheckError {}

impl From<EvalError> for CheckError {
    fn from(e: EvalError) -> Self {
        CheckError::Eval(e)
    }
}

/// The steps at which the trace is sampled: every step up to 10, then about ten per decade,
/// always ending at `steps`.
pub fn checkpoints(steps: usize) -> Vec<usize> {
    let mut out: Vec<usize> = (1..=steps.min(10)).collect();
    let mut x = 10.0f64;
    while (x as usize) < steps {
        x *= 10f64.powf(0.1);
        let s = (x.round() as usize).min(steps);
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
    if out.last() != Some(&steps) && steps > 0 {
        out.push(steps);
    }
    out
}

fn norm(xs: impl Iterator<Item = f64>) -> f64 {
    xs.map(|x| x * x).sum::<f64>().sqrt()
}

/// Compares PC's updates after `steps` relaxation steps with backprop's gradients on one batch
/// (`leaves` holds parameters, inputs and targets), in the interpreter's f64 mode.
pub fn run<F: Real>(
    forward: &Program,
    inference: &InferenceConfig,
    steps: Option<usize>,
    leaves: &Bindings<F>,
) -> Result<Report, CheckError> {
    let programs = pc::transform(forward, inference).map_err(CheckError::Transform)?;
    let steps = steps.unwrap_or(programs.relax.steps);
    let grad = autodiff::grad_program(forward).map_err(CheckError::Autodiff)?;
    let bp = interp::eval_outputs(&grad, leaves)?;
    let loss = bp
        .get("loss")
        .map_or(f64::NAN, |l| l.iter().map(|&x| Real::to_f64(x)).sum());
    let names: Vec<String> = forward
        .leaves(crate::ir::LeafKind::Param)
        .into_iter()
        .map(|(_, n)| n.to_string())
        .collect();
    let mut marks = vec![0];
    marks.extend(checkpoints(steps));
    let mut params: Vec<ParamTrace> = names
        .iter()
        .map(|n| ParamTrace {
            name: n.clone(),
            trace: Vec::new(),
        })
        .collect();
    let mut energy = Vec::with_capacity(steps + 1);
    let mut failure = None;
    let mut last_learn = None;
    interp::run_loop(&programs.relax, leaves, steps, |step, env| {
        if let Some(e) = env.get("energy").filter(|_| step > 0) {
            energy.push(e.iter().map(|&x| Real::to_f64(x)).sum());
        }
        if !marks.contains(&step) {
            return true;
        }
        let learned = match interp::eval_outputs(&programs.learn, env) {
            Ok(l) => l,
            Err(e) => {
                failure = Some(e);
                return false;
            }
        };
        if step == 0 {
            energy.push(
                learned
                    .get("energy")
                    .map_or(0.0, |e| e.iter().map(|&x| Real::to_f64(x)).sum()),
            );
        }
        for p in &mut params {
            let (Some(update), Some(g)) = (
                learned.get(&format!("update.{}", p.name)),
                bp.get(&format!("grad.{}", p.name)),
            ) else {
                continue;
            };
            // PC's gradient estimate is the negated update.
            let diff = norm(
                update
                    .iter()
                    .zip(g.iter())
                    .map(|(&u, &b)| -Real::to_f64(u) - Real::to_f64(b)),
            );
            let gn = norm(g.iter().map(|&b| Real::to_f64(b)));
            let un = norm(update.iter().map(|&u| Real::to_f64(u)));
            let dot: f64 = update
                .iter()
                .zip(g.iter())
                .map(|(&u, &b)| -Real::to_f64(u) * Real::to_f64(b))
                .sum();
            let rel_err = if gn > 0.0 { diff / gn } else { un };
            let cosine = if gn > 0.0 && un > 0.0 {
                dot / (gn * un)
            } else if gn == un {
                1.0
            } else {
                0.0
            };
            p.trace.push(TracePoint {
                step,
                rel_err,
                cosine,
            });
        }
        if step == steps {
            last_learn = Some(learned);
        }
        true
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    let inputs = last_learn
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("message.")
                        .map(|n| (n.to_string(), v.iter().map(|&x| Real::to_f64(x)).sum()))
                })
                .collect()
        })
        .unwrap_or_default();
    params.retain(|p| !p.trace.is_empty());
    Ok(Report {
        programs,
        steps,
        loss,
        params,
        energy,
        inputs,
    })
}
