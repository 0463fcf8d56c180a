//! Feeds arbitrary bytes, read as UTF-8 with invalid sequences replaced, through the whole
//! front end. Any panic or stack overflow is a bug: the front end must answer every input with
//! either a compiled model or diagnostics, and the diagnostics must render.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcg::sema::{check_source, CompileOptions};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (sources, result) = check_source("fuzz.pcg", &text, &CompileOptions::default());
    if let Err(diagnostics) = result {
        assert!(!diagnostics.is_empty(), "rejected without a diagnostic");
        let _ = pcg::diag::render(&sources, &diagnostics);
    }
});
