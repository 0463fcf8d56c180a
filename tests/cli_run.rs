//! `pcg run` and `pcg eval` as a user runs them.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{pcg, text};

fn scratch(name: &str) -> PathBuf {
    common::scratch("cli-run", name)
}

/// The `key=value` fields of the last stdout line, which must start with `final`.
fn final_line(o: &Output) -> std::collections::BTreeMap<String, String> {
    let stdout = text(&o.stdout);
    let last = stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("final "),
        "last line: {last}\nstderr: {}",
        text(&o.stderr)
    );
    last.split_whitespace()
        .skip(1)
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn number(fields: &std::collections::BTreeMap<String, String>, key: &str) -> f64 {
    fields[key].parse().expect("a number")
}

#[test]
fn the_main_example_trains_by_pc_and_bp_to_the_same_accuracy() {
    let pc = pcg(&[
        "run",
        "examples/mlp_digits.pcg",
        "--method",
        "pc",
        "--quiet",
    ]);
    let bp = pcg(&[
        "run",
        "examples/mlp_digits.pcg",
        "--method",
        "bp",
        "--quiet",
    ]);
    assert!(pc.status.success() && bp.status.success());
    assert_eq!(
        text(&pc.stdout).lines().count(),
        1,
        "--quiet prints only the final line"
    );
    let (pc, bp) = (final_line(&pc), final_line(&bp));
    assert_eq!(pc["method"], "pc");
    assert_eq!(bp["method"], "bp");
    assert_eq!(pc["backend"], "jit", "the compiled backend is the default");
    let (a, b) = (number(&pc, "test_acc"), number(&bp, "test_acc"));
    assert!(a >= 0.90 && b >= 0.90, "pc {a}, bp {b}");
    assert!((a - b).abs() <= 0.03, "pc {a}, bp {b}");
    assert!(number(&pc, "seconds") < 60.0);
}

#[test]
fn jit_and_interpreter_end_with_the_same_train_loss() {
    for method in ["pc", "bp"] {
        let run = |backend: &str| {
            final_line(&pcg(&[
                "run",
                "examples/mlp_digits.pcg",
                "--method",
                method,
                "--backend",
                backend,
                "--quiet",
            ]))
        };
        let (jit, interp) = (run("jit"), run("interp"));
        assert_eq!(jit["backend"], "jit");
        assert_eq!(interp["backend"], "interp");
        let (a, b) = (number(&jit, "train_loss"), number(&interp, "train_loss"));
        assert!(
            (a - b).abs() <= 1e-3 * b.abs(),
            "{method}: jit {a}, interp {b}"
        );
    }
}

#[test]
fn same_seed_same_result_and_another_seed_differs() {
    let run = |seed: &str| {
        final_line(&pcg(&[
            "run",
            "examples/mlp_digits.pcg",
            "--epochs",
            "2",
            "--seed",
            seed,
            "--quiet",
        ]))
    };
    let (a, b, c) = (run("1"), run("1"), run("2"));
    assert_eq!(a["train_loss"], b["train_loss"]);
    assert_eq!(a["test_loss"], b["test_loss"]);
    assert_ne!(a["train_loss"], c["train_loss"]);
}

#[test]
fn metrics_and_plot_are_written_per_epoch() {
    let (metrics, plot) = (scratch("m.jsonl"), scratch("curves.svg"));
    let o = pcg(&[
        "run",
        "examples/mlp_digits.pcg",
        "--epochs",
        "3",
        "--metrics",
        metrics.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["epoch"], 3);
    assert!(lines[2]["test_acc"].as_f64().is_some() && lines[2]["energy"].as_f64().is_some());
    let epochs = text(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("epoch "))
        .count();
    assert_eq!(epochs, 3);
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
}

#[test]
fn a_killed_run_leaves_an_intact_checkpoint_and_resume_reproduces_the_uninterrupted_run() {
    let (full, part, killed) = (
        scratch("full.npz"),
        scratch("part.npz"),
        scratch("killed.npz"),
    );
    let file = "examples/mlp_digits.pcg";
    // Uninterrupted: 6 epochs.
    let o = pcg(&[
        "run",
        file,
        "--epochs",
        "6",
        "--save",
        full.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let uninterrupted = final_line(&o);
    // Interrupted after 3 epochs (the checkpoint of epoch 3), then resumed to 6.
    let o = pcg(&[
        "run",
        file,
        "--epochs",
        "3",
        "--save",
        part.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success());
    let o = pcg(&[
        "run",
        file,
        "--epochs",
        "6",
        "--resume",
        part.to_str().unwrap(),
        "--save",
        part.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let resumed = final_line(&o);
    assert_eq!(uninterrupted["train_loss"], resumed["train_loss"]);
    assert_eq!(uninterrupted["test_loss"], resumed["test_loss"]);
    assert_eq!(
        pcg::npz::read(&full).unwrap(),
        pcg::npz::read(&part).unwrap(),
        "same parameters and optimiser state"
    );

    // A real kill in the middle of a long run: the checkpoint on disk is always a whole one.
    let mut child = Command::new(env!("CARGO_BIN_EXE_pcg"))
        .args([
            "run",
            file,
            "--epochs",
            "100000",
            "--save",
            killed.to_str().unwrap(),
            "--quiet",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let started = Instant::now();
    while !killed.exists() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(137));
    child.kill().expect("killed");
    child.wait().expect("reaped");
    let arrays = pcg::npz::read(&killed).expect("the checkpoint is readable after a kill");
    let done = arrays["meta.epochs_done"].iter().next().copied().unwrap() as usize;
    assert!(done >= 1);
    let o = pcg(&["eval", file, "--params", killed.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("eval test_loss="));
    let o = pcg(&[
        "run",
        file,
        "--epochs",
        &(done + 1).to_string(),
        "--resume",
        killed.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn a_diverging_relaxation_ends_in_a_diagnostic_naming_the_node() {
    let ck = scratch("div.npz");
    // A good epoch first, then a run that diverges: the checkpoint stays intact.
    assert!(pcg(&[
        "run",
        "examples/mlp_digits.pcg",
        "--epochs",
        "1",
        "--save",
        ck.to_str().unwrap(),
        "--quiet"
    ])
    .status
    .success());
    let before = pcg::npz::read(&ck).unwrap();
    // Fixed mode solves the relaxation in closed form, strict mode simulates it step by step:
    // both name the node and the step.
    for mode in ["fixed", "strict"] {
        let o = pcg(&[
            "run",
            "examples/mlp_digits.pcg",
            "--mode",
            mode,
            "--rate",
            "100",
            "--epochs",
            "2",
            "--resume",
            ck.to_str().unwrap(),
            "--save",
            ck.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{mode}");
        let err = text(&o.stderr);
        assert!(
            err.contains("diverged") && err.contains("node `h`") && err.contains("relaxation step"),
            "{mode}: {err}"
        );
        assert!(err.contains("inference rate 100"), "{err}");
        assert!(!text(&o.stdout).contains("NaN"));
        assert_eq!(
            pcg::npz::read(&ck).unwrap(),
            before,
            "the last good checkpoint is kept"
        );
    }
    // Backprop with an absurd learning rate: the parameter is named.
    let o = pcg(&[
        "run",
        "examples/mlp_digits.pcg",
        "--method",
        "bp",
        "--lr",
        "1e30",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("diverged"), "{}", text(&o.stderr));
}

#[test]
fn missing_and_malformed_data_are_diagnostics() {
    let o = pcg(&[
        "run",
        "examples/mlp_digits.pcg",
        "--data",
        "npz(\"no/such.npz\")",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no/such.npz"));
    let bad = scratch("bad.csv");
    std::fs::write(&bad, "1,2,3\n4,five,6\n").unwrap();
    let spec = format!("csv(\"{}\")", bad.display());
    let o = pcg(&["run", "examples/mlp_digits.pcg", "--data", &spec]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("bad.csv"), "{}", text(&o.stderr));
    let o = pcg(&[
        "run",
        "examples/mlp_digits.pcg",
        "--data",
        "fmnist",
        "--data-dir",
        "/no/such/dir",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("dataset-fashion-mnist"),
        "{}",
        text(&o.stderr)
    );
    let o = pcg(&[
        "eval",
        "examples/mlp_digits.pcg",
        "--params",
        "no/such/ckpt.npz",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let o = pcg(&[
        "run",
        "examples/mlp_digits.pcg",
        "--resume",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!text(&o.stderr).contains("panicked"));
}

/// Evaluation covers the whole test split, whatever the batch size: the examples that do not
/// fill a batch are evaluated too, so the loss and accuracy do not depend on `--batch`.
#[test]
fn evaluation_covers_every_test_example_at_any_batch_size() {
    let ck = scratch("eval-all.npz");
    let trained = pcg(&[
        "run",
        "examples/mlp_digits.pcg",
        "--epochs",
        "2",
        "--save",
        ck.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(trained.status.success(), "{}", text(&trained.stderr));
    let eval = |batch: &str| {
        let o = pcg(&[
            "eval",
            "examples/mlp_digits.pcg",
            "--params",
            ck.to_str().unwrap(),
            "--batch",
            batch,
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let line = text(&o.stdout);
        let field = |key: &str| -> f64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {key} in {line}"))
                .parse()
                .expect("a number")
        };
        (field("test_loss"), field("test_acc"), field("examples"))
    };
    // 359 test examples: 11 batches of 32 and 7 more; 51 of 7 and 2 more; none of 360.
    let whole = eval("32");
    assert_eq!(whole.2, 359.0);
    for batch in ["7", "360"] {
        let other = eval(batch);
        assert_eq!(other.1, whole.1, "accuracy at batch {batch}");
        assert!(
            (other.0 - whole.0).abs() <= 1e-5 * whole.0.abs(),
            "loss at batch {batch}: {} against {}",
            other.0,
            whole.0
        );
    }
    // The final line of a run reports the same evaluation.
    let fields = final_line(&trained);
    assert_eq!(number(&fields, "test_acc"), whole.1);
}

/// A model with no hidden layer (nothing to relax: predictive coding is backprop) trained on
/// the user's own text file, named on the command line relative to the working directory.
#[test]
fn a_text_file_trains_a_model_with_nothing_to_relax() {
    let dir = scratch("text-run");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("t.txt"), "abcab".repeat(200)).expect("text");
    let model = "use nn\n\nmodel chars {\n    input  x: [B, 8, 3]\n    target y: [B, 8, 3]\n    param  w: [3, 3] = xavier\n    let logits = reshape(x, [B * 8, 3]) @ w\n    loss cross_entropy(logits, reshape(y, [B * 8, 3]))\n}\n\ntrain chars {\n    optimizer = sgd(lr = 0.5)\n    batch = 4   epochs = 3   seed = 0\n}\n";
    std::fs::write(dir.join("chars.pcg"), model).expect("model");
    let run = |method: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_pcg"))
            .current_dir(&dir)
            .args(["run", "chars.pcg", "--data", "text(\"t.txt\", seq = 8)"])
            .args(["--method", method, "--quiet"])
            .output()
            .expect("pcg runs");
        assert!(o.status.success(), "{method}: {}", text(&o.stderr));
        final_line(&o)
    };
    let (pc, bp) = (run("pc"), run("bp"));
    assert_eq!(pc["train_loss"], bp["train_loss"]);
    assert_eq!(pc["test_loss"], bp["test_loss"]);
    assert!(
        number(&pc, "test_loss") < (3.0f64).ln(),
        "learned something"
    );
}

/// SIGINT during a run: the step under way finishes, a checkpoint of the position inside the
/// epoch is written, the run says where it stopped and exits 130; resuming from it ends with
/// the parameters and optimiser state of an uninterrupted run. The same for SIGTERM.
#[test]
fn an_interrupted_run_checkpoints_mid_epoch_and_resumes_to_the_same_result() {
    let file = "examples/mlp_digits.pcg";
    // Strict mode with many relaxation steps: long enough batches to land a signal among.
    let args = |epochs: &str| -> Vec<String> {
        [
            "run", file, "--mode", "strict", "--steps", "100", "--rate", "0.1", "--epochs", epochs,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let epochs = "12";
    let full = scratch("signal-full.npz");
    let mut uninterrupted = args(epochs);
    uninterrupted.extend([
        "--save".into(),
        full.to_str().unwrap().into(),
        "--quiet".into(),
    ]);
    let o = pcg(&uninterrupted.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o.stderr));
    for signal in ["-INT", "-TERM"] {
        let ck = scratch(&format!("signal{signal}.npz"));
        let _ = std::fs::remove_file(&ck);
        let mut interrupted = args(epochs);
        interrupted.extend(["--save".into(), ck.to_str().unwrap().into()]);
        let child = Command::new(env!("CARGO_BIN_EXE_pcg"))
            .args(&interrupted)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts");
        // Signal once the first epoch is done (its checkpoint is on disk), a little into the
        // second.
        let started = Instant::now();
        while !ck.exists() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(40));
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let o = child.wait_with_output().expect("ends");
        let stderr = text(&o.stderr);
        assert_eq!(o.status.code(), Some(130), "{signal}: {stderr}");
        assert!(
            stderr.contains("interrupted after batch") && stderr.contains("--resume"),
            "{signal}: {stderr}"
        );
        let arrays = pcg::npz::read(&ck).expect("a whole checkpoint");
        let done = arrays["meta.epochs_done"].iter().next().copied().unwrap();
        assert!(done < 12.0, "{signal}: the run ended before the signal");
        let mut resumed = args(epochs);
        resumed.extend([
            "--resume".into(),
            ck.to_str().unwrap().into(),
            "--save".into(),
            ck.to_str().unwrap().into(),
            "--quiet".into(),
        ]);
        let o = pcg(&resumed.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{signal}: {}", text(&o.stderr));
        assert_eq!(
            pcg::npz::read(&full).unwrap(),
            pcg::npz::read(&ck).unwrap(),
            "{signal}: same parameters and optimiser state as the uninterrupted run"
        );
    }
}

/// A signal during one very long compiled relaxation (strict mode, a billion steps) stops the
/// run within seconds: the compiled loop polls the request and abandons the step, and the
/// checkpoint holds the parameters as they were before it — here, the initial ones.
#[test]
fn a_signal_abandons_a_long_compiled_relaxation() {
    let ck = scratch("abandoned.npz");
    let _ = std::fs::remove_file(&ck);
    let file = "examples/mlp_digits.pcg";
    let child = Command::new(env!("CARGO_BIN_EXE_pcg"))
        .args(["run", file, "--mode", "strict", "--steps", "1000000000"])
        .args(["--save", ck.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    // Well into the first step (loading and compiling take a fraction of this).
    std::thread::sleep(Duration::from_millis(1500));
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let signalled = Instant::now();
    let o = child.wait_with_output().expect("ends");
    let stderr = text(&o.stderr);
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "stopped only after {:?}",
        signalled.elapsed()
    );
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted after batch 0 of") && stderr.contains("was abandoned"),
        "{stderr}"
    );
    let saved = pcg::npz::read(&ck).expect("a checkpoint");
    let (_, compiled) = pcg::sema::compile_file(
        std::path::Path::new(file),
        &pcg::sema::CompileOptions::default(),
    );
    let initial = pcg::train::init::init_params(&compiled.expect("compiles").forward, 0);
    for (name, value) in &initial {
        assert_eq!(&saved[name], value, "{name} changed");
    }
}

/// Counts and rates that make no sense are refused by the flags; a resumed run with nothing
/// left to train says why instead of printing a run that trained nothing.
#[test]
fn run_flags_and_resumes_that_train_nothing_are_refused() {
    let file = "examples/mlp_digits.pcg";
    for (flag, value) in [("--epochs", "0"), ("--max-batches", "0"), ("--lr", "-1")] {
        let o = pcg(&["run", file, flag, value]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}");
        let stderr = text(&o.stderr);
        assert!(stderr.contains(flag), "{stderr}");
    }
    let o = pcg(&["run", file, "--lr=-1"]);
    assert!(text(&o.stderr).contains("must be a positive number"));
    let ck = scratch("two-epochs.npz");
    let saved = pcg(&[
        "run",
        file,
        "--epochs",
        "2",
        "--save",
        ck.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(saved.status.success(), "{}", text(&saved.stderr));
    let o = pcg(&[
        "run",
        file,
        "--epochs",
        "2",
        "--resume",
        ck.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("nothing to train: 2 epoch(s) are done already"));
    assert!(!text(&o.stdout).contains("final"), "{}", text(&o.stdout));
    // A checkpoint in the middle of an epoch, resumed with fewer batches per epoch.
    let mut arrays = pcg::npz::read(&ck).unwrap();
    arrays.insert("meta.epochs_done".into(), ndarray::arr0(0.0f32).into_dyn());
    arrays.insert(
        "meta.batches_done".into(),
        ndarray::arr0(20.0f32).into_dyn(),
    );
    arrays.insert(
        "meta.epoch_sums".into(),
        ndarray::arr1(&[6.0f32, 1.0, 20.0, 0.0, 0.0]).into_dyn(),
    );
    let mid = scratch("mid-epoch.npz");
    pcg::npz::write(&mid, &arrays).unwrap();
    let o = pcg(&[
        "run",
        file,
        "--resume",
        mid.to_str().unwrap(),
        "--max-batches",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("20 of its batches are done already, and it has 5 here"),
        "{stderr}"
    );
}

/// `pcg check` says so when a file is clean; an unreadable file's error has no empty frame.
#[test]
fn check_reports_a_clean_file_and_an_unreadable_one_plainly() {
    let o = pcg(&["check", "examples/mlp_digits.pcg", "stdlib/nn.pcg"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        "ok: examples/mlp_digits.pcg (model mlp: 4810 parameters in 4 tensors, input x [32, 64], target y [32, 10])\n\
         ok: stdlib/nn.pcg (no model: functions and constants only)\n"
    );
    let o = pcg(&["check", "no/such/model.pcg"]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("error[E0104]: cannot read `no/such/model.pcg`"),
        "{stderr}"
    );
    assert!(!stderr.contains('│') && !stderr.contains("┌─"), "{stderr}");
}

/// `pcg grad` without `--out` prints the loss and a line per parameter; `--stage ast` is
/// readable text; every command's FILE argument is described in `--help`.
#[test]
fn grad_summary_ast_text_and_file_help() {
    let o = pcg(&["grad", "examples/mlp_digits.pcg"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("loss="), "{out}");
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[3].starts_with("grad w1 [64, 64] norm="), "{out}");
    let o = pcg(&["ir", "examples/mlp_digits.pcg", "--stage", "ast"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let ast = text(&o.stdout);
    assert!(ast.contains("model mlp\n  input x: [B, 64]\n"), "{ast}");
    assert!(ast.contains("  let h = tanh((x @ w1) + b1)\n"), "{ast}");
    assert!(!ast.contains("Span"), "{ast}");
    for command in ["check", "ir", "grad", "run", "eval", "bench", "gradcheck"] {
        let o = pcg(&[command, "--help"]);
        let help = text(&o.stdout);
        assert!(help.contains(".pcg"), "{command}: {help}");
    }
}

/// A damaged `.npz` (a byte of a member's name flipped) is refused, with the name escaped.
#[test]
fn a_damaged_npz_is_refused_with_its_member_named() {
    let good = scratch("good.npz");
    let o = pcg(&[
        "run",
        "examples/mlp_digits.pcg",
        "--epochs",
        "1",
        "--save",
        good.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut bytes = std::fs::read(&good).unwrap();
    let name = b"b1.npy";
    let places: Vec<usize> = (0..bytes.len() - name.len())
        .filter(|&i| &bytes[i..i + name.len()] == name)
        .collect();
    assert!(!places.is_empty());
    for i in places {
        bytes[i + 4] = b'q';
    }
    let bad = scratch("damaged.npz");
    std::fs::write(&bad, bytes).unwrap();
    let o = pcg(&[
        "eval",
        "examples/mlp_digits.pcg",
        "--params",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("not a valid .npz file: its member `b1.")
            && stderr.contains("is not a `.npy` array"),
        "{stderr}"
    );
}

/// A model without a target (an autoencoder: the loss compares the reconstruction with the
/// input) trains on a data set's inputs, by PC and by BP to the same loss; its test line has
/// no accuracy.
#[test]
fn an_autoencoder_without_a_target_trains_by_pc_and_bp() {
    let file = scratch("autoencoder.pcg");
    std::fs::write(
        &file,
        "use nn\n\nmodel ae {\n    input  x: [B, 64]\n    param  w1: [64, 8] = xavier\n    param  b1: [8]\n    \
         param  w2: [8, 64] = xavier\n    param  b2: [64]\n    let code = tanh(x @ w1 + b1)\n    \
         let recon = sigmoid(code @ w2 + b2)\n    loss mse(recon, x)\n}\n\n\
         train ae {\n    data = digits\n    optimizer = adam(lr = 0.01)\n    batch = 32   epochs = 3\n}\n",
    )
    .unwrap();
    let run = |method: &str| {
        let o = pcg(&["run", file.to_str().unwrap(), "--method", method, "--quiet"]);
        assert!(o.status.success(), "{method}: {}", text(&o.stderr));
        final_line(&o)
    };
    let (pc, bp) = (run("pc"), run("bp"));
    assert!(!pc.contains_key("test_acc"), "{pc:?}");
    let (pc_loss, bp_loss) = (number(&pc, "test_loss"), number(&bp, "test_loss"));
    assert!(
        (pc_loss - bp_loss).abs() <= 1e-4 * bp_loss,
        "{pc_loss} {bp_loss}"
    );
    // Learnt something: after one epoch the test loss is 2.26, after three 1.84.
    assert!(pc_loss < 2.0, "{pc_loss}");
}

/// `pcg bench --optimizer file` times the file's own optimiser; the default stays plain SGD.
#[test]
fn bench_times_the_file_optimizer_when_asked() {
    // mlp_digits trains with sgd(lr = 0.05, momentum = 0.9).
    for (optimizer, timed) in [
        (
            "sgd",
            "optimizer: sgd(lr = 0.05, momentum = 0, weight_decay = 0)\n",
        ),
        (
            "file",
            "optimizer: sgd(lr = 0.05, momentum = 0.9, weight_decay = 0)\n",
        ),
    ] {
        let o = pcg(&[
            "bench",
            "examples/mlp_digits.pcg",
            "--iters",
            "2",
            "--optimizer",
            optimizer,
        ]);
        assert!(o.status.success(), "{optimizer}: {}", text(&o.stderr));
        let out = text(&o.stdout);
        assert!(out.contains(timed) && out.contains("ms_per_step="), "{out}");
    }
    let o = pcg(&["bench", "examples/mlp_digits.pcg", "--optimizer", "adam"]);
    assert_eq!(o.status.code(), Some(2));
}

/// Dropout trains with a mask per step, the same for PC's relaxation and learning (exact PC
/// trains as BP does), and is off when evaluating: a checkpoint evaluates to the same loss
/// with the model's dropout as without it.
#[test]
fn dropout_masks_training_steps_and_is_off_when_evaluating() {
    let model = |p: &str| {
        format!(
            "use nn\n\nmodel m {{\n    input  x: [B, 64]\n    target y: [B, 10]\n    param  w1: [64, 32] = normal(0.1)\n    \
             param  w2: [32, 10]\n    let h = dropout(tanh(x @ w1), {p})\n    loss mse(h @ w2, y)\n}}\n\n\
             train m {{\n    data = digits\n    optimizer = sgd(lr = 0.1)\n    batch = 32   epochs = 3\n}}\n"
        )
    };
    let (with, without) = (scratch("dropout.pcg"), scratch("no-dropout.pcg"));
    std::fs::write(&with, model("0.5")).unwrap();
    std::fs::write(&without, model("0")).unwrap();
    let ck = scratch("dropout.npz");
    let run = |file: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["run", file.to_str().unwrap(), "--quiet"];
        args.extend_from_slice(extra);
        let o = pcg(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        final_line(&o)
    };
    let pc = run(&with, &["--mode", "exact", "--save", ck.to_str().unwrap()]);
    let bp = run(&with, &["--method", "bp"]);
    assert_eq!(pc["train_loss"], bp["train_loss"]);
    assert_eq!(pc["test_loss"], bp["test_loss"]);
    let plain = run(&without, &["--method", "bp"]);
    assert_ne!(
        plain["train_loss"], bp["train_loss"],
        "the masks change training"
    );
    let eval = |file: &std::path::Path| {
        let o = pcg(&[
            "eval",
            file.to_str().unwrap(),
            "--params",
            ck.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    assert_eq!(eval(&with), eval(&without));
    assert!(eval(&with).contains(&format!("test_loss={}", pc["test_loss"])));
}

/// A `frozen` tensor is saved with the parameters and never trained, by backprop and by
/// predictive coding, while the parameter beside it learns; `pcg check` counts it apart.
#[test]
fn frozen_tensors_are_saved_and_never_trained() {
    let model = scratch("frozen.pcg");
    std::fs::write(
        &model,
        "model fz {
    input  x: [B, 64]
    target y: [B, 10]
    param  w: [64, 10] = normal(0.1)
    frozen m: [10] = normal(1.0)
    loss 0.5 * sum(square(x @ w * m - y)) / B
}
train fz {
    data = digits
    batch = 32
    epochs = 1
    optimizer = adam(0.01)
}
",
    )
    .unwrap();
    let m = model.to_str().unwrap();
    let o = pcg(&["check", m]);
    assert!(
        text(&o.stdout).contains("640 parameters in 1 tensors (and 10 frozen values in 1 tensors)"),
        "{}",
        text(&o.stdout)
    );
    let fresh = pcg::train::init::init_params(
        &pcg::sema::compile_file(&model, &Default::default())
            .1
            .expect("compiles")
            .forward,
        0,
    );
    for method in ["bp", "pc"] {
        let saved = scratch(&format!("frozen_{method}.npz"));
        let o = pcg(&[
            "run",
            m,
            "--method",
            method,
            "--save",
            saved.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let arrays = pcg::npz::read(&saved).expect("checkpoint");
        let again = scratch(&format!("frozen_{method}_again.npz"));
        let o = pcg(&[
            "run",
            m,
            "--method",
            method,
            "--seed",
            "7",
            "--save",
            again.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let other = pcg::npz::read(&again).expect("checkpoint");
        // The frozen m is its seeded initial draw (so another seed's differs), w has learned.
        assert_ne!(arrays["m"], other["m"]);
        assert_eq!(
            arrays["m"], fresh["m"],
            "{method}: the frozen tensor changed"
        );
        assert_ne!(
            arrays["w"], fresh["w"],
            "{method}: the parameter did not learn"
        );
    }
}

/// `pcg run --params` starts from given parameters (a trained checkpoint's here, as an
/// imported model's `.npz` would be): its first batch's loss is a trained model's, far below
/// the initialisers'; a file without the model's parameters is refused by name.
#[test]
fn a_run_starts_from_given_parameters() {
    let trained = scratch("start_from.npz");
    let o = pcg(&[
        "run",
        "examples/mlp_digits.pcg",
        "--method",
        "bp",
        "--save",
        trained.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let one_batch = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "examples/mlp_digits.pcg",
            "--method",
            "bp",
            "--epochs",
            "1",
            "--max-batches",
            "1",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let o = pcg(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        number(&final_line(&o), "train_loss")
    };
    let fresh = one_batch(&[]);
    let started = one_batch(&["--params", trained.to_str().unwrap()]);
    assert!(started < 0.5 * fresh, "{started} vs {fresh}");
    let o = pcg(&[
        "run",
        "examples/mlp_digits.pcg",
        "--params",
        "tests/onnx/mlp.npz",
    ]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("mlp.npz"), "{}", text(&o.stderr));
}
