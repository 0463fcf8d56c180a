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
