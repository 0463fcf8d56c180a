//! The language reference stays true: every ```pcg block of `docs/book/src/language.md` (the
//! book's reference chapter), of the tutorial and of the README is checked with
//! `check_source`. A block fenced ```pcg must check
//! cleanly; a block fenced ```pcg,error E0201 must fail with that code. The reference must also list every error code
//! of `src/diag.rs` and every builtin of `src/sema/builtins.rs`.

use pcg::sema::{self, CompileOptions};
use std::path::Path;

struct Block {
    line: usize,
    expected_error: Option<String>,
    code: String,
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

fn pcg_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start();
        match current.take() {
            None => {
                if let Some(info) = fence.strip_prefix("```pcg") {
                    let expected_error = info
                        .trim()
                        .strip_prefix(",error")
                        .map(|code| code.trim().to_string());
                    assert!(
                        info.trim().is_empty() || expected_error.is_some(),
                        "line {}: unknown fence info `pcg{info}`",
                        i + 1
                    );
                    current = Some(Block {
                        line: i + 1,
                        expected_error,
                        code: String::new(),
                    });
                }
            }
            Some(mut block) => {
                if fence.starts_with("```") {
                    blocks.push(block);
                } else {
                    block.code.push_str(line);
                    block.code.push('\n');
                    current = Some(block);
                }
            }
        }
    }
    assert!(current.is_none(), "an unclosed ```pcg block");
    blocks
}

#[test]
fn every_pcg_block_checks_as_fenced() {
    let markdown = read("docs/book/src/language.md");
    assert!(pcg_blocks(&markdown).len() >= 20, "only a few pcg blocks");
    let mut failures = Vec::new();
    // The reference, the tutorial (its model is trained as shown), the README's taste and
    // the model `pcg import` writes in the ONNX chapter, and the muPC model of the chapter on
    // standard PC at depth.
    for file in [
        "docs/book/src/language.md",
        "docs/book/src/tutorial.md",
        "README.md",
        "docs/book/src/interop.md",
        "docs/book/src/deep.md",
    ] {
        check_blocks(file, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn check_blocks(file: &str, failures: &mut Vec<String>) {
    let markdown = read(file);
    let blocks = pcg_blocks(&markdown);
    assert!(!blocks.is_empty(), "{file} has no pcg block");
    for block in &blocks {
        let name = format!("{file}:{}", block.line);
        let (sources, result) = sema::check_source(&name, &block.code, &CompileOptions::default());
        match (&block.expected_error, result) {
            (None, Ok(_)) => {}
            (None, Err(diagnostics)) => failures.push(format!(
                "{name}: should check cleanly:\n{}",
                pcg::diag::render(&sources, &diagnostics)
            )),
            (Some(code), Ok(_)) => failures.push(format!("{name}: should fail with {code}")),
            (Some(code), Err(diagnostics)) => {
                let codes: Vec<&str> = diagnostics.iter().map(|d| d.kind.code()).collect();
                if !codes.contains(&code.as_str()) {
                    failures.push(format!(
                        "{name}: should fail with {code}, got {codes:?}:\n{}",
                        pcg::diag::render(&sources, &diagnostics)
                    ));
                }
            }
        }
    }
}

/// Every `"E...."` code in `src/diag.rs` appears in the reference's table of error codes.
#[test]
fn every_error_code_is_documented() {
    let markdown = read("docs/book/src/language.md");
    let diag = read("src/diag.rs");
    let codes: Vec<&str> = diag
        .split('"')
        .filter(|s| {
            s.len() == 5 && s.starts_with('E') && s[1..].bytes().all(|b| b.is_ascii_digit())
        })
        .collect();
    assert!(codes.len() >= 25, "found only {codes:?}");
    for code in codes {
        assert!(
            markdown.contains(&format!("| {code} |")),
            "{code} is missing from the error table of docs/book/src/language.md"
        );
    }
}

/// Every builtin (`src/sema/builtins.rs`) has a row in the reference's builtin tables.
#[test]
fn every_builtin_is_documented() {
    let markdown = read("docs/book/src/language.md");
    let names = pcg::sema::BUILTINS;
    assert!(names.len() >= 30, "found only {names:?}");
    for name in names {
        assert!(
            markdown.contains(&format!("| `{name}(")),
            "builtin `{name}` is missing from docs/book/src/language.md"
        );
    }
}
