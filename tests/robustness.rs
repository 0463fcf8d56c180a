//! The front end never panics: whatever text it is given, `check_source` returns, and when it
//! rejects the text it says why with at least one diagnostic whose primary span lies inside
//! the file it points into.
//!
//! Inputs: random bytes, random sequences of the language's tokens (bare and inside a model
//! body, to reach semantic analysis), every example truncated at (a dense sample of) its char
//! boundaries, examples with bytes replaced, and a list of extreme values that once overflowed.

use pcg::diag::Diagnostic;
use pcg::sema::{self, CompileOptions, Compiled};
use pcg::source::Sources;
use proptest::prelude::*;
use std::path::Path;

type Checked = (Sources, Result<Vec<Compiled>, Vec<Diagnostic>>);

fn check(text: &str) -> Checked {
    sema::check_source("fuzz.pcg", text, &CompileOptions::default())
}

/// A rejected text has diagnostics, each with a primary span on char boundaries of its file.
fn assert_sound(text: &str, (sources, result): &Checked) {
    let Err(diagnostics) = result else {
        return;
    };
    assert!(
        !diagnostics.is_empty(),
        "rejected without a diagnostic: {text:?}"
    );
    for d in diagnostics {
        let span = d
            .primary_span()
            .unwrap_or_else(|| panic!("`{}` has no primary label, for {text:?}", d.message));
        let file = sources.text(span.file);
        assert!(
            span.start <= span.end
                && file.is_char_boundary(span.start as usize)
                && file.is_char_boundary(span.end as usize),
            "`{}` has span {}..{} outside its file of {} bytes, for {text:?}",
            d.message,
            span.start,
            span.end,
            file.len()
        );
    }
    // Rendering must not panic either.
    let _ = pcg::diag::render(sources, diagnostics);
}

fn assert_rejected(text: &str, checked: &Checked) {
    assert_sound(text, checked);
    assert!(checked.1.is_err(), "accepted an invalid file: {text:?}");
}

fn examples() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("examples/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcg"))
        .map(|p| {
            let name = p
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read_to_string(&p).expect("readable example"))
        })
        .collect();
    out.sort();
    out
}

/// The byte range of the first `model` item, from its keyword to just after its `}`.
fn model_range(text: &str) -> std::ops::Range<usize> {
    let start = if text.starts_with("model ") {
        0
    } else {
        text.find("\nmodel ").expect("a model") + 1
    };
    let end = start + text[start..].find("\n}").expect("a closing brace") + 2;
    start..end
}

/// The examples' lowering unrolls loops (the LSTM 50 times), so long files are sampled.
fn truncation_points(text: &str) -> Vec<usize> {
    let boundaries: Vec<usize> = (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect();
    let step = if text.contains("for ") {
        boundaries.len() / 200 + 1
    } else {
        1
    };
    boundaries.into_iter().step_by(step).collect()
}

#[test]
fn examples_check_cleanly() {
    for (name, text) in examples() {
        let (sources, result) = check(&text);
        if let Err(d) = result {
            panic!("{name}:\n{}", pcg::diag::render(&sources, &d));
        }
    }
}

#[test]
fn truncated_examples_never_panic() {
    for (name, text) in examples() {
        let model = model_range(&text);
        for cut in truncation_points(&text) {
            let prefix = &text[..cut];
            let checked = check(prefix);
            if cut > model.start && cut < model.end {
                // Inside the model item: its `}` is missing.
                assert_rejected(prefix, &checked);
            } else {
                assert_sound(prefix, &checked);
            }
            let _ = &name;
        }
    }
}

/// Deleting any one bracket outside a comment unbalances the file, which must be reported.
#[test]
fn examples_without_one_bracket_are_rejected() {
    for (name, text) in examples() {
        if text.contains("for ") {
            continue; // the unrolled examples are slow in debug builds; truncation covers them
        }
        let mut in_comment = false;
        let bytes = text.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\n' => in_comment = false,
                b'/' if bytes.get(i + 1) == Some(&b'/') => in_comment = true,
                b'{' | b'}' | b'(' | b')' | b'[' | b']' if !in_comment => {
                    let broken = format!("{}{}", &text[..i], &text[i + 1..]);
                    let checked = check(&broken);
                    assert!(checked.1.is_err(), "{name} without byte {i} was accepted");
                    assert_sound(&broken, &checked);
                }
                _ => {}
            }
        }
    }
}

/// Extreme values that used to overflow integer arithmetic or the stack. Each is rejected
/// with the given code.
#[test]
fn extreme_values_are_diagnosed() {
    let model = |body: &str| {
        format!(
            "model m {{\n  input x: [4, 8]\n  input img: [1, 1, 8, 8]\n  param k: [2, 1, 3, 3]\n  {body}\n}}\n"
        )
    };
    let deep = |open: &str, close: &str| {
        model(&format!(
            "loss sum({}x{})",
            open.repeat(2000),
            close.repeat(2000)
        ))
    };
    let cases: Vec<(String, &str)> = vec![
        (model("loss sum(x[9223372036854775807])"), "E0207"),
        (
            model("loss sum(x[-9223372036854775807..9223372036854775807])"),
            "E0207",
        ),
        (
            model("loss sum(reshape(x, [4294967296, 4294967296, 4]))"),
            "E0203",
        ),
        (
            model("loss sum(reshape(x, [-1, 4294967296, 4294967296]))"),
            "E0203",
        ),
        (
            "model m { input x: [4294967296, 4294967296, 4]\n loss mean(x) }".to_string(),
            "E0203",
        ),
        (
            model("loss sum(zeros([9223372036854775807, 9223372036854775807]))"),
            "E0203",
        ),
        (
            model("loss sum(broadcast(x, [9223372036854775807, 4, 8]))"),
            "E0203",
        ),
        (model("loss sum(one_hot(x, 9223372036854775807))"), "E0203"),
        (
            model("loss sum(zeros([1048576, 1]) + zeros([1, 1048576]) + zeros([1048576, 1, 1]))"),
            "E0203",
        ),
        (
            model("loss sum(conv2d(img, k, padding = 9223372036854775807))"),
            "E0209",
        ),
        (
            model("loss sum(transpose(x, [-9223372036854775807, 0]))"),
            "E0209",
        ),
        (
            model(
                "const N = -9223372036854775807 - 1\n  const M = -N\n  input z: [M]\n  loss sum(x)",
            ),
            "E0204",
        ),
        (
            model("for t in 0..9223372036854775807 { }\n  loss sum(x)"),
            "E0208",
        ),
        (model("loss sum(x) * 99999999999999999999"), "E0001"),
        (deep("-", ""), "E0109"),
        (deep("tanh(", ")"), "E0109"),
        (deep("x + ", ""), "E0109"),
        (deep("[", "][0]"), "E0109"),
        (
            model(&format!(
                "{}{}\n  loss sum(x)",
                "for t in 0..1 { ".repeat(500),
                "}".repeat(500)
            )),
            "E0109",
        ),
    ];
    for (text, code) in cases {
        let checked = check(&text);
        assert_rejected(&text, &checked);
        let Err(diagnostics) = &checked.1 else {
            unreachable!()
        };
        let codes: Vec<&str> = diagnostics.iter().map(|d| d.kind.code()).collect();
        let shown: String = text.chars().take(120).collect();
        assert!(
            codes.contains(&code),
            "{shown:?}: expected {code}, got {codes:?}"
        );
    }
}

/// Tokens of the language, for random token sequences.
const TOKENS: &[&str] = &[
    "use",
    "fn",
    "model",
    "train",
    "input",
    "target",
    "param",
    "let",
    "const",
    "loss",
    "for",
    "in",
    "return",
    "true",
    "false",
    "x",
    "y",
    "w",
    "h",
    "b",
    "B",
    "T",
    "m",
    "nn",
    "lstm",
    "tanh",
    "sum",
    "mean",
    "max",
    "relu",
    "zeros",
    "reshape",
    "concat",
    "transpose",
    "slice",
    "one_hot",
    "conv2d",
    "max_pool2d",
    "dim",
    "dense",
    "mse",
    "softmax",
    "lstm_cell",
    "normal",
    "xavier",
    "axis",
    "keepdims",
    "batch",
    "inference",
    "mode",
    "fixed",
    "optimizer",
    "sgd",
    "lr",
    "data",
    "digits",
    "0",
    "1",
    "2",
    "4",
    "8",
    "64",
    "-1",
    "0.5",
    "1e-3",
    "9223372036854775807",
    "\"nn.pcg\"",
    "\"missing.pcg\"",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ";",
    ":",
    "=",
    "->",
    "..",
    "+",
    "-",
    "*",
    "/",
    "@",
    "//",
    "\n",
    "$",
];

/// A prefix that gets random tokens into a model body, where semantic analysis runs.
const MODEL_HEAD: &str =
    "use nn\nconst T = 4\nmodel m {\n input x: [4, 8]\n target y: [4, 8]\n param w: [8, 8]\n let h = x @ w\n";

fn token_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..60).prop_map(|t| t.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert_sound(&text, &check(&text));
    }

    #[test]
    fn random_tokens_never_panic(tokens in token_text()) {
        assert_sound(&tokens, &check(&tokens));
    }

    #[test]
    fn random_model_bodies_never_panic(tokens in token_text(), close in any::<bool>()) {
        let text = format!("{MODEL_HEAD}{tokens}{}", if close { "\n loss mse(h, y)\n}\n" } else { "" });
        let checked = check(&text);
        if close {
            assert_sound(&text, &checked);
        } else {
            assert_rejected(&text, &checked);
        }
    }

    #[test]
    fn corrupted_examples_never_panic(
        which in 0usize..7,
        edits in proptest::collection::vec(
            (any::<proptest::sample::Index>(), proptest::sample::select(&[
                "", " ", "\n", "{", "}", "(", ")", "[", "]", ",", "=", "@", "-", "..", "0", "9",
                "x", "B", "\"", "$", "é", "//", "let", "fn",
            ][..])),
            1..4,
        ),
    ) {
        let all = examples();
        let (_, original) = &all[which % all.len()];
        let mut text = original.clone();
        for (at, replacement) in edits {
            let mut i = at.index(text.len().max(1));
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            let end = text[i..].chars().next().map_or(i, |c| i + c.len_utf8());
            text.replace_range(i..end, replacement);
        }
        assert_sound(&text, &check(&text));
    }
}

/// `pcg check` on a truncated file prints a diagnostic and exits with 1.
#[test]
fn pcg_check_rejects_truncated_files() {
    let dir = std::env::temp_dir().join(format!("pcg-robustness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let examples = examples();
    let cases: Vec<(&str, Vec<u8>)> = examples
        .iter()
        .filter(|(name, _)| name == "mlp_digits.pcg" || name == "toy_graph.pcg")
        .map(|(name, text)| (name.as_str(), text.as_bytes()[..text.len() / 2].to_vec()))
        .chain(std::iter::once((
            "not_utf8.pcg",
            vec![b'm', 0xff, 0xfe, b'{'],
        )))
        .collect();
    assert_eq!(cases.len(), 3);
    for (name, bytes) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("writable");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pcg"))
            .arg("check")
            .arg(&path)
            .output()
            .expect("pcg runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains("error["), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Nesting far past the limit — hundreds of thousands of levels, more than any stack holds if
/// the tree were walked or freed recursively — is one diagnostic, not a crash; and a file with
/// many errors shows the first 50 and counts the rest.
#[test]
fn nesting_deeper_than_any_stack_is_diagnosed() {
    const LEVELS: usize = 300_000;
    let forms = [
        ("-", ""),
        ("-(", ")"),
        ("[", "]"),
        ("tanh(", ")"),
        ("x + ", ""),
    ];
    for (open, close) in forms {
        let text = format!(
            "model m {{\n  input x: [4]\n  loss sum({}x{})\n}}\n",
            open.repeat(LEVELS),
            close.repeat(LEVELS)
        );
        let checked = check(&text);
        let (_, result) = &checked;
        let codes: Vec<&str> = match result {
            Ok(_) => panic!("`{open}` nested {LEVELS} deep was accepted"),
            Err(diagnostics) => diagnostics.iter().map(|d| d.kind.code()).collect(),
        };
        assert!(codes.contains(&"E0109"), "`{open}`: {codes:?}");
    }
    let many = format!(
        "model m {{\n  input x: [4]\n  loss sum({}x{})\n}}\n",
        "undefined_f(".repeat(100),
        ")".repeat(100)
    );
    let (sources, result) = check(&many);
    let diagnostics = result.expect_err("unknown functions");
    assert!(diagnostics.len() > 50);
    let rendered = pcg::diag::render(&sources, &diagnostics);
    assert_eq!(rendered.matches("error[").count(), 50);
    let rest = format!("error: {} more errors not shown", diagnostics.len() - 50);
    assert!(rendered.contains(&rest), "{rest}");
}
