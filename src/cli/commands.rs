//! The subcommands that compute: `grad` and `gradcheck`.

use super::{
    compile_to_run, emit, fail, BackendFlags, CmdResult, DtypeFlag, MethodArg, ProblemFlags,
    RelaxFlags, Reported,
};
use crate::gradcheck::{self, Report};
use crate::ir::LeafKind;
use crate::npz::{self, Arrays};
use crate::sema::{CompileOptions, Compiled, Dtype};
use crate::train::engine::{Element, Programs};
use crate::train::{batch, init};
use std::path::Path;

/// Parameters and one batch for a one-batch computation (see `ProblemFlags`), in `F`: arrays
/// read from files in their own type converted, initial parameters and data widened.
pub(super) fn problem<F: Element>(
    file: &Path,
    compiled: &Compiled,
    flags: &ProblemFlags,
) -> Result<Arrays<F>, Reported> {
    let forward = &compiled.forward;
    let seed = flags
        .seed
        .or(compiled.train.as_ref().map(|t| t.seed))
        .unwrap_or(0);
    let mut leaves = match &flags.params {
        Some(path) => {
            let arrays = npz::read_as::<F>(path).map_err(fail)?;
            batch::check_arrays(forward, &[LeafKind::Param], &arrays, path).map_err(fail)?;
            arrays
        }
        None => F::from_f32(init::init_params(forward, seed)),
    };
    let data = match &flags.inputs {
        Some(path) => {
            let arrays = npz::read_as::<F>(path).map_err(fail)?;
            batch::check_arrays(forward, &[LeafKind::Input, LeafKind::Target], &arrays, path)
                .map_err(fail)?;
            if !flags.allow_nonfinite {
                batch::check_finite(&arrays, path).map_err(fail)?;
            }
            arrays
        }
        None => {
            let (batch, warning) =
                crate::model::default_batch(file, compiled, seed, flags.allow_nonfinite);
            if let Some(w) = warning {
                eprintln!("warning: {w}");
            }
            F::from_f32(batch)
        }
    };
    leaves.extend(data);
    // Dropout's masks as the first training step draws them (unless the inputs give them).
    for (name, mask) in F::from_f32(batch::noise(forward, Some(0))) {
        leaves.entry(name).or_insert(mask);
    }
    Ok(leaves)
}

/// What `pcg grad` computes: the method, where it runs and where the result goes.
pub(super) struct GradRun<'a> {
    pub method: MethodArg,
    pub backend: &'a BackendFlags,
    pub dtype: &'a DtypeFlag,
    pub out: Option<&'a Path>,
}

pub(super) fn grad(
    file: &Path,
    run: GradRun,
    flags: &ProblemFlags,
    relax: &RelaxFlags,
    options: &CompileOptions,
) -> CmdResult {
    let compiled = compile_to_run(file, options)?;
    match run.dtype.resolve(compiled.train.as_ref()) {
        Dtype::F32 => grad_in::<f32>(file, &compiled, run, flags, relax),
        Dtype::F64 => grad_in::<f64>(file, &compiled, run, flags, relax),
    }
}

/// `pcg grad` in element type `F`.
fn grad_in<F: Element>(
    file: &Path,
    compiled: &Compiled,
    GradRun {
        method,
        backend,
        out,
        ..
    }: GradRun,
    flags: &ProblemFlags,
    relax: &RelaxFlags,
) -> CmdResult {
    let leaves = problem::<F>(file, compiled, flags)?;
    let inference = relax.apply(compiled.train.as_ref().map(|t| &t.inference))?;
    let programs =
        Programs::build(&compiled.forward, method.into(), &inference, relax.steps).map_err(fail)?;
    let mut engine = backend.engine::<F>(programs).map_err(fail)?;
    // For PC the engine's gradient is the negated update, comparable with backprop's.
    let step = engine.gradients(&leaves, &Arrays::new()).map_err(fail)?;
    emit(&format!("loss={}\n", step.loss));
    match out {
        Some(out) => npz::write(out, &step.grads).map_err(fail)?,
        // Without a file, one line per parameter: its gradient's size and largest element.
        None => {
            for (name, g) in &step.grads {
                let g = g.mapv(crate::interp::Real::to_f64);
                let norm = g.iter().map(|&x| x.powi(2)).sum::<f64>().sqrt();
                let largest = g.iter().fold(0.0f64, |m, &x| m.max(x.abs()));
                emit(&format!(
                    "grad {name} {} norm={norm:.6e} max_abs={largest:.6e}\n",
                    crate::ir::Shape::new(g.shape())
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn gradcheck(
    file: &Path,
    tol: f64,
    json: bool,
    plot: Option<&Path>,
    flags: &ProblemFlags,
    relax: &RelaxFlags,
    options: &CompileOptions,
) -> CmdResult {
    let compiled = compile_to_run(file, options)?;
    let leaves = problem::<f64>(file, &compiled, flags)?;
    let inference = relax.apply(compiled.train.as_ref().map(|t| &t.inference))?;
    let report = match gradcheck::run(&compiled.forward, &inference, relax.steps, &leaves) {
        Ok(r) => r,
        Err(e) => return Err(fail(e)),
    };
    if json {
        emit(&(report_json(&compiled.model_name, &report) + "\n"));
    } else {
        emit(&report_table(&compiled.model_name, &report));
    }
    if let Some(path) = plot {
        if let Err(e) = crate::plot::gradcheck_svg(path, &compiled.model_name, &report) {
            return Err(fail(format!("cannot write {}: {e}", path.display())));
        }
    }
    let max = report.max_rel_err();
    if !max.is_finite() {
        // The first step at which the energy, an update's or a message's error stopped being
        // finite.
        let energy = report.energy.iter().position(|e| !e.is_finite());
        let errors = report.params.iter().chain(&report.inputs).filter_map(|p| {
            p.trace
                .iter()
                .find(|t| !t.rel_err.is_finite())
                .map(|t| t.step)
        });
        let at = energy
            .into_iter()
            .chain(errors)
            .min()
            .map_or(String::new(), |k| format!(" from relaxation step {k}"));
        eprintln!(
            "gradcheck failed: the relaxation is not finite{at}; try a smaller step size (--rate {} now)",
            report.programs.rate
        );
        return Err(Reported);
    }
    let checked = !report.programs.mode.moves_predictions();
    if checked && (max > tol || max.is_nan()) {
        eprintln!("gradcheck failed: max_rel_err {max:.3e} > tol {tol:.1e}");
        return Err(Reported);
    }
    Ok(())
}

fn report_json(model: &str, r: &Report) -> String {
    let params: Vec<serde_json::Value> = r
        .params
        .iter()
        .map(|p| {
            let last = p.trace.last();
            serde_json::json!({
                "name": p.name,
                "rel_err": last.map(|t| t.rel_err),
                "cosine": last.map(|t| t.cosine),
                "trace": p.trace.iter().map(|t| serde_json::json!({"step": t.step, "rel_err": t.rel_err, "cosine": t.cosine})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let inputs: Vec<serde_json::Value> = r
        .inputs
        .iter()
        .map(|p| {
            let last = p.trace.last();
            serde_json::json!({"name": p.name, "rel_err": last.map(|t| t.rel_err), "cosine": last.map(|t| t.cosine)})
        })
        .collect();
    serde_json::json!({
        "model": model,
        "mode": r.programs.mode.name(),
        "steps": r.steps,
        "rate": r.programs.rate,
        "depth": r.programs.graph.depth,
        "loss": r.loss,
        "max_rel_err": r.max_rel_err(),
        "params": params,
        "inputs": inputs,
        "energy": r.energy,
        "stopped_at": r.stopped_at,
    })
    .to_string()
}

fn report_table(model: &str, r: &Report) -> String {
    let mut out = format!(
        "gradcheck model={model} mode={} steps={} rate={} depth={} loss={:.6}\n",
        r.programs.mode.name(),
        r.steps,
        r.programs.rate,
        r.programs.graph.depth,
        r.loss
    );
    // Parameters, then the messages to inputs (`msg:x`).
    let columns: Vec<(String, &gradcheck::ParamTrace)> = r
        .params
        .iter()
        .map(|p| (p.name.clone(), p))
        .chain(r.inputs.iter().map(|p| (format!("msg:{}", p.name), p)))
        .collect();
    let width = columns
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(5)
        .max(9);
    out.push_str(&format!("{:>6}", "step"));
    for (name, _) in &columns {
        out.push_str(&format!("  {name:>width$}"));
    }
    out.push_str(&format!("  {:>10}\n", "energy"));
    let rows = columns.first().map_or(0, |(_, p)| p.trace.len());
    for i in 0..rows {
        let step = columns[0].1.trace[i].step;
        out.push_str(&format!("{step:>6}"));
        for (_, p) in &columns {
            out.push_str(&format!("  {:>width$.3e}", p.trace[i].rel_err));
        }
        out.push_str(&format!(
            "  {:>10.4e}\n",
            r.energy.get(step).copied().unwrap_or(f64::NAN)
        ));
    }
    out.push_str(&format!("{:>6}", "cosine"));
    for (_, p) in &columns {
        out.push_str(&format!(
            "  {:>width$.6}",
            p.trace.last().map_or(f64::NAN, |t| t.cosine)
        ));
    }
    out.push('\n');
    if let Some(step) = r.stopped_at {
        out.push_str(&format!("stopped_at={step}\n"));
    }
    out.push_str(&format!("max_rel_err={:.3e}\n", r.max_rel_err()));
    out
}
