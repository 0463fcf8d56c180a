//! The predictive-coding transform against backprop: the paper's toy graph, and every example
//! in fixed, exact and strict modes.

use pcg::gradcheck;
use pcg::interp::{self, Bindings};
use pcg::ir::Program;
use pcg::sema::{self, CompileOptions, InferenceConfig, Mode};
use pcg::train::batch;
use std::path::Path;

fn compile(path: &str, batch: Option<usize>) -> sema::Compiled {
    let options = CompileOptions {
        batch,
        ..Default::default()
    };
    let (_, compiled) = sema::compile_file(Path::new(path), &options);
    compiled.expect("example compiles")
}

/// Initial parameters and a seeded random batch, in f64.
fn leaves(forward: &Program) -> Bindings<f64> {
    batch::seeded_leaves(forward, 0)
}

fn toy_leaves() -> Bindings<f64> {
    let mut b = Bindings::new();
    b.insert("y0".into(), ndarray::arr0(5.0).into_dyn());
    b.insert("theta".into(), ndarray::arr0(2.0).into_dyn());
    b
}

fn config(mode: Mode, steps: usize, rate: f64) -> InferenceConfig {
    InferenceConfig {
        mode,
        steps,
        rate,
        ..Default::default()
    }
}

#[test]
fn toy_graph_backprop_gradients() {
    let forward = compile("examples/toy_graph.pcg", None).forward;
    let kinds = [pcg::ir::LeafKind::Param, pcg::ir::LeafKind::Input];
    let grad = pcg::autodiff::gradient_program(&forward, &kinds).expect("differentiable");
    let out = interp::eval_outputs(&grad, &toy_leaves()).expect("runs");
    let dtheta = out["grad.theta"].sum();
    let dy0 = out["grad.y0"].sum();
    assert!((dtheta - -0.8792).abs() < 1e-4, "dL/dtheta = {dtheta}");
    assert!((dy0 - -11.3705).abs() < 1e-4, "dL/dy0 = {dy0}");
    // Exact relaxation: the message to y0 and the update of theta are backprop's, to rounding.
    let report =
        gradcheck::run(&forward, &config(Mode::Exact, 0, 1.0), None, &toy_leaves()).expect("runs");
    assert!(report.max_rel_err() < 1e-12);
    let y0 = report
        .inputs
        .iter()
        .find(|p| p.name == "y0")
        .expect("message to y0");
    assert!(y0.trace.last().expect("trace").rel_err < 1e-12);
}

/// DESIGN.md: synchronous fixed-mode relaxation reaches relative error < 1e-3 on dL/dy0 (the
/// sum of y0's children's messages) after about 352 steps at η = 0.02, 68 at η = 0.1 and 11 at
/// η = 0.5 — and not one step before.
#[test]
fn toy_graph_converges_within_the_papers_step_counts() {
    let forward = compile("examples/toy_graph.pcg", None).forward;
    for (rate, within) in [(0.02, 352), (0.1, 68), (0.5, 11)] {
        let rel_after = |steps: usize| {
            let report = gradcheck::run(
                &forward,
                &config(Mode::Fixed, steps, rate),
                None,
                &toy_leaves(),
            )
            .expect("runs");
            let y0 = report
                .inputs
                .iter()
                .find(|p| p.name == "y0")
                .expect("message to y0");
            y0.trace.last().expect("trace").rel_err
        };
        assert!(
            rel_after(within) < 1e-3,
            "rate {rate}: not converged after {within} steps"
        );
        assert!(
            rel_after(within - 1) > 1e-3,
            "rate {rate}: converged before {within} steps"
        );
    }
}

/// (example, batch) — small batches keep the check fast; the math is the same.
const EXAMPLES: &[(&str, usize)] = &[
    ("examples/toy_graph.pcg", 1),
    ("examples/mlp_digits.pcg", 4),
    ("examples/mlp_fmnist.pcg", 2),
    ("examples/cnn_fmnist.pcg", 2),
    ("examples/rnn_digits.pcg", 3),
    ("examples/lstm_shakespeare.pcg", 2),
    ("examples/shared_branches.pcg", 4),
];

#[test]
fn fixed_mode_converges_to_backprop_on_every_example() {
    for &(path, b) in EXAMPLES {
        let compiled = compile(path, Some(b));
        let forward = &compiled.forward;
        let base = compiled
            .train
            .expect("examples have a train block")
            .inference;
        let depth = pcg::pc::analyse(forward, &base).depth;
        // Enough steps: well past the depth at step size 0.5.
        let steps = 4 * depth + 40;
        let report = gradcheck::run(
            forward,
            &config(Mode::Fixed, steps, 0.5),
            None,
            &leaves(forward),
        )
        .expect("runs");
        assert!(!report.params.is_empty(), "{path}: no parameters checked");
        let max = report.max_rel_err();
        assert!(
            max <= 1e-4,
            "{path}: fixed mode max relative error {max:e} after {steps} steps"
        );
        for p in &report.params {
            let first = p.trace.first().expect("trace").rel_err;
            let last = p.trace.last().expect("trace").rel_err;
            assert!(last <= first, "{path}: {} got worse while relaxing", p.name);
        }
    }
}

#[test]
fn exact_mode_is_backprop_after_depth_steps() {
    for &(path, b) in EXAMPLES {
        let compiled = compile(path, Some(b));
        let forward = &compiled.forward;
        let report = gradcheck::run(
            forward,
            &config(Mode::Exact, 0, 1.0),
            None,
            &leaves(forward),
        )
        .expect("runs");
        let depth = report.programs.graph.depth;
        assert_eq!(
            report.steps,
            depth.max(1),
            "{path}: exact mode runs depth steps"
        );
        let max = report.max_rel_err();
        assert!(
            max <= 1e-5,
            "{path}: exact mode max relative error {max:e} after {depth} steps"
        );
        // One step is not enough where the graph is deeper (the errors have not arrived).
        if depth > 1 {
            let short = gradcheck::run(
                forward,
                &config(Mode::Exact, 0, 1.0),
                Some(1),
                &leaves(forward),
            )
            .expect("runs");
            assert!(short.max_rel_err() > 1e-5, "{path}: exact after one step");
        }
    }
}

#[test]
fn strict_mode_runs_and_reports() {
    for &(path, b) in EXAMPLES {
        let compiled = compile(path, Some(b));
        let forward = &compiled.forward;
        let report = gradcheck::run(
            forward,
            &config(Mode::Strict, 10, 0.1),
            None,
            &leaves(forward),
        )
        .expect("runs");
        assert_eq!(report.energy.len(), 11, "{path}: one energy per step");
        for p in &report.params {
            let last = p.trace.last().expect("trace");
            assert!(
                last.rel_err.is_finite() && last.cosine.is_finite(),
                "{path}: {} not finite",
                p.name
            );
        }
    }
}

#[test]
fn precision_changes_the_dynamics_not_the_fixed_point() {
    let compiled = compile("examples/mlp_digits.pcg", Some(4));
    let forward = &compiled.forward;
    let mut cfg = config(Mode::Fixed, 60, 0.3);
    cfg.precision.insert("h".into(), 3.0);
    let weighted = gradcheck::run(forward, &cfg, None, &leaves(forward)).expect("runs");
    assert!(
        weighted.max_rel_err() < 1e-4,
        "precision moved the equilibrium: {:e}",
        weighted.max_rel_err()
    );
    let few = gradcheck::run(forward, &cfg, Some(3), &leaves(forward)).expect("runs");
    let plain = gradcheck::run(
        forward,
        &config(Mode::Fixed, 60, 0.3),
        Some(3),
        &leaves(forward),
    )
    .expect("runs");
    assert_ne!(
        few.max_rel_err(),
        plain.max_rel_err(),
        "precision had no effect on the relaxation"
    );
}

#[test]
fn energy_is_computed_at_every_step() {
    let compiled = compile("examples/shared_branches.pcg", Some(4));
    let forward = &compiled.forward;
    let report = gradcheck::run(
        forward,
        &config(Mode::Fixed, 30, 0.2),
        None,
        &leaves(forward),
    )
    .expect("runs");
    assert_eq!(report.energy.len(), 31);
    assert!(report.energy.iter().all(|e| e.is_finite() && *e >= 0.0));
}

#[test]
fn node_granularity_all_gives_the_same_gradients() {
    let compiled = compile("examples/shared_branches.pcg", Some(4));
    let forward = &compiled.forward;
    let mut cfg = config(Mode::Exact, 0, 1.0);
    cfg.nodes = sema::NodeGranularity::All;
    let graph = pcg::pc::analyse(forward, &cfg);
    let named = pcg::pc::analyse(forward, &config(Mode::Exact, 0, 1.0));
    assert!(graph.nodes.len() > named.nodes.len());
    let report = gradcheck::run(forward, &cfg, None, &leaves(forward)).expect("runs");
    assert!(report.max_rel_err() <= 1e-5, "{:e}", report.max_rel_err());
}

#[test]
fn pc_ir_dumps_of_small_examples() {
    for (name, path) in [
        ("toy_graph", "examples/toy_graph.pcg"),
        ("mlp_digits", "examples/mlp_digits.pcg"),
    ] {
        let compiled = compile(path, None);
        let inference = compiled.train.expect("train block").inference;
        let programs = pcg::pc::transform(&compiled.forward, &inference).expect("transforms");
        let text = format!(
            "{}\n{}{}{}",
            pcg::pc::describe(&programs),
            pcg::ir::to_text(&programs.relax.prologue),
            pcg::ir::to_text(&programs.relax.body),
            pcg::ir::to_text(&programs.learn)
        );
        insta::assert_snapshot!(format!("pc_{name}"), text);
        let grad = pcg::autodiff::grad_program(&compiled.forward).expect("differentiable");
        insta::assert_snapshot!(format!("grad_{name}"), pcg::ir::to_text(&grad));
        let dot = pcg::pc::to_dot(&compiled.forward, &programs.graph);
        assert!(dot.starts_with("digraph") && dot.contains("ε"));
    }
}

/// The closed-form relaxation (fixed and exact modes) gives the simulated loop's final state.
#[test]
fn closed_form_relaxation_equals_simulation() {
    let mut solved_some = 0;
    for &(path, b) in EXAMPLES {
        let compiled = compile(path, Some(b));
        let forward = &compiled.forward;
        for cfg in [
            config(Mode::Fixed, 37, 0.3),
            config(Mode::Exact, 0, 1.0),
            config(Mode::Fixed, 5, 0.9),
        ] {
            let programs = pcg::pc::transform(forward, &cfg).expect("transforms");
            let steps = programs.relax.steps;
            let Some(solved) = pcg::pc::solve(&programs, steps).expect("solves") else {
                assert!(
                    programs.graph.depth >= steps,
                    "{path}: no closed form though depth < steps"
                );
                continue;
            };
            solved_some += 1;
            pcg::ir::verify(&solved).expect("valid program");
            let leaves = leaves(forward);
            let simulated =
                interp::run_loop(&programs.relax, &leaves, steps, |_, _| true).expect("runs");
            let closed = interp::eval_outputs(&solved, &leaves).expect("runs");
            for (name, value) in &closed {
                let reference = &simulated[name];
                let diff = (value - reference).mapv(|x| x * x).sum().sqrt();
                let norm = reference.mapv(|x| x * x).sum().sqrt().max(1e-30);
                assert!(
                    diff / norm < 1e-9,
                    "{path} {:?}: {name} differs by {:e}",
                    cfg.mode,
                    diff / norm
                );
            }
        }
    }
    assert!(
        solved_some >= 10,
        "the closed form applied only {solved_some} times"
    );
}

#[test]
fn closed_form_coefficients() {
    // One step of size η: e(1) = η c, so γ_0 = 1 and γ_k = 0 beyond.
    assert_eq!(pcg::pc::coefficients(0.5, 1, 3), vec![1.0, 0.0, 0.0]);
    // Exact mode: every power of M up to the depth counts once.
    assert_eq!(pcg::pc::coefficients(1.0, 4, 3), vec![1.0, 1.0, 1.0]);
    // γ_0 = Σ_t (1 − η)^t: a geometric series.
    let g = pcg::pc::coefficients(0.1, 20, 1)[0];
    assert!((g - (1.0 - 0.9f64.powi(20)) / 0.1).abs() < 1e-12);
}

/// Dropping the per-step energy (as the compiled training loop does) removes work from every
/// step and leaves the final state as it was.
#[test]
fn a_relaxation_without_its_per_step_energy_ends_in_the_same_state() {
    for &(path, b) in EXAMPLES {
        let compiled = compile(path, Some(b));
        let forward = &compiled.forward;
        let leaves = leaves(forward);
        for mode in [Mode::Fixed, Mode::Strict] {
            let programs = pcg::pc::transform(forward, &config(mode, 7, 0.1)).expect("transforms");
            let mut lean = programs.relax.clone();
            lean.retain_outputs(|name| name != "energy");
            assert!(
                lean.body.nodes.len() < programs.relax.body.nodes.len(),
                "{path} {mode:?}: nothing was dropped"
            );
            let full = interp::run_loop(&programs.relax, &leaves, 7, |_, _| true).expect("runs");
            let state = interp::run_loop(&lean, &leaves, 7, |_, _| true).expect("runs");
            assert!(!state.contains_key("energy") && full.contains_key("energy"));
            for (name, value) in &state {
                if name.starts_with("v.") || name.starts_with("e.") || name == "loss" {
                    assert_eq!(value, &full[name], "{path} {mode:?}: {name}");
                }
            }
            let prefix = if mode == Mode::Strict { "v." } else { "e." };
            let values = state.keys().filter(|n| n.starts_with(prefix)).count();
            assert_eq!(
                values,
                programs.graph.nodes.len() - outputs(&programs.graph)
            );
        }
    }
}

fn outputs(graph: &pcg::pc::PcGraph) -> usize {
    graph
        .nodes
        .iter()
        .filter(|n| n.role == pcg::pc::Role::Output)
        .count()
}
