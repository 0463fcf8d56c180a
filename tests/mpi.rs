//! Training over MPI (`--features mpi`): `mpirun -n 2` ends where one process does, rank 0
//! alone writes, and a failing or killed rank ends the whole job. Needs Open MPI's `mpirun`.
#![cfg(feature = "mpi")]

mod common;

use common::{pcg, scratch, text};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `mpirun -n <ranks> pcg <args>`, allowed to run as root (CI does) and on fewer cores than
/// ranks.
fn mpirun_command(ranks: usize, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-n", &ranks.to_string(), "--oversubscribe"])
        .arg(env!("CARGO_BIN_EXE_pcg"))
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

fn mpirun(ranks: usize, args: &[&str]) -> Output {
    mpirun_command(ranks, args).output().expect("mpirun runs")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Two checkpoints hold the same arrays, and every parameter agrees to `tol`, relative to
/// the array's largest entry or `floor`, whichever is larger. (The optimiser's moments are
/// sums of gradients, whose rounding in a batch sum of another order is relative to the
/// terms, not to the sum.)
fn same_checkpoints(a: &Path, b: &Path, tol: f32, floor: f32) {
    let (a, b) = (pcg::npz::read(a).unwrap(), pcg::npz::read(b).unwrap());
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same arrays"
    );
    for (name, x) in a.iter().filter(|(k, _)| !k.contains('.')) {
        let y = &b[name];
        assert_eq!(x.shape(), y.shape(), "{name}");
        let scale = x.iter().fold(floor, |m, v| m.max(v.abs())).max(1e-30);
        let diff = x
            .iter()
            .zip(y)
            .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            diff <= tol * scale,
            "{name}: max difference {diff:e} against max |x| {scale:e}"
        );
    }
}

/// Trains `args` in one process and in two, and compares the checkpoints (to 1e-5 relative,
/// see [`same_checkpoints`]).
fn one_and_two_agree(group: &str, args: &[&str], floor: f32) {
    let (one, two) = (scratch(group, "one.npz"), scratch(group, "two.npz"));
    let with = |path: &Path| {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend([
            "--save".into(),
            path.display().to_string(),
            "--quiet".into(),
        ]);
        a
    };
    let a1 = with(&one);
    let a2 = with(&two);
    let single = ok(&pcg(&a1.iter().map(String::as_str).collect::<Vec<_>>()));
    let shared = ok(&mpirun(
        2,
        &a2.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    // Rank 0 alone prints.
    assert_eq!(shared.matches("final ").count(), 1, "{shared}");
    assert!(single.contains("final "), "{single}");
    same_checkpoints(&one, &two, 1e-5, floor);
}

#[test]
fn pc_and_bp_on_two_ranks_end_where_one_process_does() {
    one_and_two_agree(
        "mpi-pc",
        &["run", "examples/mlp_digits.pcg", "--epochs", "3"],
        0.0,
    );
    one_and_two_agree(
        "mpi-bp",
        &[
            "run",
            "examples/mlp_digits.pcg",
            "--epochs",
            "3",
            "--method",
            "bp",
        ],
        0.0,
    );
}

#[test]
fn strict_mode_and_the_interpreter_on_two_ranks_end_where_one_process_does() {
    let strict = [
        "run",
        "examples/mlp_digits.pcg",
        "--epochs",
        "2",
        "--mode",
        "strict",
        "--steps",
        "10",
        "--rate",
        "0.1",
    ];
    one_and_two_agree("mpi-strict", &strict, 0.0);
    let mut interp = strict.to_vec();
    interp.extend(["--backend", "interp", "--max-batches", "10"]);
    one_and_two_agree("mpi-strict-interp", &interp, 0.0);
}

#[test]
fn a_cnn_on_two_ranks_ends_where_one_process_does() {
    let cnn = [
        "run",
        "examples/cnn_fmnist.pcg",
        "--data",
        "mnist5k",
        "--max-batches",
        "4",
    ];
    let mut bp = cnn.to_vec();
    bp.extend(["--method", "bp"]);
    one_and_two_agree("mpi-cnn-bp", &bp, 0.0);
    // Strict PC's errors at the first layers are small differences of O(1) values, so the
    // float rounding of the batch sum (in another order on two ranks) reaches their biases
    // (~1e-5 in size) at 1e-4 relative after a few steps: they are held to 1e-5 of 0.01,
    // a tenth of the smallest weight scale, that is to 1e-7 absolute.
    let mut strict = cnn.to_vec();
    strict.extend(["--mode", "strict", "--steps", "20", "--rate", "0.1"]);
    one_and_two_agree("mpi-cnn-strict", &strict, 1e-2);
}

#[test]
fn the_final_line_agrees_with_one_process() {
    let line = |o: &str| -> Vec<(String, String)> {
        let last = o.lines().find(|l| l.starts_with("final ")).unwrap_or("");
        last.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let args = ["run", "examples/mlp_digits.pcg", "--quiet"];
    let (one, two) = (line(&ok(&pcg(&args))), line(&ok(&mpirun(2, &args))));
    let get = |l: &[(String, String)], k: &str| -> f64 {
        l.iter().find(|(n, _)| n == k).unwrap().1.parse().unwrap()
    };
    for key in ["train_loss", "test_loss"] {
        let (a, b) = (get(&one, key), get(&two, key));
        assert!((a - b).abs() <= 1e-4 * a.abs(), "{key}: {a} vs {b}");
    }
    assert_eq!(get(&one, "test_acc"), get(&two, "test_acc"));
}

#[test]
fn resuming_on_two_ranks_ends_where_an_uninterrupted_run_does() {
    let (part, whole) = (
        scratch("mpi-resume", "part.npz"),
        scratch("mpi-resume", "whole.npz"),
    );
    let run = |epochs: &str, save: &Path, resume: Option<&Path>| {
        let mut a = vec![
            "run".to_string(),
            "examples/mlp_digits.pcg".into(),
            "--epochs".into(),
            epochs.into(),
            "--quiet".into(),
            "--save".into(),
            save.display().to_string(),
        ];
        if let Some(r) = resume {
            a.extend(["--resume".into(), r.display().to_string()]);
        }
        ok(&mpirun(
            2,
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
    };
    run("2", &part, None);
    run("4", &part, Some(&part));
    run("4", &whole, None);
    same_checkpoints(&part, &whole, 0.0, 0.0);
}

#[test]
fn a_batch_the_ranks_do_not_divide_is_refused_before_any_work() {
    let o = mpirun(
        2,
        &["run", "examples/mlp_digits.pcg", "--batch", "33", "--quiet"],
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("the batch of 33 examples cannot be shared evenly between 2 processes"),
        "{err}"
    );
    // Said once, not by every rank.
    assert_eq!(err.matches("cannot be shared evenly").count(), 1, "{err}");
    assert!(!text(&o.stdout).contains("epoch"), "no training happened");
}

#[test]
fn a_diverging_run_ends_every_rank_with_one_diagnostic() {
    let o = mpirun(
        2,
        &[
            "run",
            "examples/mlp_digits.pcg",
            "--mode",
            "strict",
            "--steps",
            "20",
            "--rate",
            "50",
            "--quiet",
        ],
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert_eq!(
        err.matches("training diverged").count(),
        1,
        "one report: {err}"
    );
    assert!(err.contains("relaxation step"), "where it diverged: {err}");
}

/// The pcg processes `mpirun` (process `parent`) started, with their ranks.
fn ranks_of(parent: u32) -> Vec<(u32, usize)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let rank = environ
            .split(|&b| b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("OMPI_COMM_WORLD_RANK="))
            .and_then(|r| r.parse().ok());
        if let Some(rank) = rank {
            found.push((pid, rank));
        }
    }
    found
}

#[test]
fn a_killed_rank_ends_the_job_and_the_last_checkpoint_loads() {
    let save = scratch("mpi-kill", "ckpt.npz");
    let _ = std::fs::remove_file(&save);
    let save_arg = save.display().to_string();
    let mut job = mpirun_command(
        2,
        &[
            "run",
            "examples/mlp_digits.pcg",
            "--epochs",
            "100000",
            "--save",
            &save_arg,
            "--quiet",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("mpirun starts");
    let began = Instant::now();
    while !save.exists() {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "no checkpoint written"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let victim = loop {
        if let Some(&(pid, _)) = ranks_of(job.id()).iter().find(|(_, r)| *r == 1) {
            break pid;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "rank 1 not found"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let killed = Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let at = Instant::now();
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        if at.elapsed() > Duration::from_secs(30) {
            let _ = job.kill();
            panic!("the job did not end after a rank was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "the job fails");
    assert!(at.elapsed() < Duration::from_secs(20), "within seconds");
    let o = pcg(&["eval", "examples/mlp_digits.pcg", "--params", &save_arg]);
    assert!(
        o.status.success(),
        "the last checkpoint loads: {}",
        text(&o.stderr)
    );
}

#[test]
fn eval_and_bench_run_on_two_ranks() {
    let save = scratch("mpi-eval", "p.npz");
    let save_arg = save.display().to_string();
    ok(&pcg(&[
        "run",
        "examples/mlp_digits.pcg",
        "--epochs",
        "2",
        "--save",
        &save_arg,
        "--quiet",
    ]));
    let one = ok(&pcg(&[
        "eval",
        "examples/mlp_digits.pcg",
        "--params",
        &save_arg,
    ]));
    let two = ok(&mpirun(
        2,
        &["eval", "examples/mlp_digits.pcg", "--params", &save_arg],
    ));
    assert_eq!(two.lines().count(), 1, "{two}");
    // The test set split between the ranks: the same figures, to the printed digits.
    let figures = |s: &str| -> Vec<f64> {
        s.split_whitespace()
            .filter_map(|kv| kv.split_once('=')?.1.parse().ok())
            .collect()
    };
    let (a, b) = (figures(&one), figures(&two));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 2e-6 + 1e-5 * x.abs(), "{one} vs {two}");
    }
    let bench = ok(&mpirun(
        2,
        &["bench", "examples/mlp_digits.pcg", "--iters", "5"],
    ));
    assert_eq!(bench.matches("bench model=").count(), 1, "{bench}");
}
