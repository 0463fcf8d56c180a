//! `pcg grad` and `pcg gradcheck` as a user runs them.

use pcg::npz;
use std::path::{Path, PathBuf};

mod common;

use common::{pcg, text};

fn scratch(name: &str) -> PathBuf {
    common::scratch("cli-grad", name)
}

#[test]
fn grad_writes_numpy_npz_with_one_array_per_parameter() {
    let out = scratch("bp.npz");
    let o = pcg(&[
        "grad",
        "examples/mlp_digits.pcg",
        "--method",
        "bp",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(stdout.starts_with("loss="), "{stdout}");
    let loss: f64 = stdout
        .trim()
        .trim_start_matches("loss=")
        .parse()
        .expect("a number");
    assert!(loss.is_finite() && loss > 0.0);
    // numpy's format: a zip archive of .npy members.
    let bytes = std::fs::read(&out).expect("written");
    assert_eq!(&bytes[..2], b"PK");
    assert!(bytes.windows(6).any(|w| w == b"\x93NUMPY"));
    let grads = npz::read(&out).expect("reads back");
    let names: Vec<&str> = grads.keys().map(String::as_str).collect();
    assert_eq!(names, ["b1", "b2", "w1", "w2"]);
    assert_eq!(grads["w1"].shape(), &[64, 64]);
    assert_eq!(grads["b2"].shape(), &[10]);
}

#[test]
fn npz_round_trips_through_files() {
    let path = scratch("round.npz");
    let mut arrays = npz::Arrays::new();
    arrays.insert(
        "w".into(),
        ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[3, 5]), |i| {
            (i[0] * 5 + i[1]) as f32 * 0.25 - 1.0
        }),
    );
    arrays.insert("s".into(), ndarray::arr0(7.5f32).into_dyn());
    npz::write(&path, &arrays).expect("writes");
    assert_eq!(npz::read(&path).expect("reads"), arrays);
}

#[test]
fn exact_pc_gradients_equal_backprop_from_given_params_and_inputs() {
    // Parameters and a batch written by one command are read back by the others.
    let params = scratch("params.npz");
    let inputs = scratch("inputs.npz");
    let compiled = pcg::sema::compile_file(
        Path::new("examples/shared_branches.pcg"),
        &Default::default(),
    )
    .1
    .expect("compiles");
    npz::write(
        &params,
        &pcg::train::init::init_params(&compiled.forward, 3),
    )
    .unwrap();
    npz::write(
        &inputs,
        &pcg::train::batch::random_batch(&compiled.forward, 3),
    )
    .unwrap();
    let (bp, pc) = (scratch("g_bp.npz"), scratch("g_pc.npz"));
    for (method, out) in [("bp", &bp), ("pc", &pc)] {
        let o = pcg(&[
            "grad",
            "examples/shared_branches.pcg",
            "--method",
            method,
            "--mode",
            "exact",
            "--params",
            params.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let (bp, pc) = (npz::read(&bp).unwrap(), npz::read(&pc).unwrap());
    for (name, g) in &bp {
        let p = &pc[name];
        let diff = (g - p).mapv(|x| x * x).sum().sqrt();
        let norm = g.mapv(|x| x * x).sum().sqrt().max(1e-12);
        assert!(
            diff / norm < 1e-4,
            "{name}: relative difference {}",
            diff / norm
        );
    }
}

#[test]
fn missing_or_misshapen_arrays_are_named_with_both_shapes() {
    let params = scratch("bad_params.npz");
    let mut arrays = npz::Arrays::<f32>::new();
    arrays.insert(
        "w1".into(),
        ndarray::ArrayD::zeros(ndarray::IxDyn(&[64, 63])),
    );
    npz::write(&params, &arrays).unwrap();
    let o = pcg(&[
        "grad",
        "examples/mlp_digits.pcg",
        "--params",
        params.to_str().unwrap(),
        "--out",
        scratch("never.npz").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("`w1` has shape [64, 63]") && err.contains("[64, 64]"),
        "{err}"
    );
    assert!(err.contains("no array named `b1`"), "{err}");
    assert!(!scratch("never.npz").exists());
    let o = pcg(&[
        "grad",
        "examples/mlp_digits.pcg",
        "--inputs",
        "no/such/file.npz",
        "--out",
        scratch("never.npz").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no/such/file.npz"));
}

fn gradcheck_json(args: &[&str]) -> serde_json::Value {
    let o = pcg(args);
    assert!(
        o.status.success(),
        "{args:?}: {}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    serde_json::from_str(text(&o.stdout).trim()).expect("one JSON object")
}

#[test]
fn gradcheck_passes_on_every_example_in_fixed_and_exact_mode() {
    // Defaults for the small examples; the large ones on a smaller batch to keep CI short
    // (README shows the full-batch runs).
    let cases: &[(&str, &[&str])] = &[
        ("examples/toy_graph.pcg", &[]),
        ("examples/mlp_digits.pcg", &[]),
        ("examples/shared_branches.pcg", &[]),
        ("examples/rnn_digits.pcg", &[]),
        ("examples/mlp_fmnist.pcg", &["--batch", "8"]),
        ("examples/cnn_fmnist.pcg", &["--batch", "4"]),
        ("examples/lstm_shakespeare.pcg", &["--batch", "2"]),
    ];
    for (file, extra) in cases {
        for (mode, limit) in [("fixed", 1e-3), ("exact", 1e-4)] {
            let mut args = vec!["gradcheck", file, "--mode", mode, "--json"];
            args.extend_from_slice(extra);
            let j = gradcheck_json(&args);
            let max = j["max_rel_err"].as_f64().expect("max_rel_err");
            assert!(max <= limit, "{file} {mode}: {max}");
            let params = j["params"].as_array().expect("params");
            assert!(!params.is_empty());
            for p in params {
                assert!(p["name"].is_string());
                assert!(!p["trace"].as_array().expect("trace").is_empty());
            }
        }
    }
}

#[test]
fn gradcheck_fails_when_not_converged_and_strict_only_reports() {
    let o = pcg(&["gradcheck", "examples/toy_graph.pcg", "--steps", "5"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert!(text(&o.stderr).contains("max_rel_err"));
    let o = pcg(&[
        "gradcheck",
        "examples/toy_graph.pcg",
        "--mode",
        "strict",
        "--steps",
        "5",
    ]);
    assert!(o.status.success());
}

#[test]
fn gradcheck_plots_an_svg() {
    let svg = scratch("toy.svg");
    let o = pcg(&[
        "gradcheck",
        "examples/toy_graph.pcg",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = std::fs::read_to_string(&svg).expect("written");
    assert!(s.starts_with("<svg") && s.contains("theta") && s.contains("energy"));
}

/// The JIT's options change how the work is done, not the result: one thread or every core,
/// with or without checks on every memory access, on a model with matrix products and one
/// with convolutions.
#[test]
fn jit_threads_and_bounds_checks_leave_the_gradients_as_they_were() {
    for (model, batch) in [
        ("examples/mlp_fmnist.pcg", "64"),
        ("examples/cnn_fmnist.pcg", "8"),
    ] {
        let run = |name: &str, extra: &[&str]| {
            let out = scratch(name);
            let mut args = vec![
                "grad",
                model,
                "--method",
                "pc",
                "--batch",
                batch,
                "--out",
                out.to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            let o = pcg(&args);
            assert!(o.status.success(), "{}", text(&o.stderr));
            npz::read(&out).expect("written")
        };
        let shared = run("shared.npz", &[]);
        let alone = run("alone.npz", &["--threads", "1", "--bounds-checks"]);
        assert_eq!(
            shared.keys().collect::<Vec<_>>(),
            alone.keys().collect::<Vec<_>>()
        );
        for (name, a) in &shared {
            let b = &alone[name];
            let scale = a.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
            let worst = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                worst <= 1e-5 * scale,
                "{model} {name}: {worst} (scale {scale})"
            );
        }
    }
}

/// An input batch holding a NaN is refused before anything runs, naming the array and the
/// example; `--allow-nonfinite` lets it through (and the step then reports the loss).
#[test]
fn a_nan_in_the_inputs_names_the_array_and_example() {
    let inputs = scratch("nan_inputs.npz");
    let compiled =
        pcg::sema::compile_file(Path::new("examples/mlp_digits.pcg"), &Default::default())
            .1
            .expect("compiles");
    let mut batch = pcg::train::batch::random_batch(&compiled.forward, 3);
    batch.get_mut("x").expect("an input x")[[3, 5]] = f32::NAN;
    npz::write(&inputs, &batch).unwrap();
    let out = scratch("nan_g.npz");
    let args = [
        "grad",
        "examples/mlp_digits.pcg",
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let o = pcg(&args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`x`") && err.contains("example 3") && err.contains("NaN"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let allowed: Vec<&str> = args.iter().copied().chain(["--allow-nonfinite"]).collect();
    let o = pcg(&allowed);
    assert!(
        text(&o.stderr).contains("not finite"),
        "{}",
        text(&o.stderr)
    );
}

/// A model far too large for memory is refused before anything is allocated: exit 1, naming
/// the parameter and the bytes needed, never an allocation abort.
#[test]
fn a_model_too_large_for_memory_is_refused() {
    let file = scratch("huge.pcg");
    std::fs::write(
        &file,
        "model m {\n    input x: [4, 1000000]\n    param w: [1000000, 1000000]\n    loss sum(x @ w)\n}\n",
    )
    .unwrap();
    let out = scratch("huge_g.npz");
    for command in ["grad", "gradcheck"] {
        let mut args = vec![command, file.to_str().unwrap()];
        if command == "grad" {
            args.extend(["--out", out.to_str().unwrap()]);
        }
        let o = pcg(&args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{command}: {err}");
        assert!(
            err.contains("`w`") && err.contains("8000016000000 bytes"),
            "{command}: {err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("memory allocation"),
            "{err}"
        );
    }
    // `pcg check` allocates nothing and accepts the model; `--report` refuses it as `run` would.
    assert!(pcg(&["check", file.to_str().unwrap()]).status.success());
    let o = pcg(&["check", "--report", file.to_str().unwrap()]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`w`") && !err.contains("memory allocation"),
        "{err}"
    );
}

/// `pcg check --report`: what training holds, from the parameters' count up, for a model that
/// fits.
#[test]
fn check_reports_the_memory_of_a_model_that_fits() {
    let o = pcg(&["check", "--report", "examples/mlp_digits.pcg"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let line = out.lines().next().unwrap_or_default();
    // 64·64 + 64 + 64·10 + 10 parameters of 4 bytes: 18.8 KiB; SGD with momentum keeps as much.
    assert!(
        line.starts_with("memory model=mlp params=18.8 KiB (4 tensors) optimizer=18.8 KiB"),
        "{line}"
    );
    assert!(
        line.contains(" step_arena=") && line.contains(" available="),
        "{line}"
    );
    assert!(
        out.contains("largest tensors: param `w1`: [64, 64], 16.0 KiB"),
        "{out}"
    );
    // The digits as loaded: 1797 examples of 64 pixel bytes and a u32 label, 122196 bytes.
    assert!(line.contains(" data=119.3 KiB (digits) total="), "{line}");
}

/// `--memory-limit` (before or after the command) caps what a run may count on.
#[test]
fn a_memory_limit_refuses_a_model_over_it() {
    let out = scratch("limit_g.npz");
    let o = pcg(&[
        "grad",
        "examples/mlp_digits.pcg",
        "--memory-limit",
        "10K",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("46672 bytes") && err.contains("--memory-limit") && err.contains("`w1`"),
        "{err}"
    );
    let o = pcg(&[
        "--memory-limit",
        "1G",
        "grad",
        "examples/mlp_digits.pcg",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = pcg(&[
        "grad",
        "examples/mlp_digits.pcg",
        "--memory-limit",
        "8X",
        "--out",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("K, M, G or T"));
}

/// The data set counts too: under a limit the model fits in but not with its data set, `run`,
/// `eval` and `check --report` refuse, naming the data set; above both, they run.
#[test]
fn a_memory_limit_counts_the_data_set() {
    // The model needs 46672 bytes, with the digits (122196 bytes as loaded) 168868.
    let file = "examples/mlp_digits.pcg";
    let checkpoint = scratch("limit_data.npz");
    let checkpoint = checkpoint.to_str().unwrap();
    let run = ["run", file, "--epochs", "1", "--save", checkpoint];
    let o = pcg(&[&run[..], &["--memory-limit", "1G"]].concat());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let eval = ["eval", file, "--params", checkpoint];
    let report = ["check", "--report", file];
    for command in [&run[..], &eval, &report] {
        let o = pcg(&[command, &["--memory-limit", "100K"]].concat());
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{command:?}: {err}");
        assert!(
            err.contains("with the data set `digits`")
                && err.contains("168868 bytes")
                && err.contains("the data set 119.3 KiB")
                && err.contains("--memory-limit"),
            "{command:?}: {err}"
        );
    }
    for command in [&eval[..], &report] {
        let o = pcg(&[command, &["--memory-limit", "170K"]].concat());
        assert!(o.status.success(), "{command:?}: {}", text(&o.stderr));
    }
}

#[test]
fn gradcheck_of_a_diverging_relaxation_fails_with_the_step() {
    // Strict mode is only reported, but a relaxation that stops being finite is an error.
    let o = pcg(&[
        "gradcheck",
        "examples/mlp_digits.pcg",
        "--mode",
        "strict",
        "--steps",
        "60",
        "--rate",
        "40",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(err.contains("not finite from relaxation step"), "{err}");
    assert!(err.contains("--rate 40"), "{err}");
}

#[test]
fn a_diverging_benchmark_says_how_large_the_step_grew_and_why() {
    // One example per batch at a rate tuned for a mean over 64: the repeated step blows up
    // in f32 while the interpreter's replay (f64 sums) stays finite.
    let o = pcg(&[
        "bench",
        "examples/mlp_fmnist.pcg",
        "--batch",
        "1",
        "--iters",
        "30",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(
        err.contains("the replay's loss is") && err.contains("largest gradient"),
        "{err}"
    );
    assert!(
        err.contains("benchmark step") && err.contains("--batch"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_profile_counts_the_runs_of_each_kernel() {
    // On one thread a relaxation kernel runs once per relaxation step and a learning kernel
    // once per training step: the profile's runs per step say so.
    let o = pcg(&[
        "bench",
        "examples/mlp_digits.pcg",
        "--method",
        "pc",
        "--mode",
        "strict",
        "--steps",
        "7",
        "--iters",
        "3",
        "--threads",
        "1",
        "--profile",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let runs: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" runs "))
        .filter_map(|l| l.split(" runs ").next()?.split_whitespace().last())
        .collect();
    assert!(runs.contains(&"7"), "{out}");
    assert!(runs.contains(&"1"), "{out}");
    assert!(runs.iter().all(|r| *r == "1" || *r == "7"), "{out}");
}

/// An input that the loss also reads (an autoencoder's): PC's message to it is its children's
/// messages plus the loss's direct term, equal to backprop's −∂L/∂x in exact mode.
#[test]
fn the_message_to_an_input_the_loss_reads_equals_backprop() {
    let file = scratch("reconstruct.pcg");
    std::fs::write(
        &file,
        "model m {\n    input x: [4, 3] = normal(1.0)\n    param w: [3, 3] = normal(0.5)\n    \
         loss 0.5 * sum(square(tanh(x @ w) - x))\n}\n",
    )
    .unwrap();
    let j = gradcheck_json(&[
        "gradcheck",
        file.to_str().unwrap(),
        "--mode",
        "exact",
        "--json",
    ]);
    let inputs = j["inputs"].as_array().expect("inputs");
    assert_eq!(inputs.len(), 1, "{j}");
    assert_eq!(inputs[0]["name"], "x");
    let err = inputs[0]["rel_err"].as_f64().expect("rel_err");
    assert!(err <= 1e-6, "msg:x is {err} from backprop");
    assert!(inputs[0]["cosine"].as_f64().expect("cosine") > 1.0 - 1e-9);
}

/// The messages to the inputs count in gradcheck's verdict: here the parameter's update is
/// exact after one step (it reads the clamped output's error) but the message to `x` has
/// travelled only a tenth of the way through the relaxed node `h`.
#[test]
fn gradcheck_fails_when_a_message_to_an_input_is_off() {
    let file = scratch("message_off.pcg");
    std::fs::write(
        &file,
        "model m {\n    input x: [4, 3] = normal(1.0)\n    target y: [4, 2] = normal(1.0)\n    \
         param w: [3, 2] = normal(0.5)\n    let h = tanh(x)\n    \
         loss 0.5 * sum(square(h @ w - y))\n}\n",
    )
    .unwrap();
    let args = [
        "gradcheck",
        file.to_str().unwrap(),
        "--mode",
        "fixed",
        "--steps",
        "1",
        "--json",
    ];
    let o = pcg(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("max_rel_err"));
    let j: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).expect("JSON");
    let update = j["params"][0]["rel_err"].as_f64().expect("w's error");
    let message = j["inputs"][0]["rel_err"].as_f64().expect("x's error");
    assert!(update < 1e-9, "{j}");
    assert!(message > 0.5, "{j}");
    assert_eq!(j["max_rel_err"].as_f64(), Some(message));
}
