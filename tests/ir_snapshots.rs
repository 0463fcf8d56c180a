//! Snapshots of the forward IR of every example: a change in lowering, naming, regions or
//! shapes shows up as a reviewable diff of `tests/snapshots/ir_snapshots__*.snap`. Loops are
//! kept as scans wherever they can be (`--loops scan`), so that a snapshot shows a loop's body
//! once; which loops the default policy unrolls is tested apart.

use pcg::sema::{self, CompileOptions, Compiled, LoopPolicy};
use std::path::{Path, PathBuf};

/// The examples, sorted, as paths relative to the crate root (so snapshots do not depend on
/// where the checkout lives).
fn examples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join("examples"))
        .expect("examples/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcg"))
        .map(|p| p.strip_prefix(root).expect("under the root").to_path_buf())
        .collect();
    paths.sort();
    paths
}

fn compile(path: &Path) -> Compiled {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let options = CompileOptions {
        loops: LoopPolicy::Scan,
        ..CompileOptions::default()
    };
    let (sources, result) = sema::compile_file(&full, &options);
    match result {
        Ok(c) => c,
        Err(diagnostics) => panic!(
            "{} does not compile:\n{}",
            path.display(),
            pcg::diag::render(&sources, &diagnostics)
        ),
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_example_has_an_ir_snapshot() {
    let paths = examples();
    assert!(paths.len() >= 7, "expected the examples, found {paths:?}");
    for path in paths {
        let program = compile(&path).forward;
        insta::with_settings!({ description => path.display().to_string(), omit_expression => true }, {
            insta::assert_snapshot!(format!("ir_{}", stem(&path)), pcg::ir::to_text(&program));
        });
    }
}

#[test]
fn dot_of_mlp_digits_and_toy_graph() {
    for name in ["mlp_digits", "toy_graph"] {
        let path = PathBuf::from("examples").join(format!("{name}.pcg"));
        let program = compile(&path).forward;
        insta::with_settings!({ description => path.display().to_string(), omit_expression => true }, {
            insta::assert_snapshot!(format!("dot_{name}"), pcg::ir::to_dot(&program));
        });
    }
}

/// The binary prints exactly what the library's printer gives.
#[test]
fn pcg_ir_prints_the_snapshotted_text() {
    let program = compile(Path::new("examples/toy_graph.pcg")).forward;
    assert_eq!(
        pcg_ir("examples/toy_graph.pcg", "ir", &[]),
        pcg::ir::to_text(&program)
    );
}

/// `--dim` binds a dimension variable and overrides a `const` of the same name.
#[test]
fn dim_overrides_a_const() {
    let input_shape = |dims: &[(&str, usize)]| {
        let options = CompileOptions {
            batch: Some(2),
            dims: dims.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
            ..Default::default()
        };
        let (_, compiled) =
            sema::compile_file(Path::new("examples/lstm_shakespeare.pcg"), &options);
        let forward = compiled.expect("compiles").forward;
        let (x, _) = forward.leaves(pcg::ir::LeafKind::Input)[0];
        forward.shape(x).dims().to_vec()
    };
    assert_eq!(input_shape(&[]), [2, 50, 73]);
    assert_eq!(input_shape(&[("T", 10), ("V", 42)]), [2, 10, 42]);
}

/// What `pcg ir FILE --stage STAGE FLAGS` prints, after checking it succeeded.
fn pcg_ir(file: &str, stage: &str, flags: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pcg"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["ir", file, "--stage", stage])
        .args(flags)
        .output()
        .expect("pcg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pcg ir --stage pc` takes the relaxation flags of `run`: the header names the mode, steps and
/// rate asked for and the evaluation that mode gets.
#[test]
fn pcg_ir_takes_the_relaxation_flags() {
    let header = |flags: &[&str]| {
        let text = pcg_ir("examples/mlp_digits.pcg", "pc", flags);
        text.lines().take(2).collect::<Vec<_>>().join("\n")
    };
    let strict = header(&["--mode", "strict", "--steps", "7", "--rate", "0.25"]);
    assert!(
        strict.contains("mode strict, 7 steps of rate 0.25"),
        "{strict}"
    );
    assert!(strict.contains("simulated step by step"), "{strict}");
    let exact = header(&["--mode", "exact"]);
    assert!(exact.contains("mode exact"), "{exact}");
    assert!(exact.contains("one reverse sweep"), "{exact}");
}

/// `pcg ir --stage plan --method bp|pc` prints the plan of that method's training step, not
/// only the train block's.
#[test]
fn pcg_ir_plan_takes_the_method() {
    let first_line = |flags: &[&str]| {
        let text = pcg_ir("examples/mlp_digits.pcg", "plan", flags);
        text.lines().next().unwrap_or_default().to_string()
    };
    let bp = first_line(&["--method", "bp"]);
    assert!(bp.contains("mlp_grad"), "{bp}");
    let pc = first_line(&["--method", "pc"]);
    assert!(pc.contains("relaxation solved in closed form"), "{pc}");
    assert_eq!(first_line(&[]), pc, "mlp_digits trains by PC");
}

/// The default loop policy keeps a long loop a scan and unrolls a small one; `--loops` overrides
/// it, and `pcg ir` says which was chosen and why.
#[test]
fn loop_policy_is_chosen_and_stated() {
    let notes = |file: &str, dims: &[(&str, usize)], loops: LoopPolicy| {
        let options = CompileOptions {
            loops,
            dims: dims.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
            ..CompileOptions::default()
        };
        let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let (_, result) = sema::compile_file(&full, &options);
        result.unwrap_or_else(|_| panic!("{file} compiles")).loops
    };
    // A loop over a sequence stays a scan from 32 steps on, however small its body.
    let short = notes(
        "examples/lstm_shakespeare.pcg",
        &[("T", 16)],
        LoopPolicy::Auto,
    );
    assert!(
        !short[0].scan && short[0].why.contains("small"),
        "{}",
        short[0].describe()
    );
    let sequence = notes("examples/lstm_shakespeare.pcg", &[], LoopPolicy::Auto);
    assert!(
        sequence[0].scan && sequence[0].why.contains("sequence"),
        "{}",
        sequence[0].describe()
    );
    let lstm = notes(
        "examples/lstm_shakespeare.pcg",
        &[("T", 200)],
        LoopPolicy::Auto,
    );
    assert_eq!(lstm.len(), 1);
    assert!(lstm[0].scan, "{}", lstm[0].describe());
    assert_eq!(
        (lstm[0].var.as_str(), lstm[0].trips, lstm[0].line),
        ("t", 200, 20)
    );

    let small = notes("examples/resnet_deep.pcg", &[], LoopPolicy::Auto);
    assert!(
        !small[0].scan && small[0].why.contains("small"),
        "{}",
        small[0].describe()
    );
    let deep = notes("examples/resnet_deep.pcg", &[("L", 1024)], LoopPolicy::Auto);
    assert!(
        deep[0].scan && deep[0].trips == 1024,
        "{}",
        deep[0].describe()
    );
    let kept = notes("examples/resnet_deep.pcg", &[], LoopPolicy::Scan);
    assert!(kept[0].scan, "{}", kept[0].describe());
    let unrolled = notes("examples/lstm_shakespeare.pcg", &[], LoopPolicy::Unroll);
    assert!(!unrolled[0].scan, "{}", unrolled[0].describe());

    for stage in ["ir", "grad", "pc"] {
        let text = pcg_ir("examples/lstm_shakespeare.pcg", stage, &["--dim", "T=200"]);
        assert!(
            text.lines()
                .any(|l| l.starts_with("// loop `for t` (line 20, 200 iterations): a scan")),
            "--stage {stage}:\n{}",
            &text[..text.len().min(400)]
        );
    }
    let text = pcg_ir("examples/resnet_deep.pcg", "ir", &["--loops", "unroll"]);
    assert!(
        text.contains("unrolled, as `--loops unroll` asks"),
        "{}",
        &text[..400]
    );
    assert!(!text.contains("scan["));
}
