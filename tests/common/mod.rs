//! Helpers shared by the tests that run the `pcg` binary.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `pcg` with the given arguments and captures its output.
pub fn pcg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pcg"))
        .args(args)
        .output()
        .expect("pcg runs")
}

/// A path in a scratch directory of this test process (`group` keeps test files apart).
pub fn scratch(group: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pcg-{group}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// Captured output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
