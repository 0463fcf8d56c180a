//! Double precision (`dtype = f64`): a strict-mode predictive-coding update checked to the
//! last digits against an independent reference, and the f64 training path end to end.
//!
//! The reference: at the relaxed state v*, the strict-mode update of the parameters is
//! Δθ = −∂F/∂θ, with F(θ) = ½ Σ_i ‖v*_i − μ_i(v*; θ)‖² + L(μ_out(v*; θ)) the energy whose
//! output term is the loss itself (the output's error is clamped to −∂L/∂μ_out). The energy is
//! written out by hand as a model of its own (`tests/f64/*_energy.pcg`, the relaxed values its
//! inputs) and differentiated by backprop; finite differences of its value check that
//! gradient in turn. None of it goes through the predictive-coding transform.

mod common;

use common::{pcg, scratch, text};
use ndarray::ArrayD;
use pcg::interp::{self, Bindings};
use pcg::ir::Program;
use pcg::jit::JitOptions;
use pcg::sema::{self, CompileOptions, InferenceConfig, Method, Mode};
use pcg::train::batch;
use pcg::train::engine::{self, Engine, InterpEngine, JitEngine, Programs};
use std::path::Path;

/// A model file at a batch of `rows`.
fn compile(path: &str, rows: usize) -> Program {
    let options = CompileOptions {
        batch: Some(rows),
        ..Default::default()
    };
    sema::compile_file(Path::new(path), &options)
        .1
        .expect("compiles")
        .forward
}

/// Initial parameters and a seeded random batch, widened to f64 (as `dtype = f64` does).
fn leaves(forward: &Program) -> Bindings<f64> {
    batch::seeded_leaves(forward, 0)
}

fn strict(steps: usize, rate: f64) -> InferenceConfig {
    InferenceConfig {
        mode: Mode::Strict,
        steps,
        rate,
        ..Default::default()
    }
}

/// The largest difference between `a` and `b` over every array `b` has, relative to the
/// largest element of `b`.
fn rel_err(a: &Bindings<f64>, b: &Bindings<f64>) -> f64 {
    let mut diff = 0.0f64;
    let mut scale = 0.0f64;
    for (name, want) in b {
        let got = a.get(name).unwrap_or_else(|| panic!("no `{name}`"));
        assert_eq!(got.shape(), want.shape(), "{name}");
        for (x, y) in got.iter().zip(want) {
            diff = diff.max((x - y).abs());
            scale = scale.max(y.abs());
        }
    }
    diff / scale
}

/// What one strict-mode check found: the update's error against the energy's gradient, the
/// energy gradient's against finite differences of the energy, and how far the update is
/// from backprop's gradient (strict mode is not backprop: the relaxation moved the state).
struct Check {
    update: f64,
    finite_differences: f64,
    from_backprop: f64,
}

/// Relaxes `example` in strict mode in f64 on the interpreter, then compares its update with
/// −∂F/∂θ of the hand-written energy `energy` at the relaxed state; `relaxed` maps each
/// relaxed node's label to the energy model's input holding its value.
fn strict_update_against_energy(
    (example, energy): (&str, &str),
    relaxed: &[(&str, &str)],
    batch: usize,
    inference: &InferenceConfig,
) -> Check {
    let forward = compile(example, batch);
    let leaves = leaves(&forward);
    let pc = pcg::pc::transform(&forward, inference).expect("transforms");
    let state =
        interp::run_loop(&pc.relax, &leaves, inference.steps, |_, _| true).expect("relaxes");
    let mut env = leaves.clone();
    env.extend(state.clone());
    let learned = interp::eval_outputs(&pc.learn, &env).expect("learns");
    let update: Bindings<f64> = learned
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("update.")?.to_string(), v.clone())))
        .collect();
    assert!(!update.is_empty());
    let backprop = engine::gradient(&forward).expect("differentiable");
    let minus_backprop: Bindings<f64> = interp::eval_outputs(&backprop, &leaves)
        .expect("evaluates")
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("grad.")?.to_string(), -v)))
        .collect();

    // The energy at the relaxed state, and its gradient by backprop.
    let energy = compile(energy, batch);
    let mut at = leaves.clone();
    for (label, input) in relaxed {
        let name = pcg::pc::carried_state(Mode::Strict, label);
        let value = state
            .get(&name)
            .unwrap_or_else(|| panic!("no state `{name}`: {:?}", state.keys().collect::<Vec<_>>()));
        at.insert(input.to_string(), value.clone());
    }
    let gradient = engine::gradient(&energy).expect("differentiable");
    let out = interp::eval_outputs(&gradient, &at).expect("evaluates");
    let minus_gradient: Bindings<f64> = out
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("grad.")?.to_string(), -v)))
        .collect();
    assert_eq!(
        minus_gradient.keys().collect::<Vec<_>>(),
        update.keys().collect::<Vec<_>>()
    );

    // Central differences of the energy at a few elements of each parameter.
    let value = |leaves: &Bindings<f64>| -> f64 {
        interp::eval_outputs(&energy, leaves).expect("evaluates")["loss"].sum()
    };
    let h = 1e-6;
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for (name, g) in &minus_gradient {
        for k in (0..g.len()).step_by((g.len() / 3).max(1)) {
            let mut shifted = at.clone();
            let p = shifted.get_mut(name).expect("a parameter");
            let x = p.as_slice_mut().expect("standard layout");
            x[k] += h;
            let up = value(&shifted);
            let p = shifted.get_mut(name).expect("a parameter");
            p.as_slice_mut().expect("standard layout")[k] -= 2.0 * h;
            let down = value(&shifted);
            let numeric = -(up - down) / (2.0 * h);
            let analytic = g.as_slice().expect("standard layout")[k];
            diff = diff.max((numeric - analytic).abs());
            scale = scale.max(analytic.abs());
        }
    }
    Check {
        update: rel_err(&update, &minus_gradient),
        finite_differences: diff / scale,
        from_backprop: rel_err(&update, &minus_backprop),
    }
}

impl Check {
    /// The must-show of double precision: the update equals the reference to 1e-10; the
    /// reference agrees with finite differences to `fd_tol`, and strict mode was not backprop.
    fn expect(&self, model: &str, fd_tol: f64) {
        eprintln!(
            "{model}: update vs −∂F/∂θ {:.2e}, −∂F/∂θ vs finite differences {:.2e}, update vs backprop {:.2e}",
            self.update, self.finite_differences, self.from_backprop
        );
        assert!(self.update < 1e-10, "{:.3e}", self.update);
        assert!(self.from_backprop > 1e-6, "{:.3e}", self.from_backprop);
        assert!(
            self.finite_differences < fd_tol,
            "{:.3e}",
            self.finite_differences
        );
    }
}

/// The strict-mode update of the MLP example in f64 equals the reference to 1e-10 (measured:
/// equal to the last bit, the two computations taking the same floating-point operations in
/// the same order; finite differences agree to about 1e-9, their own truncation and rounding
/// error).
#[test]
fn strict_update_of_the_mlp_equals_the_energy_gradient() {
    strict_update_against_energy(
        ("examples/mlp_digits.pcg", "tests/f64/mlp_digits_energy.pcg"),
        &[("h", "h")],
        16,
        &strict(20, 0.5),
    )
    .expect("mlp", 1e-6);
}

/// The same for the CNN example (at a batch of 4): convolutions, pooling and ReLU.
#[test]
fn strict_update_of_the_cnn_equals_the_energy_gradient() {
    strict_update_against_energy(
        ("examples/cnn_fmnist.pcg", "tests/f64/cnn_fmnist_energy.pcg"),
        &[
            ("conv_bias.y.0", "y0"),
            ("a1", "a1"),
            ("conv_bias.y.1", "y1"),
            ("a2", "a2"),
            ("f1", "f1"),
            ("f2", "f2"),
        ],
        4,
        &strict(10, 0.1),
    )
    .expect("cnn", 1e-5);
}

/// The engines in f64: the interpreter's step is the transform's update, negated; in f32 the
/// same step differs from it by f32's rounding, far above what f64 reaches.
#[test]
fn the_interpreter_engine_computes_in_f64() {
    let forward = compile("examples/mlp_digits.pcg", 16);
    let inference = strict(20, 0.5);
    let programs = Programs::build(&forward, Method::Pc, &inference, None).expect("builds");
    let all = leaves(&forward);
    let (params, batch): (Bindings<f64>, Bindings<f64>) = all
        .into_iter()
        .partition(|(k, _)| !["x", "y"].contains(&k.as_str()));
    let wide = InterpEngine::<f64>::new(programs.clone())
        .gradients(&params, &batch)
        .expect("steps");
    let narrow_params = params
        .iter()
        .map(|(k, v)| (k.clone(), v.mapv(|x| x as f32)))
        .collect();
    let narrow_batch = batch
        .iter()
        .map(|(k, v)| (k.clone(), v.mapv(|x| x as f32)))
        .collect();
    let narrow = InterpEngine::<f32>::new(programs)
        .gradients(&narrow_params, &narrow_batch)
        .expect("steps");
    let widened: Bindings<f64> = narrow
        .grads
        .iter()
        .map(|(k, v)| (k.clone(), v.mapv(f64::from)))
        .collect();
    let apart = rel_err(&widened, &wide.grads);
    assert!(apart > 1e-9 && apart < 1e-4, "f32 against f64: {apart:.3e}");
}

/// The compiled backend in f64 computes what the interpreter does to the last digits: the
/// same sums in other orders (GEMM, loop nests), the same libm for every transcendental
/// function. Backprop's gradient and the PC update of each mode, on an MLP (mse), a CNN
/// (softmax cross-entropy), a tanh RNN and an LSTM (sigmoid, tanh, softmax).
#[test]
fn the_compiled_engine_equals_the_interpreter_in_f64() {
    let fixed = InferenceConfig {
        mode: Mode::Fixed,
        steps: 20,
        rate: 0.1,
        ..Default::default()
    };
    let exact = InferenceConfig {
        mode: Mode::Exact,
        ..strict(20, 0.5)
    };
    let cases = [
        ("examples/mlp_digits.pcg", 16, Method::Bp, fixed.clone()),
        ("examples/mlp_digits.pcg", 16, Method::Pc, fixed.clone()),
        ("examples/mlp_digits.pcg", 16, Method::Pc, strict(20, 0.5)),
        ("examples/mlp_digits.pcg", 16, Method::Pc, exact),
        ("examples/cnn_fmnist.pcg", 2, Method::Bp, fixed.clone()),
        ("examples/cnn_fmnist.pcg", 2, Method::Pc, strict(10, 0.5)),
        ("examples/rnn_digits.pcg", 8, Method::Bp, fixed.clone()),
        ("examples/rnn_digits.pcg", 8, Method::Pc, fixed.clone()),
        (
            "examples/lstm_shakespeare.pcg",
            2,
            Method::Bp,
            fixed.clone(),
        ),
        (
            "examples/lstm_shakespeare.pcg",
            2,
            Method::Pc,
            strict(5, 0.5),
        ),
    ];
    // Checked accesses (and Cranelift's verifier), and two threads: kernels shared between
    // them, convolutions in two sample groups.
    let options = JitOptions {
        bounds_checks: true,
        threads: 2,
        auto_threads: false,
        ..JitOptions::default()
    };
    for (path, rows, method, inference) in cases {
        let what = format!("{path} {method:?} {:?}", inference.mode);
        let forward = compile(path, rows);
        let programs = Programs::build(&forward, method, &inference, None).expect("builds");
        let names: Vec<&str> = forward
            .leaves(pcg::ir::LeafKind::Param)
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        let (params, batch): (Bindings<f64>, Bindings<f64>) = leaves(&forward)
            .into_iter()
            .partition(|(k, _)| names.contains(&k.as_str()));
        let interpreted = InterpEngine::<f64>::new(programs.clone())
            .gradients(&params, &batch)
            .expect("steps");
        let compiled = JitEngine::<f64>::new(programs, &options)
            .expect("compiles")
            .gradients(&params, &batch)
            .expect("steps");
        let apart = rel_err(&compiled.grads, &interpreted.grads);
        assert!(apart < 1e-12, "{what}: {apart:.3e}");
        let loss = (compiled.loss - interpreted.loss).abs() / interpreted.loss.abs();
        assert!(loss < 1e-12, "{what}: loss {loss:.3e}");
    }
}

/// Compiled training steps in f64 (gradient and Adam's update in one native function, the
/// parameters resident) take the interpreter's steps.
#[test]
fn compiled_training_steps_equal_the_interpreter_in_f64() {
    let forward = compile("examples/mlp_digits.pcg", 16);
    let programs = Programs::build(&forward, Method::Pc, &strict(20, 0.5), None).expect("builds");
    let (params, batch): (Bindings<f64>, Bindings<f64>) = leaves(&forward)
        .into_iter()
        .partition(|(k, _)| !["x", "y"].contains(&k.as_str()));
    let adam = pcg::sema::OptimizerConfig::Adam {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut interpreted = InterpEngine::<f64>::new(programs.clone());
    let options = JitOptions {
        threads: 1,
        ..JitOptions::default()
    };
    let mut compiled = JitEngine::<f64>::new(programs, &options).expect("compiles");
    for engine in [&mut interpreted as &mut dyn Engine<f64>, &mut compiled] {
        let optimizer = pcg::train::optim::Optimizer::new(adam.clone(), None);
        engine.start(params.clone(), optimizer).expect("starts");
        for _ in 0..3 {
            engine.train_step(&batch).expect("steps");
        }
    }
    let apart = rel_err(&compiled.trained().0, &interpreted.trained().0);
    assert!(apart < 1e-12, "{apart:.3e}");
}

/// `dtype` in the train block, and its bad values.
#[test]
fn the_train_block_names_the_dtype() {
    let source = |dtype: &str| {
        format!(
            "model m {{\n    input x: [2, 3]\n    target y: [2, 3]\n    param w: [3, 3] = zeros\n    loss sum(square(x @ w - y))\n}}\n\ntrain m {{\n    dtype = {dtype}\n}}\n"
        )
    };
    let compiled = |dtype: &str| {
        let (_, result) = sema::compile_source("m.pcg", &source(dtype), &CompileOptions::default());
        result
    };
    let train = compiled("f64")
        .expect("compiles")
        .train
        .expect("a train block");
    assert_eq!(train.dtype, sema::Dtype::F64);
    let train = compiled("f32")
        .expect("compiles")
        .train
        .expect("a train block");
    assert_eq!(train.dtype, sema::Dtype::F32);
    let errors = compiled("f16").expect_err("f16 is refused");
    let message = format!("{errors:?}");
    assert!(message.contains("f32, f64"), "{message}");
}

/// The header of a `.npy` member of a `.npz` file: its dtype.
fn npy_dtype(path: &Path, member: &str) -> String {
    let file = std::fs::File::open(path).expect("opens");
    let mut zip = zip::ZipArchive::new(file).expect("a zip");
    let mut entry = zip.by_name(&format!("{member}.npy")).expect("the member");
    let mut header = vec![0u8; 64];
    std::io::Read::read_exact(&mut entry, &mut header).expect("reads");
    let header = String::from_utf8_lossy(&header).to_string();
    let at = header.find("'descr': '").expect("a descr") + 10;
    header[at..at + 3].to_string()
}

/// `--dtype f64`: gradients and checkpoints are written as float64 arrays, read back by
/// `eval`, and `--dtype` refuses what it does not know.
#[test]
fn the_cli_computes_and_saves_in_f64() {
    let grads = scratch("f64", "grads.npz");
    let o = pcg(&[
        "grad",
        "examples/mlp_digits.pcg",
        "--method",
        "pc",
        "--mode",
        "strict",
        "--backend",
        "interp",
        "--dtype",
        "f64",
        "--out",
        grads.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(npy_dtype(&grads, "w1"), "<f8");

    // Three batches of training in f64 on `backend`.
    let train = |backend: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "examples/mlp_digits.pcg",
            "--backend",
            backend,
            "--dtype",
            "f64",
            "--epochs",
            "1",
            "--max-batches",
            "3",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        pcg(&args)
    };
    let checkpoint = scratch("f64", "checkpoint.npz");
    let o = train("interp", &["--save", checkpoint.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(npy_dtype(&checkpoint, "w1"), "<f8");
    assert_eq!(npy_dtype(&checkpoint, "optimizer.first.w1"), "<f8");
    // The same run on the compiled backend ends at the same test loss.
    let compiled = train("jit", &[]);
    assert!(compiled.status.success(), "{}", text(&compiled.stderr));
    let trained = text(&o.stdout);
    let loss = trained
        .split_whitespace()
        .find_map(|w| w.strip_prefix("test_loss="))
        .expect("a test loss");
    assert!(
        text(&compiled.stdout).contains(&format!("test_loss={loss}")),
        "jit: {} against {loss}",
        text(&compiled.stdout)
    );
    for dtype in ["f64", "f32"] {
        let o = pcg(&[
            "eval",
            "examples/mlp_digits.pcg",
            "--params",
            checkpoint.to_str().expect("utf-8"),
            "--dtype",
            dtype,
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(
            text(&o.stdout).contains(&format!("test_loss={loss}")),
            "{dtype}: {} against {loss}",
            text(&o.stdout)
        );
    }

    let o = pcg(&["grad", "examples/mlp_digits.pcg", "--dtype", "f16"]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(e.contains("f32") && e.contains("f64"), "{e}");
}

/// A checkpoint's arrays keep their type: f32 parameters load into an f64 run exactly.
#[test]
fn f32_arrays_widen_exactly() {
    let path = scratch("f64", "narrow.npz");
    let mut arrays = pcg::npz::Arrays::<f32>::new();
    arrays.insert("w".into(), ArrayD::from_elem(ndarray::IxDyn(&[3]), 0.1f32));
    pcg::npz::write(&path, &arrays).expect("writes");
    let wide = pcg::npz::read_as::<f64>(&path).expect("reads");
    assert_eq!(wide["w"][[0]], f64::from(0.1f32));
}
