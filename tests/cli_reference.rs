//! The book's command-line chapter (`docs/book/src/cli.md`) is generated from the CLI's clap
//! definitions and must match them. After changing a command or a flag, regenerate it with
//! `PCG_BLESS=1 cargo test --release --test cli_reference`.

use std::path::Path;

#[test]
fn the_cli_chapter_matches_the_cli() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/book/src/cli.md");
    let generated = pcg::cli::reference_markdown();
    if std::env::var_os("PCG_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write the chapter");
        return;
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == generated,
        "docs/book/src/cli.md is out of date: run `PCG_BLESS=1 cargo test --release --test \
         cli_reference`"
    );
    for command in [
        "check",
        "ir",
        "run",
        "grad",
        "fmt",
        "lsp",
        "gradcheck",
        "bench",
        "eval",
    ] {
        assert!(
            generated.contains(&format!("## pcg {command}\n")),
            "{command}"
        );
    }
    assert!(generated.contains("`--check`"));
}
