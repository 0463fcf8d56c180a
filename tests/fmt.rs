//! The formatter (`pcg fmt`): one canonical layout, the same program, every comment kept.
//!
//! `format_source` itself refuses to return text that parses to another tree or holds other
//! comments; these tests add that its layout is a fixed point (formatting twice changes
//! nothing), that it does not depend on the input's spacing (a copy of each file with its
//! whitespace mangled formats to the same text), that comments anywhere between tokens survive,
//! that the repository's own programs are formatted, and that no input makes it panic.

use pcg::syntax::format::format_source;
use pcg::syntax::lexer::{self, Token};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.pcg` file under `dir`, sorted.
fn pcg_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("readable directory") {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "pcg") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The programs the repository keeps formatted (`.ci/run` checks them with `pcg fmt --check`):
/// the examples, the stdlib, the benchmark model and the random-program regressions.
fn formatted_files() -> Vec<(String, String)> {
    [
        "examples",
        "stdlib",
        "benches",
        "tests/random_regressions",
        "tests/ops",
    ]
    .iter()
    .flat_map(|d| pcg_files(&root().join(d)))
    .map(|p| {
        let name = p.strip_prefix(root()).unwrap().display().to_string();
        (name, std::fs::read_to_string(&p).expect("readable file"))
    })
    .collect()
}

/// Formats, panicking with the diagnostics if the text cannot be formatted.
fn format(name: &str, text: &str) -> String {
    match format_source(0, text) {
        Ok(t) => t,
        Err(d) => {
            let mut sources = pcg::source::Sources::new();
            sources.add(name, text);
            panic!(
                "{name}: {}\ninput:\n{text}",
                pcg::diag::render(&sources, &d)
            );
        }
    }
}

#[test]
fn the_repository_programs_are_formatted() {
    let files = formatted_files();
    assert!(files.len() >= 18, "only {} files", files.len());
    for (name, text) in files {
        let formatted = format(&name, &text);
        if formatted != text {
            let line = text
                .lines()
                .zip(formatted.lines())
                .take_while(|(a, b)| a == b)
                .count();
            panic!(
                "{name} is not formatted (first difference at line {}): run `pcg fmt {name}`",
                line + 1
            );
        }
    }
}

#[test]
fn formatting_is_a_fixed_point() {
    let mut files = formatted_files();
    // The diagnostics cases that parse: odd layouts on purpose.
    for p in pcg_files(&root().join("tests/ui")) {
        let text = std::fs::read_to_string(&p).unwrap();
        files.push((p.display().to_string(), text));
    }
    let mut formatted = 0;
    for (name, text) in files {
        let Ok(once) = format_source(0, &text) else {
            continue;
        };
        assert_eq!(
            format(&name, &once),
            once,
            "{name}: formatting twice changed it"
        );
        formatted += 1;
    }
    assert!(formatted >= 50, "only {formatted} files formatted");
}

/// Whether two tokens would run together without a space between them.
fn words(a: &Token, b: &Token) -> bool {
    let word = |t: &Token| {
        !matches!(
            t,
            Token::LBrace
                | Token::RBrace
                | Token::LParen
                | Token::RParen
                | Token::LBracket
                | Token::RBracket
                | Token::Comma
                | Token::Semi
                | Token::Colon
                | Token::Eq
                | Token::Arrow
                | Token::DotDot
                | Token::Plus
                | Token::Minus
                | Token::Star
                | Token::Slash
                | Token::At
        )
    };
    word(a) && word(b)
}

/// `text` with the whitespace between its tokens replaced at random: spaces dropped where
/// tokens stay apart without them, added or turned into tabs, indentation changed, line breaks
/// between code joined or added, blank lines multiplied. Comments, and whether a blank line
/// separates two things, are kept.
fn mangle(text: &str, rng: &mut ChaCha8Rng) -> String {
    let tokens = lexer::lex(text);
    let mut out = String::new();
    let mut at = 0;
    let mut prev: Option<&Token> = None;
    for (start, token, end) in
        tokens
            .iter()
            .map(|(s, t, e)| (*s, Some(t), *e))
            .chain([(text.len(), None, text.len())])
    {
        let gap = &text[at..start];
        let spaces = |rng: &mut ChaCha8Rng, least: usize| -> String {
            (0..rng.random_range(least..least + 3))
                .map(|_| if rng.random_bool(0.2) { '\t' } else { ' ' })
                .collect()
        };
        if gap.contains("//") {
            // Keep each line's comment; change only the blanks around it.
            for (i, line) in gap.split('\n').enumerate() {
                if i > 0 {
                    out.push('\n');
                    out.push_str(&spaces(rng, 0));
                }
                let trimmed = line.trim();
                if !trimmed.is_empty() {
                    out.push_str(&spaces(rng, 1));
                    out.push_str(trimmed);
                }
            }
        } else {
            let newlines = gap.matches('\n').count();
            let apart = match (prev, token) {
                (Some(a), Some(b)) => words(a, b),
                _ => false,
            };
            match newlines {
                0 if rng.random_bool(0.1) && prev.is_some() && token.is_some() => {
                    out.push('\n');
                    out.push_str(&spaces(rng, 0));
                }
                0 => out.push_str(&spaces(rng, usize::from(apart))),
                1 if rng.random_bool(0.3) => out.push_str(&spaces(rng, 1)),
                1 => {
                    out.push('\n');
                    out.push_str(&spaces(rng, 0));
                }
                _ => {
                    for _ in 0..rng.random_range(2..4) {
                        out.push_str(&spaces(rng, 0));
                        out.push('\n');
                    }
                    out.push_str(&spaces(rng, 0));
                }
            }
        }
        out.push_str(&text[start..end]);
        at = end;
        prev = token;
    }
    out
}

#[test]
fn mangled_whitespace_formats_back() {
    let mut rng = ChaCha8Rng::seed_from_u64(27);
    for (name, text) in formatted_files() {
        let expected = format(&name, &text);
        for round in 0..8 {
            let mangled = mangle(&text, &mut rng);
            let got = format(&name, &mangled);
            assert_eq!(
                got, expected,
                "{name}, round {round}: the mangled copy formats differently; mangled:\n{mangled}"
            );
        }
    }
}

/// `text` with comments put between tokens at random, after the code on a line or on lines
/// of their own.
fn with_comments(text: &str, rng: &mut ChaCha8Rng, count: usize) -> String {
    let tokens = lexer::lex(text);
    let mut cuts: Vec<usize> = (0..count)
        .map(|_| tokens[rng.random_range(0..tokens.len())].2)
        .collect();
    cuts.sort();
    cuts.dedup();
    let mut out = String::new();
    let mut at = 0;
    for (k, cut) in cuts.into_iter().enumerate() {
        out.push_str(&text[at..cut]);
        if rng.random_bool(0.5) {
            out.push_str(&format!(" // note {k}\n"));
        } else {
            out.push_str(&format!("\n// note {k}\n"));
        }
        at = cut;
    }
    out.push_str(&text[at..]);
    out
}

#[test]
fn comments_anywhere_are_kept_and_stable() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (name, text) in formatted_files() {
        for round in 0..12 {
            let commented = with_comments(&text, &mut rng, 1 + round % 6);
            // `format_source` checks the tree and the comments itself.
            let once = format(&name, &commented);
            let twice = format(&name, &once);
            assert_eq!(
                twice, once,
                "{name}, round {round}: not a fixed point; input:\n{commented}\nonce:\n{once}"
            );
        }
    }
}

/// Every ```pcg block of the language reference formats to the same program, and stays put
/// when formatted again.
#[test]
fn docs_blocks_format_to_the_same_program() {
    let markdown = std::fs::read_to_string(root().join("docs/book/src/language.md"))
        .expect("the language reference");
    let mut blocks = 0;
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.take() {
            None if line.trim_start().starts_with("```pcg") => current = Some(String::new()),
            None => {}
            Some(block) if line.trim_start().starts_with("```") => {
                if let Ok(once) = format_source(0, &block) {
                    assert_eq!(format("docs block", &once), once, "block:\n{block}");
                    blocks += 1;
                }
            }
            Some(mut block) => {
                block.push_str(line);
                block.push('\n');
                current = Some(block);
            }
        }
    }
    assert!(blocks >= 20, "only {blocks} blocks formatted");
}

/// A truncated file either formats or is refused with diagnostics; nothing panics.
#[test]
fn truncated_files_never_panic() {
    for (_, text) in formatted_files() {
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .step_by(3)
            .collect();
        for cut in cuts {
            if let Err(d) = format_source(0, &text[..cut]) {
                assert!(!d.is_empty());
            }
        }
    }
}

#[test]
fn deep_nesting_is_refused_not_a_crash() {
    let text = format!(
        "model m {{\n    input x: [2]\n    loss sum({}x{})\n}}\n",
        "tanh(".repeat(5000),
        ")".repeat(5000)
    );
    let err = format_source(0, &text).expect_err("too deep to format");
    assert_eq!(err[0].kind.code(), "E0109");
}

#[test]
fn the_layout_rules() {
    let messy = "use nn;use conv\n\n\n\nmodel m{input x:[B,4] target y:[B,2]\nparam w:[4,2]=xavier param b:[2]=zeros\n  let (a,b2)=(x@w+b,-x)   // pair\n  for t in 0..3{a=tanh(a)}\nloss mse(a,y)}\ntrain m{batch=8 inference{mode=strict,steps=4}method=pc}\n";
    let expected = "\
use nn
use conv

model m {
    input  x: [B, 4]
    target y: [B, 2]
    param  w: [4, 2] = xavier
    param  b: [2]    = zeros
    let (a, b2) = (x @ w + b, -x)  // pair
    for t in 0..3 {
        a = tanh(a)
    }
    loss mse(a, y)
}

train m {
    batch  = 8
    inference { mode = strict, steps = 4 }
    method = pc
}
";
    // No blank line between `model` and `train` in the input: none is added.
    let got = format("rules", messy);
    assert_eq!(got, expected.replace("}\n\ntrain", "}\ntrain"));
    // Parentheses as written, and the ones a one-element tuple needs.
    let kept = "fn f(x) {\n    let a = (x + 1) * 2\n    let b = ((x))\n    return (a,)\n}\n";
    assert_eq!(
        format("parens", kept),
        "fn f(x) {\n    let a = (x + 1) * 2\n    let b = (x)\n    return (a,)\n}\n"
    );
}

#[test]
fn long_calls_break_and_pack_their_arguments() {
    let args: Vec<String> = (0..30).map(|i| format!("w{i}")).collect();
    let text = format!(
        "fn f(x) {{\n    let h = g({})\n    h\n}}\n",
        args.join(", ")
    );
    let got = format("long", &text);
    assert!(got.lines().all(|l| l.len() <= 100), "{got}");
    assert!(got.contains("    let h = g(\n        w0, w1,"), "{got}");
    assert!(got.contains("w29,\n    )\n"), "{got}");
}

#[test]
fn the_cli_checks_and_rewrites() {
    let dir = std::env::temp_dir().join(format!("pcg-fmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("m.pcg");
    std::fs::write(&file, "model m { input x: [2]\n loss sum(x) }\n").unwrap();
    let pcg = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pcg"))
            .args(args)
            .output()
            .expect("pcg runs")
    };
    let path = file.to_str().unwrap();
    let check = pcg(&["fmt", "--check", path]);
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("m.pcg:1: not formatted"));
    let write = pcg(&["fmt", path]);
    assert!(write.status.success());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "model m {\n    input x: [2]\n    loss sum(x)\n}\n"
    );
    assert!(pcg(&["fmt", "--check", dir.to_str().unwrap()])
        .status
        .success());
    std::fs::write(&file, "model m { input x: [2] loss sum(x) \n").unwrap();
    let broken = pcg(&["fmt", path]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&broken.stderr).contains("error[E0003]"));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "model m { input x: [2] loss sum(x) \n",
        "a file that does not parse is left alone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
