//! The language's tools: `pcg fmt` (the formatter over files) and `pcg lsp` (the language
//! server on stdin and stdout).

use super::{emit, fail, CmdResult, Reported};
use crate::diag;
use crate::source::Sources;
use crate::syntax::format;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// `pcg fmt [--check] FILE...`: formats each file in place (a directory: every `.pcg` file
/// under it; `-`: standard input to standard output). With `--check`, changes nothing and
/// fails if a file is not formatted, naming it and its first line that differs.
pub(super) fn fmt(paths: &[PathBuf], check: bool) -> CmdResult {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            pcg_files(path, &mut files).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        } else {
            files.push(path.clone());
        }
    }
    let mut failed = false;
    for file in &files {
        if file.as_os_str() == "-" {
            failed |= fmt_stdin(check).is_err();
            continue;
        }
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                fail(format!("cannot read `{}`: {e}", file.display()));
                failed = true;
                continue;
            }
        };
        let Some(formatted) = format_or_report(&file.display().to_string(), &text) else {
            failed = true;
            continue;
        };
        if formatted == text {
            continue;
        }
        if check {
            let line = first_difference(&text, &formatted);
            emit(&format!(
                "{}:{line}: not formatted (`pcg fmt {}` formats it)\n",
                file.display(),
                file.display()
            ));
            failed = true;
        } else if let Err(e) = write_atomically(file, &formatted) {
            fail(format!("cannot write `{}`: {e}", file.display()));
            failed = true;
        } else {
            emit(&format!("formatted {}\n", file.display()));
        }
    }
    if failed {
        Err(Reported)
    } else {
        Ok(())
    }
}

fn fmt_stdin(check: bool) -> CmdResult {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| fail(format!("cannot read standard input: {e}")))?;
    let formatted = format_or_report("<stdin>", &text).ok_or(Reported)?;
    if check {
        if formatted != text {
            let line = first_difference(&text, &formatted);
            emit(&format!("<stdin>:{line}: not formatted\n"));
            return Err(Reported);
        }
        return Ok(());
    }
    let _ = std::io::stdout().lock().write_all(formatted.as_bytes());
    Ok(())
}

/// The formatted text, or `None` after printing why the file cannot be formatted.
fn format_or_report(name: &str, text: &str) -> Option<String> {
    let mut sources = Sources::new();
    let id = sources.add(name, text);
    match format::format_source(id, text) {
        Ok(formatted) => Some(formatted),
        Err(diagnostics) => {
            diag::emit_to_stderr(&sources, &diagnostics);
            None
        }
    }
}

/// The 1-based number of the first line where the two texts differ.
fn first_difference(a: &str, b: &str) -> usize {
    let mut lines = a.lines().zip(b.lines());
    let same = lines.by_ref().take_while(|(x, y)| x == y).count();
    same + 1
}

/// The `.pcg` files under `dir`, in order.
fn pcg_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            pcg_files(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "pcg") {
            out.push(path);
        }
    }
    Ok(())
}

/// Replaces the file by writing a sibling and renaming it over the original, so that an
/// interrupted write never leaves half a file.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.fmt.tmp"));
    std::fs::write(&tmp, text)?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path)
}

/// `pcg lsp`: the language server on stdin and stdout, until the editor shuts it down.
pub(super) fn lsp() -> CmdResult {
    crate::lsp::serve_stdio().map_err(|e| fail(format!("language server: {e}")))
}
