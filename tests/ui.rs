//! Diagnostics as the user sees them: every `tests/ui/*.pcg` is a small erroneous program
//! whose first line says what it shows. Each is checked with `pcg::sema::check_file` and the
//! rendered diagnostics (no colour, paths relative to the crate root) are snapshotted in
//! `tests/snapshots/ui__*.snap`.

use pcg::diag::Diagnostic;
use pcg::sema::{self, CompileOptions};
use std::path::{Path, PathBuf};

/// The error code each case must produce (among others it may report). Every file under
/// `tests/ui` is listed, so a new case cannot be added without saying what it is for.
const EXPECTED: &[(&str, &str)] = &[
    ("assign_unbound", "E0101"),
    ("conv_groups", "E0203"),
    ("pool_padding", "E0209"),
    ("argmax_scalar", "E0209"),
    ("bad_argument", "E0209"),
    ("bad_inference_momentum", "E0402"),
    ("bad_state_optimizer", "E0402"),
    ("bad_inference_schedule", "E0402"),
    ("bad_inference_target", "E0402"),
    ("bad_inference_tol", "E0402"),
    ("bad_initialiser", "E0301"),
    ("bad_input_range", "E0402"),
    ("bad_lr_schedule", "E0402"),
    ("bad_train_value", "E0402"),
    ("batch_zero", "E0402"),
    ("boolean_operator", "E0001"),
    ("broadcast_mismatch", "E0202"),
    ("clip_bounds", "E0209"),
    ("comparison_chain", "E0002"),
    ("conv1d_shapes", "E0203"),
    ("dropout_probability", "E0209"),
    ("duplicate_definition", "E0105"),
    ("duplicate_train_key", "E0105"),
    ("fractional_dimension", "E0204"),
    ("freeze_unknown", "E0402"),
    ("function_reads_caller_name", "E0101"),
    ("import_failed", "E0104"),
    ("index_out_of_range", "E0207"),
    ("inference_conflict", "E0402"),
    ("lexer_error", "E0001"),
    ("matmul_shape_mismatch", "E0201"),
    ("misplaced_statement", "E0108"),
    ("missing_loss", "E0302"),
    ("missing_loss_empty_loop", "E0302"),
    ("non_constant_loop_bound", "E0208"),
    ("orthogonal_vector", "E0301"),
    ("parse_recovery", "E0002"),
    ("parse_recovery_bindings", "E0002"),
    ("precision_unknown_and_bad", "E0402"),
    ("recursion", "E0107"),
    ("result_needs_return", "E0204"),
    ("return_shape_mismatch", "E0205"),
    ("shape_mismatch", "E0203"),
    ("signature_mismatch", "E0205"),
    ("stdlib_function_without_use", "E0102"),
    ("type_mismatch", "E0204"),
    ("unbound_dimension", "E0206"),
    ("unexpected_eof", "E0003"),
    ("unknown_function", "E0102"),
    ("unknown_model", "E0303"),
    ("unknown_module", "E0103"),
    ("unknown_name", "E0101"),
    ("unknown_train_key", "E0401"),
    ("unpack_tensor", "E0204"),
    ("wrong_arity", "E0106"),
    ("wrong_tuple_size", "E0204"),
];

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join("tests/ui"))
        .expect("tests/ui exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcg"))
        .map(|p| p.strip_prefix(root).expect("under the root").to_path_buf())
        .collect();
    paths.sort();
    paths
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

/// Checks one case; the path is relative, so the test must run from the crate root (cargo
/// does that), and the rendered file names are the same on every machine.
fn check(path: &Path) -> (pcg::source::Sources, Vec<Diagnostic>) {
    assert!(
        Path::new("tests/ui").is_dir(),
        "run from the crate root (cargo test does)"
    );
    let (sources, result) = sema::check_file(path, &CompileOptions::default());
    match result {
        Ok(models) => panic!(
            "{} compiled cleanly ({} models), but a ui case must fail",
            path.display(),
            models.len()
        ),
        Err(diagnostics) => (sources, diagnostics),
    }
}

#[test]
fn ui_cases_render_as_snapshotted() {
    let paths = cases();
    assert_eq!(
        paths.len(),
        EXPECTED.len(),
        "every tests/ui case needs an entry in EXPECTED: {paths:?}"
    );
    for path in paths {
        let name = stem(&path);
        let text = std::fs::read_to_string(&path).expect("readable case");
        let header = text.lines().next().unwrap_or("");
        assert!(
            header.starts_with("// "),
            "{}: the first line must be a comment saying what the case shows",
            path.display()
        );
        let (sources, diagnostics) = check(&path);
        assert!(
            !diagnostics.is_empty(),
            "{}: no diagnostics",
            path.display()
        );
        for d in &diagnostics {
            let span = d.primary_span().unwrap_or_else(|| {
                panic!("{}: `{}` has no primary label", path.display(), d.message)
            });
            let len = sources.text(span.file).len();
            assert!(
                span.start <= span.end && span.end as usize <= len,
                "{}: `{}` has a span outside its file",
                path.display(),
                d.message
            );
        }
        let expected = EXPECTED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, code)| *code)
            .unwrap_or_else(|| panic!("{name} is not listed in EXPECTED"));
        let codes: Vec<&str> = diagnostics.iter().map(|d| d.kind.code()).collect();
        assert!(
            codes.contains(&expected),
            "{}: expected {expected}, got {codes:?}",
            path.display()
        );
        let rendered = pcg::diag::render(&sources, &diagnostics);
        insta::with_settings!({ description => header.trim_start_matches("// ").to_string(), omit_expression => true }, {
            insta::assert_snapshot!(name, rendered);
        });
    }
}

/// The parser's recovery reports both bad statements of one file, not just the first.
#[test]
fn parse_recovery_reports_two_errors() {
    let (_, diagnostics) = check(Path::new("tests/ui/parse_recovery.pcg"));
    let syntax = diagnostics
        .iter()
        .filter(|d| d.kind.code() == "E0002")
        .count();
    assert!(
        syntax >= 2,
        "expected two syntax errors, got {diagnostics:#?}"
    );
}

/// A matmul mismatch labels both operands with their shapes.
#[test]
fn matmul_mismatch_labels_both_operands() {
    let (_, diagnostics) = check(Path::new("tests/ui/matmul_shape_mismatch.pcg"));
    let d = diagnostics
        .iter()
        .find(|d| d.kind.code() == "E0201")
        .expect("a matmul diagnostic");
    let shapes: Vec<&str> = d
        .labels
        .iter()
        .filter(|l| !l.primary)
        .map(|l| l.message.as_str())
        .collect();
    assert_eq!(shapes, ["has shape [4, 8]", "has shape [16, 2]"]);
}

/// The binary reports a ui case on stderr and exits with 1.
#[test]
fn pcg_check_fails_on_a_ui_case() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pcg"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check", "tests/ui/unknown_function.pcg"])
        .output()
        .expect("pcg runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error[E0102]"), "{stderr}");
    assert!(stderr.contains("did you mean `sigmoid`?"), "{stderr}");
}
