//! Predictive coding against backprop on one batch: the convergence trace of PC's weight
//! updates to autodiff's gradients, per parameter, as the relaxation runs.

use crate::autodiff;
use crate::interp::{self, Bindings, EvalError, Real};
use crate::ir::{LeafKind, Program};
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
    /// The messages PC sends to each input (Σ over its children), compared with backprop's
    /// −∂L/∂x as the parameters are.
    pub inputs: Vec<ParamTrace>,
    /// The step at which a stopping tolerance (`tol`) ended the relaxation, if it did.
    pub stopped_at: Option<usize>,
}

impl Report {
    /// The worst relative error at the last step, over the parameters' updates and the
    /// messages to the inputs.
    pub fn max_rel_err(&self) -> f64 {
        self.params
            .iter()
            .chain(&self.inputs)
            .filter_map(|p| p.trace.last())
            .map(|t| t.rel_err)
            // A NaN (a relaxation that diverged) is the worst error, not one to skip.
            .fold(0.0, |worst, e| {
                if e.is_nan() || worst.is_nan() {
                    f64::NAN
                } else {
                    worst.max(e)
                }
            })
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

/// The steps at which the trace is sampled: every step up to 100, then about twenty per
/// decade, always ending at `steps`.
pub fn checkpoints(steps: usize) -> Vec<usize> {
    let mut out: Vec<usize> = (1..=steps.min(100)).collect();
    let mut x = 100.0f64;
    while (x as usize) < steps {
        x *= 10f64.powf(0.05);
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

/// PC's gradient estimate (the negated update or message) against backprop's gradient.
fn compare<F: Real>(
    update: &interp::Tensor<F>,
    grad: &interp::Tensor<F>,
    step: usize,
) -> TracePoint {
    let pc = || update.iter().map(|&u| -Real::to_f64(u));
    let bp = || grad.iter().map(|&b| Real::to_f64(b));
    let diff = norm(pc().zip(bp()).map(|(u, b)| u - b));
    let (pn, gn) = (norm(pc()), norm(bp()));
    let dot: f64 = pc().zip(bp()).map(|(u, b)| u * b).sum();
    let rel_err = if gn > 0.0 { diff / gn } else { pn };
    let cosine = if gn > 0.0 && pn > 0.0 {
        dot / (gn * pn)
    } else if gn == pn {
        1.0
    } else {
        0.0
    };
    TracePoint {
        step,
        rel_err,
        cosine,
    }
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
    if programs.schedule == crate::sema::Schedule::Incremental {
        return Err(CheckError::Transform(PcError::Settings(
            crate::train::schedule::NO_GRADIENT.to_string(),
        )));
    }
    let steps = steps.unwrap_or(programs.relax.steps);
    let grad = autodiff::gradient_program(forward, &[LeafKind::Param, LeafKind::Input])
        .map_err(CheckError::Autodiff)?;
    let bp = interp::eval_outputs(&grad, leaves)?;
    let loss = bp
        .get("loss")
        .map_or(f64::NAN, |l| l.iter().map(|&x| Real::to_f64(x)).sum());
    let names = |kind: LeafKind| -> Vec<ParamTrace> {
        forward
            .leaves(kind)
            .into_iter()
            .map(|(_, n)| ParamTrace {
                name: n.to_string(),
                trace: Vec::new(),
            })
            .collect()
    };
    let mut marks = vec![0];
    marks.extend(checkpoints(steps));
    let mut params = names(LeafKind::Param);
    let mut inputs = names(LeafKind::Input);
    let mut energy = Vec::with_capacity(steps + 1);
    let mut failure = None;
    let mut stopped_at = None;
    interp::run_loop(&programs.relax, leaves, steps, |step, env| {
        if let Some(e) = env.get("energy").filter(|_| step > 0) {
            energy.push(e.iter().map(|&x| Real::to_f64(x)).sum());
        }
        // The step at which the loop's stopping test ends it is the last one compared.
        let stops = step > 0 && step < steps && interp::stops(&programs.relax, env);
        if stops {
            stopped_at = Some(step);
        }
        if !marks.contains(&step) && !stops {
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
        for (p, prefix) in params
            .iter_mut()
            .map(|p| (p, "update."))
            .chain(inputs.iter_mut().map(|p| (p, "message.")))
        {
            let (Some(update), Some(g)) = (
                learned.get(&format!("{prefix}{}", p.name)),
                bp.get(&format!("grad.{}", p.name)),
            ) else {
                continue;
            };
            p.trace.push(compare(update, g, step));
        }
        true
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    params.retain(|p| !p.trace.is_empty());
    inputs.retain(|p| !p.trace.is_empty());
    Ok(Report {
        programs,
        steps,
        loss,
        params,
        energy,
        inputs,
        stopped_at,
    })
}
