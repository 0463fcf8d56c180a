//! The predictive-coding transform against backprop.

use pcg::gradcheck;
use pcg::interp::Bindings;
use pcg::sema::{self, CompileOptions, InferenceConfig, Mode};
use std::path::Path;

fn forward(path: &str, batch: Option<usize>) -> pcg::ir::Program {
    let options = CompileOptions { batch, ..Default::default() };
    let (_, compiled) = sema::compile_file(Path::new(path), &options);
    compiled.expect("example compiles").forward
}

fn toy_leaves() -> Bindings<f64> {
    let mut b = Bindings::new();
    b.insert("y0".into(), ndarray::arr0(5.0).into_dyn());
    b.insert("theta".into(), ndarray::arr0(2.0).into_dyn());
    b
}

#[test]
fn toy_graph_matches_the_paper() {
    let f = forward("examples/toy_graph.pcg", None);
    for (rate, within) in [(0.1, 68), (0.5, 11)] {
        let cfg = InferenceConfig { mode: Mode::Fixed, steps: within, rate, ..Default::default() };
        let report = gradcheck::run(&f, &cfg, None, &toy_leaves()).expect("gradcheck runs");
        let dy0 = report.inputs.iter().find(|(n, _)| n == "y0").expect("message to y0").1;
        // The message to y0 is -dL/dy0.
        let rel = ((-dy0) - (-11.3705)).abs() / 11.3705;
        assert!(rel < 1e-3, "rate {rate}: dL/dy0 = {} after {within} steps", -dy0);
        eprintln!("rate {rate}: max rel err {}", report.max_rel_err());
    }
}
