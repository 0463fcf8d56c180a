//! `pcg run` and `pcg eval`: training on real data and evaluating checkpoints.

use super::job::Ready;
use super::{
    compile_to_run, emit, ensure_fits_with_data, fail, BackendFlags, CmdResult, DtypeFlag,
    MethodArg, RelaxFlags, Reported, RunFlags,
};
use crate::distributed::{self, World};
use crate::ir::{LeafKind, Program};
use crate::model::{dataset, ModelSource};
use crate::npz;
use crate::sema::{
    CompileOptions, Compiled, Dtype, InferenceConfig, Method, OptimizerConfig, TrainConfig,
};
use crate::train::engine::{Element, Engine, InterpEngine, Programs};
use crate::train::init;
use crate::train::optim::{learning_rate, Optimizer};
use crate::train::run::{self, Event, Settings};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::Path;

/// A model compiled for a training command, with the method and inference settings its
/// flags and train block give, and the programs of one training step.
struct Training {
    compiled: Compiled,
    /// The forward program at the global batch (unscaled; `compiled`'s, for one process).
    global: Program,
    method: Method,
    inference: InferenceConfig,
    programs: Programs,
}

fn training(
    file: &Path,
    method: Option<MethodArg>,
    relax: &RelaxFlags,
    options: &CompileOptions,
    world: &World,
) -> Result<Training, Reported> {
    let (compiled, global) = compile_shard(file, options, world)?;
    let train = compiled.train.as_ref();
    let method = chosen_method(method, train);
    let inference = relax.apply(train.map(|t| &t.inference))?;
    let programs =
        Programs::build(&compiled.forward, method, &inference, relax.steps).map_err(fail)?;
    Ok(Training {
        compiled,
        global,
        method,
        inference,
        programs,
    })
}

/// The batch size of a forward program (its first input's rows).
fn batch_of(forward: &Program) -> Result<usize, Reported> {
    crate::train::batch::data_leaves(forward)
        .map(|leaves| crate::train::batch::batch_size(&leaves))
        .map_err(fail)
}

/// The model of `file` compiled for this process's shard of every global batch: at the
/// shard's batch size, with its loss scaled so that the processes' losses sum to the global
/// batch's (see `distributed`). Returns it with the forward program at the global batch (the
/// model itself, for one process).
fn compile_shard(
    file: &Path,
    options: &CompileOptions,
    world: &World,
) -> Result<(Compiled, Program), Reported> {
    let global = compile_to_run(file, options)?;
    if !world.is_distributed() {
        let forward = global.forward.clone();
        return Ok((global, forward));
    }
    let batch = batch_of(&global.forward)?;
    let shard = distributed::shard_size(batch, world.size()).map_err(fail)?;
    let mut shard_options = options.clone();
    shard_options.batch = Some(shard);
    if let Some(b) = shard_options.dims.get_mut("B") {
        *b = shard;
    }
    let mut compiled = compile_to_run(file, &shard_options)?;
    let rows = batch_of(&compiled.forward)?;
    if rows != shard {
        return Err(fail(format!(
            "the model's inputs have {rows} rows at a batch of {shard}: sharing a batch between processes needs its batch axis to be `B`"
        )));
    }
    let params = init::init_params(&compiled.forward, 0);
    let scale =
        distributed::loss_scale(&compiled.forward, &global.forward, &params, world.size(), 0)
            .map_err(fail)?;
    distributed::scale_loss(&mut compiled.forward, scale);
    Ok((compiled, global.forward))
}

/// The method a flag asks for, else the train block's, else predictive coding.
fn chosen_method(flag: Option<MethodArg>, train: Option<&TrainConfig>) -> Method {
    flag.map_or_else(|| train.map_or(Method::Pc, |t| t.method), Method::from)
}

pub(super) fn run(
    file: &Path,
    flags: &RunFlags,
    relax: &RelaxFlags,
    options: &CompileOptions,
    world: &World,
) -> CmdResult {
    let ready = Ready::new(world);
    let training = training(file, flags.method, relax, options, world)?;
    let args = (file, flags, options, world);
    match flags.dtype.resolve(training.compiled.train.as_ref()) {
        Dtype::F32 => run_in::<f32>(args, ready, training),
        Dtype::F64 => run_in::<f64>(args, ready, training),
    }
}

/// `pcg run` in element type `F`.
fn run_in<F: Element>(
    (file, flags, options, world): (&Path, &RunFlags, &CompileOptions, &World),
    ready: Ready,
    Training {
        compiled,
        global,
        method,
        inference,
        programs,
    }: Training,
) -> CmdResult {
    let forward = &compiled.forward;
    let base = compiled.train.clone();
    let mut optimizer = Optimizer::<F>::for_model(&compiled, flags.lr);
    let optimizer_config = optimizer.config().clone();
    let seed = flags.seed.or(base.as_ref().map(|t| t.seed)).unwrap_or(0);
    let epochs = flags
        .epochs
        .or(base.as_ref().map(|t| t.epochs))
        .unwrap_or(1);
    let data = match dataset(
        file,
        flags.data.as_deref(),
        flags.data_dir.as_deref(),
        base.as_ref(),
        flags.allow_nonfinite,
    ) {
        Ok(d) => d,
        Err(e) => return Err(fail(e)),
    };
    ensure_fits_with_data(forward, &data)?;
    let mut engine = flags.backend.engine::<F>(programs).map_err(fail)?;
    engine.distribute(world.clone()).map_err(fail)?;
    let (params, start) = match (&flags.resume, &flags.params) {
        (Some(path), _) => run::load_checkpoint(path, forward, &mut optimizer).map_err(fail)?,
        (None, Some(path)) => (
            initial_params::<F>(forward, path)?,
            run::Position::default(),
        ),
        (None, None) => (
            F::from_f32(init::init_params(forward, seed)),
            run::Position::default(),
        ),
    };
    let hint = match method {
        Method::Pc => format!(
            "inference rate {} now, learning rate {} now",
            inference.rate,
            learning_rate(&optimizer_config)
        ),
        Method::Bp => format!("learning rate {} now", learning_rate(&optimizer_config)),
    };
    let settings = Settings {
        epochs,
        seed,
        optimizer: optimizer_config,
        clip: base.as_ref().and_then(|t| t.clip),
        save: flags.save.clone(),
        hint,
        max_batches: flags.max_batches,
        // Rank 0 evaluates the test examples that do not fill a global batch.
        test_remainder: world
            .is_root()
            .then(|| test_remainder(file, options, &global, &inference, data.test.len()))
            .flatten(),
        stop: Some(super::stop_on_signal(!world.is_distributed())),
    };
    let mut metrics = match &flags.metrics {
        Some(path) if world.is_root() => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(flags.resume.is_some())
                .truncate(flags.resume.is_none())
                .open(path);
            match file {
                Ok(f) => Some(f),
                Err(e) => return Err(fail(format!("cannot write {}: {e}", path.display()))),
            }
        }
        _ => None,
    };
    let batches_per_epoch = {
        let all = data.train.len() / batch_of(&global)?.max(1);
        flags.max_batches.map_or(all, |m| m.min(all))
    };
    ready.finish()?;
    let bar = if flags.quiet || !world.is_root() {
        ProgressBar::hidden()
    } else {
        let left = epochs.saturating_sub(start.epochs) * batches_per_epoch;
        let bar = ProgressBar::new(left.saturating_sub(start.batches) as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    };
    let method_name = match method {
        Method::Pc => "pc",
        Method::Bp => "bp",
    };
    let mut last_acc: Option<f64> = None;
    let outcome = {
        let mut on = |event: Event| match event {
            Event::Batch {
                epoch,
                loss,
                energy,
                ..
            } => {
                bar.set_prefix(format!("epoch {epoch}/{epochs}"));
                let mut msg = format!("loss {loss:.4}");
                if let Some(e) = energy {
                    msg.push_str(&format!(" energy {e:.4}"));
                }
                if let Some(a) = last_acc {
                    msg.push_str(&format!(" test_acc {a:.4}"));
                }
                bar.set_message(msg);
                bar.inc(1);
            }
            Event::Epoch(m) => {
                last_acc = m.test_acc;
                if let Some(f) = metrics.as_mut() {
                    let _ = writeln!(f, "{}", m.to_json());
                }
                if !flags.quiet {
                    bar.suspend(|| emit(&(m.line(epochs) + "\n")));
                }
            }
        };
        run::train(
            engine.as_mut(),
            forward,
            &data,
            &settings,
            params,
            optimizer,
            start,
            &mut on,
        )
    };
    bar.finish_and_clear();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e @ run::TrainError::Interrupted { .. }) => {
            super::job::error_text(format!("{e}\n"));
            return Err(Reported);
        }
        Err(e) => return Err(fail(e)),
    };
    let (train_loss, test_loss, test_acc) = match outcome.history.last() {
        Some(m) => (m.train_loss, m.test_loss, m.test_acc),
        None => match run::evaluate(
            engine.as_mut(),
            forward,
            &data.test,
            &outcome.params,
            settings.test_remainder.as_ref(),
        ) {
            Ok((l, a)) => (f64::NAN, l, a),
            Err(e) => return Err(fail(e)),
        },
    };
    if let (Some(path), true) = (&flags.plot, world.is_root()) {
        if let Err(e) =
            crate::plot::training_svg(path, &compiled.model_name, method_name, &outcome.history)
        {
            return Err(fail(format!("cannot write {}: {e}", path.display())));
        }
    }
    let acc = test_acc.map_or(String::new(), |a| format!(" test_acc={a:.4}"));
    emit(&format!(
        "final method={method_name} backend={} epochs={epochs} train_loss={train_loss:.6} test_loss={test_loss:.6}{acc} seconds={:.2}\n",
        flags.backend.name(),
        outcome.seconds
    ));
    Ok(())
}

/// The model of `file` compiled for the test examples that do not fill a batch (see
/// `model::test_remainder`).
fn test_remainder(
    file: &Path,
    options: &CompileOptions,
    forward: &Program,
    inference: &InferenceConfig,
    examples: usize,
) -> Option<run::Remainder> {
    let source = ModelSource::File(file.to_path_buf());
    crate::model::test_remainder(&source, options, forward, inference, examples)
}

pub(super) fn eval(
    file: &Path,
    params: &Path,
    data: (Option<&str>, Option<&Path>),
    dtype: &DtypeFlag,
    options: &CompileOptions,
    world: &World,
) -> CmdResult {
    let ready = Ready::new(world);
    let (compiled, global) = compile_shard(file, options, world)?;
    let args = (file, params, data, options, world);
    match dtype.resolve(compiled.train.as_ref()) {
        Dtype::F32 => eval_in::<f32>(args, ready, (compiled, global)),
        Dtype::F64 => eval_in::<f64>(args, ready, (compiled, global)),
    }
}

/// The arguments of `pcg eval`: the model's file, the parameters' and the data's.
type EvalArgs<'a> = (
    &'a Path,
    &'a Path,
    (Option<&'a str>, Option<&'a Path>),
    &'a CompileOptions,
    &'a World,
);

/// The parameters of an `.npz` (other arrays in it, such as an optimiser's state, left out),
/// checked against the model's.
fn initial_params<F: Element>(forward: &Program, path: &Path) -> Result<npz::Arrays<F>, Reported> {
    let arrays = npz::read_as::<F>(path).map_err(fail)?;
    let names: Vec<String> = forward
        .leaves(LeafKind::Param)
        .into_iter()
        .map(|(_, n)| n.to_string())
        .collect();
    let params: npz::Arrays<F> = arrays
        .into_iter()
        .filter(|(k, _)| names.contains(k))
        .collect();
    crate::train::batch::check_arrays(forward, &[LeafKind::Param], &params, path).map_err(fail)?;
    Ok(params)
}

/// `pcg eval` in element type `F`.
fn eval_in<F: Element>(
    (file, params, (data_flag, data_dir), options, world): EvalArgs,
    ready: Ready,
    (compiled, global): (Compiled, Program),
) -> CmdResult {
    let forward = &compiled.forward;
    let params_only = initial_params::<F>(forward, params)?;
    let data = dataset(file, data_flag, data_dir, compiled.train.as_ref(), false).map_err(fail)?;
    ensure_fits_with_data(forward, &data)?;
    let inference = compiled
        .train
        .as_ref()
        .map(|t| t.inference.clone())
        .unwrap_or_default();
    let programs = Programs::build(forward, Method::Bp, &inference, None).map_err(fail)?;
    let mut engine = InterpEngine::<F>::new(programs);
    engine.distribute(world.clone()).map_err(fail)?;
    let remainder = world
        .is_root()
        .then(|| test_remainder(file, options, &global, &inference, data.test.len()))
        .flatten();
    ready.finish()?;
    match run::evaluate(
        &mut engine,
        forward,
        &data.test,
        &params_only,
        remainder.as_ref(),
    ) {
        Ok((loss, acc)) => {
            let acc = acc.map_or(String::new(), |a| format!(" test_acc={a:.4}"));
            emit(&format!(
                "eval test_loss={loss:.6}{acc} examples={}\n",
                data.test.len()
            ));
            Ok(())
        }
        Err(e) => Err(fail(e)),
    }
}

pub(super) fn plot(runs: &[String], title: &str, out: &Path) -> CmdResult {
    use crate::plot::Curve;
    let (mut losses, mut accuracies) = (Vec::new(), Vec::new());
    // Runs labelled `<model> <method>` share a colour per model; PC is dashed.
    let mut groups: Vec<String> = Vec::new();
    for run in runs {
        let Some((label, path)) = run.split_once('=') else {
            return Err(fail(format!("expected LABEL=FILE.jsonl, got `{run}`")));
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return Err(fail(format!("cannot read {path}: {e}"))),
        };
        let (mut test_loss, mut acc) = (Vec::new(), Vec::new());
        for (n, line) in text.lines().enumerate() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                return Err(fail(format!("{path}:{}: not a JSON line", n + 1)));
            };
            let epoch = v["epoch"].as_f64().unwrap_or((n + 1) as f64);
            if let Some(l) = v["test_loss"].as_f64() {
                test_loss.push((epoch, l));
            }
            if let Some(a) = v["test_acc"].as_f64() {
                acc.push((epoch, a));
            }
        }
        let model = label.split_whitespace().next().unwrap_or(label).to_string();
        let group = groups.iter().position(|g| *g == model).unwrap_or_else(|| {
            groups.push(model);
            groups.len() - 1
        });
        let dashed = label.split_whitespace().any(|w| w == "pc");
        losses.push(Curve {
            label: format!("{label} test loss"),
            points: test_loss,
            group,
            dashed,
        });
        if !acc.is_empty() {
            accuracies.push(Curve {
                label: format!("{label} test accuracy"),
                points: acc,
                group,
                dashed,
            });
        }
    }
    match crate::plot::curves_svg(out, title, &losses, &accuracies, "test accuracy") {
        Ok(()) => Ok(()),
        Err(e) => Err(fail(format!("cannot write {}: {e}", out.display()))),
    }
}

/// How `pcg bench` times a step.
pub(super) struct BenchRun {
    /// Timed steps after the warm-up.
    pub iters: usize,
    /// Then as many steps again with every kernel timed.
    pub profile: bool,
    /// The optimiser the timed steps take.
    pub optimizer: super::BenchOptimizer,
    /// The floating-point type of the steps.
    pub dtype: DtypeFlag,
}

pub(super) fn bench(
    file: &Path,
    method: Option<MethodArg>,
    backend: &BackendFlags,
    run: BenchRun,
    relax: &RelaxFlags,
    options: &CompileOptions,
    world: &World,
) -> CmdResult {
    let ready = Ready::new(world);
    let training = training(file, method, relax, options, world)?;
    match run.dtype.resolve(training.compiled.train.as_ref()) {
        Dtype::F32 => bench_in::<f32>(backend, run, world, ready, training),
        Dtype::F64 => bench_in::<f64>(backend, run, world, ready, training),
    }
}

/// `pcg bench` in element type `F`.
fn bench_in<F: Element>(
    backend: &BackendFlags,
    BenchRun {
        iters,
        profile,
        optimizer: chosen,
        ..
    }: BenchRun,
    world: &World,
    ready: Ready,
    Training {
        compiled,
        method,
        programs,
        ..
    }: Training,
) -> CmdResult {
    let forward = &compiled.forward;
    let base = compiled.train.clone();
    let steps = programs.steps;
    // The work the step does: the compiled step counts its own kernels; for the interpreter,
    // the programs' (with the relaxation in closed form, the fused program's).
    let program_flops = programs.step_flops();
    let training_programs = profile.then(|| programs.clone());
    // Compilation: the programs to native code, and the training step (at `start`).
    let compiling = std::time::Instant::now();
    let mut engine = backend.engine::<F>(programs).map_err(fail)?;
    engine.distribute(world.clone()).map_err(fail)?;
    let seed = base.as_ref().map_or(0, |t| t.seed);
    let params = F::from_f32(init::init_params(forward, seed));
    let batch = F::from_f32(crate::train::batch::random_batch(forward, seed));
    // Plain SGD at the file's learning rate (the update the peer benchmarks make too, so the
    // timed work is the same), or the file's own optimiser.
    let lr = base.as_ref().map_or(0.01, |t| learning_rate(&t.optimizer));
    let optimizer = match chosen {
        super::BenchOptimizer::Sgd => optimizer_of(lr),
        super::BenchOptimizer::File => Optimizer::for_model(&compiled, None),
    };
    let mut timed_optimizer = optimizer.config().describe();
    if *optimizer.tuning() != Default::default() {
        timed_optimizer.push_str(", with the train block's lr_schedule, lr_scale and freeze");
    }
    engine
        .start(params.clone(), optimizer.clone())
        .map_err(|e| fail(e.to_string()))?;
    let compile_seconds = compiling.elapsed().as_secs_f64();
    ready.finish()?;
    // This process's batch (its shard of the global batch under MPI).
    let shard = crate::train::batch::data_leaves(forward)
        .map_or(0, |leaves| crate::train::batch::batch_size(&leaves));
    let warmup = 3.min(iters.max(1));
    let mut times = Vec::with_capacity(iters);
    let mut in_products = std::time::Duration::ZERO;
    for i in 0..warmup + iters {
        crate::jit::time_products(i >= warmup);
        let t0 = std::time::Instant::now();
        if let Err(e) = engine.train_step(&batch) {
            crate::jit::time_products(false);
            return Err(fail(format!(
                "{e} (benchmark step {})\n  help: the benchmark repeats one random batch of {shard} \
                 with plain SGD at the file's learning rate ({lr}), which may diverge at a batch \
                 size the rate was not tuned for: try fewer --iters or a larger --batch",
                i + 1
            )));
        }
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        in_products += crate::jit::take_product_time();
    }
    crate::jit::time_products(false);
    let cost = engine.step_cost();
    let flops = cost.map_or(program_flops, |c| c.flops);
    times.sort_by(f64::total_cmp);
    let (min, median) = (
        times.first().copied().unwrap_or(f64::NAN),
        times.get(times.len() / 2).copied().unwrap_or(f64::NAN),
    );
    let method_name = if method == Method::Pc { "pc" } else { "bp" };
    // The global batch: each of the job's processes steps on its shard of it.
    let b = world.size() * shard;
    let ranks = if world.is_distributed() {
        format!(" ranks={}", world.size())
    } else {
        String::new()
    };
    emit(&format!(
        "compiled in {compile_seconds:.2} s ({} backend: the programs and the training step)\n",
        backend.name()
    ));
    emit(&format!("optimizer: {timed_optimizer}\n"));
    emit(&format!(
        "min {min:.3} ms, median {median:.3} ms over {} steps; {:.3} GFLOP per step, {:.1} GFLOP/s at the median\n",
        times.len(),
        flops as f64 / 1e9,
        flops as f64 / 1e6 / median
    ));
    if let Some(cost) = cost {
        let total: f64 = times.iter().sum();
        emit(&format!(
            "streams {:.1} MB per step; products: {:.0}% of the FLOPs, {:.0}% of the time\n",
            cost.bytes as f64 / 1e6,
            100.0 * cost.product_flops as f64 / cost.flops.max(1) as f64,
            100.0 * in_products.as_secs_f64() * 1e3 / total.max(1e-9),
        ));
        emit(&format!(
            "arena {} (every buffer of the compiled step)\n",
            crate::memory::bytes_text(cost.arena_bytes)
        ));
    }
    if let Some((shared, alone)) = engine.sharing_counts().filter(|&(_, alone)| alone > 0) {
        emit(&format!(
            "threads: {alone} of {} steps ran on one thread, which measured faster than \
             sharing the work (another process keeps a core busy)\n",
            shared + alone
        ));
    }
    if let Some(programs) = training_programs {
        let params = F::from_f32(init::init_params(forward, seed));
        profile_kernels(backend, programs, params, optimizer, &batch, iters)?;
    }
    emit(&format!(
        "bench model={} method={method_name} backend={} batch={b} inference_steps={} ms_per_step={median:.4}{ranks}\n",
        compiled.model_name,
        backend.name(),
        if method == Method::Pc { steps } else { 0 }
    ));
    Ok(())
}

/// Plain SGD at `lr`: the update the peer benchmarks make too, so the timed work is the same.
fn optimizer_of<F: Element>(lr: f64) -> Optimizer<F> {
    Optimizer::new(
        OptimizerConfig::Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
        },
        None,
    )
}

/// `pcg bench --profile`: `iters` steps with every kernel timed on the calling thread (which
/// runs the first part of a split loop), and the kernels that took the most time.
fn profile_kernels<F: Element>(
    backend: &BackendFlags,
    programs: Programs,
    params: npz::Arrays<F>,
    optimizer: Optimizer<F>,
    batch: &npz::Arrays<F>,
    iters: usize,
) -> CmdResult {
    let mut engine = F::jit_engine(programs, &backend.jit_options_profiled(true)).map_err(fail)?;
    engine
        .start(params, optimizer)
        .map_err(|e| fail(e.to_string()))?;
    engine.train_step(batch).map_err(|e| fail(e.to_string()))?;
    crate::jit::take_kernel_times();
    for _ in 0..iters.max(1) {
        engine.train_step(batch).map_err(|e| fail(e.to_string()))?;
    }
    let times = crate::jit::take_kernel_times();
    let kernels = engine.kernels();
    let total: f64 = times.iter().map(|t| t.time.as_secs_f64()).sum();
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| times[b].time.cmp(&times[a].time));
    emit(&format!(
        "profile: {} kernels, {:.3} ms per step in kernels on the calling thread; the most expensive:\n",
        kernels.len(),
        total * 1e3 / iters.max(1) as f64
    ));
    let mut by_kind: std::collections::BTreeMap<&str, (f64, usize)> = Default::default();
    for (info, t) in kernels.iter().zip(&times) {
        let kind = info.what.split(' ').next().unwrap_or("");
        let entry = by_kind.entry(kind).or_default();
        entry.0 += t.time.as_secs_f64();
        entry.1 += 1;
    }
    let kinds: Vec<String> = by_kind
        .iter()
        .map(|(kind, (t, n))| format!("{kind} {:.0}% ({n} kernels)", 100.0 * t / total.max(1e-12)))
        .collect();
    emit(&format!("  by kind: {}\n", kinds.join(", ")));
    for &k in order.iter().take(15) {
        let Some(info) = kernels.get(k) else { continue };
        let t = times[k].time.as_secs_f64();
        // Runs counted on the calling thread: of a split loop's kernels, the parts it took (one
        // of two on two threads, two of four when a loop has four parts).
        let runs = times[k].runs;
        let rate = |x: u64| x as f64 * runs as f64 / t.max(1e-12) / 1e9;
        emit(&format!(
            "  {:5.1}%  {:8.3} ms  {:>5} runs  {:6.1} GFLOP/s  {:6.1} GB/s  #{k} {}\n",
            100.0 * t / total.max(1e-12),
            t * 1e3 / iters.max(1) as f64,
            runs / iters.max(1) as u64,
            rate(info.cost.flops),
            rate(info.cost.bytes),
            info.what
        ));
    }
    Ok(())
}
