//! Predictive-coding variants against independent references: the relaxation's update
//! written out by hand in ndarray for a one-hidden-layer perceptron, compared with what the
//! compiler makes of `examples/mlp_digits.pcg`.

use ndarray::{Array1, Array2, Axis};
use pcg::interp::{self, Bindings};
use pcg::sema::{
    self, CompileOptions, EnergyReduction, InferenceConfig, Mode, StateOptimizer, Target,
};
use pcg::train::{batch, init};
use std::path::Path;

const BATCH: usize = 5;

fn forward() -> pcg::ir::Program {
    let options = CompileOptions {
        batch: Some(BATCH),
        ..Default::default()
    };
    let (_, compiled) = sema::compile_file(Path::new("examples/mlp_digits.pcg"), &options);
    compiled.expect("example compiles").forward
}

/// Seeded parameters and batch, in f64.
fn leaves(forward: &pcg::ir::Program) -> Bindings<f64> {
    batch::seeded_leaves(forward, 3)
}

fn matrix(b: &Bindings<f64>, name: &str) -> Array2<f64> {
    b[name].clone().into_dimensionality().expect("a matrix")
}

fn vector(b: &Bindings<f64>, name: &str) -> Array1<f64> {
    b[name].clone().into_dimensionality().expect("a vector")
}

/// The weight updates (ascent direction) of `h = tanh(x w1 + b1)`, `out = h w2 + b2`,
/// `loss = ½ Σ (out − y)² / N` after `steps` relaxation steps of size `rate` with heavy-ball
/// momentum `momentum` on the hidden value unit: u ← m u + d, v ← v + η u, where
/// d = −(v − μ_h) + ε_out w2ᵀ and ε_out = (y − out(v)) / N (strict: `out` at the current v;
/// fixed: at the feedforward value).
///
/// `beta` nudges: the loss term is scaled by β (ε_out ← β ε_out) and the updates divided by β.
fn reference(
    b: &Bindings<f64>,
    mode: Mode,
    steps: usize,
    rate: f64,
    momentum: f64,
    beta: f64,
) -> Bindings<f64> {
    let mut u: Option<Array2<f64>> = None;
    let mut heavy_ball = |d: &Array2<f64>| {
        let velocity = match u.take() {
            Some(u) => &u * momentum + d,
            None => d.clone(),
        };
        u = Some(velocity.clone());
        velocity * rate
    };
    reference_with(b, mode, steps, beta, 1.0, &mut heavy_ball)
}

/// [`reference`] with the hidden unit's step given as a function of its drive d (the rule of
/// the state optimiser), and the hidden node's precision π: d = −π (v − μ_h) + ε_out w2ᵀ and
/// the learning reads π (v − μ_h).
fn reference_with(
    b: &Bindings<f64>,
    mode: Mode,
    steps: usize,
    beta: f64,
    precision: f64,
    step: &mut dyn FnMut(&Array2<f64>) -> Array2<f64>,
) -> Bindings<f64> {
    let (x, y) = (matrix(b, "x"), matrix(b, "y"));
    let (w1, b1, w2, b2) = (
        matrix(b, "w1"),
        vector(b, "b1"),
        matrix(b, "w2"),
        vector(b, "b2"),
    );
    let n = x.nrows() as f64;
    let mu_h = (x.dot(&w1) + &b1).mapv(f64::tanh);
    let out_error = |v: &Array2<f64>| (&y - &(v.dot(&w2) + &b2)) * (beta / n);
    let frozen = out_error(&mu_h);
    let mut v = mu_h.clone();
    for _ in 0..steps {
        let e_out = if mode == Mode::Strict {
            out_error(&v)
        } else {
            frozen.clone()
        };
        let drive = -(&v - &mu_h) * precision + e_out.dot(&w2.t());
        v = &v + &step(&drive);
    }
    let e_h = (&v - &mu_h) * precision;
    let (e_out, h_at) = if mode == Mode::Strict {
        (out_error(&v), v.clone())
    } else {
        (frozen, mu_h.clone())
    };
    let local = &e_h * &mu_h.mapv(|t| 1.0 - t * t);
    let mut updates = Bindings::new();
    layer_updates(&mut updates, "1", &x, &local);
    layer_updates(&mut updates, "2", &h_at, &e_out);
    updates.values_mut().for_each(|u| *u /= beta);
    updates
}

/// The updates of a dense layer `input @ w<k> + b<k>` whose output's weighted error (times
/// its activation's derivative) is `local`.
fn layer_updates(updates: &mut Bindings<f64>, k: &str, input: &Array2<f64>, local: &Array2<f64>) {
    updates.insert(format!("update.w{k}"), input.t().dot(local).into_dyn());
    updates.insert(format!("update.b{k}"), local.sum_axis(Axis(0)).into_dyn());
}

/// The compiler's updates: the relaxation loop and the learning program on the interpreter.
fn compiled(b: &Bindings<f64>, config: &InferenceConfig) -> Bindings<f64> {
    let programs = pcg::pc::transform(&forward(), config).expect("transforms");
    let state = interp::run_loop(&programs.relax, b, config.steps, |_, _| true).expect("runs");
    let mut env = b.clone();
    env.extend(state);
    interp::eval_outputs(&programs.learn, &env).expect("learns")
}

fn assert_matches(what: &str, got: &Bindings<f64>, want: &Bindings<f64>) {
    for (name, reference) in want {
        let value = &got[name];
        let diff = (value - reference).mapv(|x| x * x).sum().sqrt();
        let norm = reference.mapv(|x| x * x).sum().sqrt().max(1e-30);
        assert!(
            diff / norm < 1e-10,
            "{what}: {name} differs by {:e}",
            diff / norm
        );
    }
}

#[test]
fn state_momentum_matches_the_heavy_ball_update() {
    let forward = forward();
    let b = leaves(&forward);
    for mode in [Mode::Strict, Mode::Fixed] {
        for momentum in [0.0, 0.5, 0.9] {
            let config = InferenceConfig {
                mode,
                steps: 12,
                rate: 0.2,
                momentum,
                ..Default::default()
            };
            let want = reference(&b, mode, 12, 0.2, momentum, 1.0);
            let got = compiled(&b, &config);
            assert_matches(&format!("{mode:?} momentum {momentum}"), &got, &want);
        }
    }
    // Momentum changes the trajectory: after a few steps the updates differ.
    let few = |m: f64| reference(&b, Mode::Strict, 3, 0.2, m, 1.0)["update.w1"].clone();
    assert!((few(0.9) - few(0.0)).mapv(f64::abs).sum() > 1e-6);
}

#[test]
fn momentum_is_refused_where_it_has_no_meaning() {
    let forward = forward();
    for (mode, momentum) in [(Mode::Exact, 0.5), (Mode::Strict, 1.0), (Mode::Fixed, -0.1)] {
        let config = InferenceConfig {
            mode,
            momentum,
            ..Default::default()
        };
        let err = pcg::pc::transform(&forward, &config).expect_err("refused");
        assert!(err.to_string().contains("momentum"), "{err}");
    }
}

#[test]
fn nudged_targets_match_the_scaled_update() {
    let forward = forward();
    let b = leaves(&forward);
    for mode in [Mode::Strict, Mode::Fixed] {
        for beta in [0.3, -0.05] {
            let config = InferenceConfig {
                mode,
                steps: 12,
                rate: 0.2,
                momentum: 0.5,
                target: Target::Nudge(beta),
                ..Default::default()
            };
            let want = reference(&b, mode, 12, 0.2, 0.5, beta);
            let got = compiled(&b, &config);
            assert_matches(&format!("{mode:?} nudge {beta}"), &got, &want);
            // Centered: the mean of the updates nudged by +β and by −β.
            let centered = compiled(
                &b,
                &InferenceConfig {
                    target: Target::Centered(beta),
                    ..config.clone()
                },
            );
            let mut want = reference(&b, mode, 12, 0.2, 0.5, beta);
            let minus = reference(&b, mode, 12, 0.2, 0.5, -beta);
            for (name, u) in &mut want {
                *u = (&*u + &minus[name]) / 2.0;
            }
            assert_matches(&format!("{mode:?} centered {beta}"), &centered, &want);
        }
    }
}

/// The relative distance of the nudged update at equilibrium from backprop's −∂L/∂θ.
fn distance_from_backprop(forward: &pcg::ir::Program, b: &Bindings<f64>, target: Target) -> f64 {
    let kinds = [pcg::ir::LeafKind::Param];
    let grad = pcg::autodiff::gradient_program(forward, &kinds).expect("differentiable");
    let grads = interp::eval_outputs(&grad, b).expect("runs");
    let config = InferenceConfig {
        mode: Mode::Strict,
        steps: 400,
        rate: 0.3,
        target,
        ..Default::default()
    };
    let updates = compiled(b, &config);
    let (mut diff, mut norm) = (0.0, 0.0);
    for (name, g) in &grads {
        let Some(param) = name.strip_prefix("grad.") else {
            continue; // the loss
        };
        let u = &updates[&format!("update.{param}")];
        diff += (u + g).mapv(|x| x * x).sum();
        norm += g.mapv(|x| x * x).sum();
    }
    (diff / norm).sqrt()
}

/// The distances from backprop at β = 0.4, 0.2, 0.1, 0.05; each halving of β must scale the
/// distance by about `expected`.
fn assert_order(
    forward: &pcg::ir::Program,
    b: &Bindings<f64>,
    target: fn(f64) -> Target,
    expected: f64,
) {
    let errors: Vec<f64> = [0.4, 0.2, 0.1, 0.05]
        .iter()
        .map(|&beta| distance_from_backprop(forward, b, target(beta)))
        .collect();
    assert!(errors[3] > 1e-9, "no error left to measure: {errors:?}");
    for pair in errors.windows(2) {
        let ratio = pair[1] / pair[0];
        assert!(
            (0.8 * expected..1.2 * expected).contains(&ratio),
            "halving β scaled the error by {ratio}, not about {expected}: {errors:?}"
        );
    }
}

/// Strict mode at equilibrium: as β → 0 the nudged update tends to backprop's gradient with
/// an O(β) error (halving β halves it) and the centered one with an O(β²) error (halving β
/// quarters it).
#[test]
fn nudged_strict_updates_tend_to_backprop_at_their_order() {
    let forward = forward();
    let b = leaves(&forward);
    assert_order(&forward, &b, Target::Nudge, 0.5);
    assert_order(&forward, &b, Target::Centered, 0.25);
    // Clamping (β = 1) is further from backprop than nudging by β = 0.4.
    assert!(
        distance_from_backprop(&forward, &b, Target::Clamp)
            > distance_from_backprop(&forward, &b, Target::Nudge(0.4))
    );
}

/// Incremental PC by hand: at every one of `steps` relaxation steps, the hidden value unit
/// (strict) or error unit (fixed) and the parameters both move from the state the step
/// starts at — v ← v + η d, θ ← θ + lr Δθ (SGD on −Δθ) — with the predictions and the
/// Jacobians read at the current parameters. Fixed mode keeps the activations at the
/// feedforward pass of the first parameters: h_ff = tanh(x w1 + b1) of the batch's start.
/// Returns the parameters after the batch.
fn incremental_reference(
    b: &Bindings<f64>,
    mode: Mode,
    steps: usize,
    rate: f64,
    momentum: f64,
    lr: f64,
) -> Bindings<f64> {
    let (x, y) = (matrix(b, "x"), matrix(b, "y"));
    let (mut w1, mut b1, mut w2, mut b2) = (
        matrix(b, "w1"),
        vector(b, "b1"),
        matrix(b, "w2"),
        vector(b, "b2"),
    );
    let n = x.nrows() as f64;
    let h_ff = (x.dot(&w1) + &b1).mapv(f64::tanh);
    // Strict carries the value v (starting at the prediction), fixed the error e (at 0).
    let mut unit = if mode == Mode::Strict {
        h_ff.clone()
    } else {
        Array2::zeros(h_ff.raw_dim())
    };
    let mut u = Array2::<f64>::zeros(h_ff.raw_dim());
    for _ in 0..steps {
        let mu_h = (x.dot(&w1) + &b1).mapv(f64::tanh);
        let (e_h, h_at) = if mode == Mode::Strict {
            (&unit - &mu_h, unit.clone())
        } else {
            (unit.clone(), h_ff.clone())
        };
        let e_out = (&y - &(h_at.dot(&w2) + &b2)) / n;
        let drive = -&e_h + e_out.dot(&w2.t());
        let local = &e_h * &mu_h.mapv(|t| 1.0 - t * t);
        let (dw1, db1) = (x.t().dot(&local), local.sum_axis(Axis(0)));
        let (dw2, db2) = (h_at.t().dot(&e_out), e_out.sum_axis(Axis(0)));
        u = &u * momentum + drive;
        unit = &unit + &(&u * rate);
        w1 = w1 + dw1 * lr;
        b1 = b1 + db1 * lr;
        w2 = w2 + dw2 * lr;
        b2 = b2 + db2 * lr;
    }
    let mut params = Bindings::new();
    params.insert("w1".into(), w1.into_dyn());
    params.insert("b1".into(), b1.into_dyn());
    params.insert("w2".into(), w2.into_dyn());
    params.insert("b2".into(), b2.into_dyn());
    params
}

/// One training step under `schedule = incremental` on both backends equals the hand
/// reference, for 1, 2 and 7 relaxation (and optimiser) steps.
#[test]
fn incremental_schedule_matches_the_hand_reference_step_by_step() {
    use pcg::sema::{Method, OptimizerConfig, Schedule};
    use pcg::train::engine::{Engine, InterpEngine, JitEngine, Programs};
    use pcg::train::optim::Optimizer;
    let forward = forward();
    let b = leaves(&forward);
    let to_f32 = |names: &[&str]| -> pcg::npz::Arrays {
        names
            .iter()
            .map(|&n| (n.to_string(), b[n].mapv(|x| x as f32)))
            .collect()
    };
    let (params, batch) = (to_f32(&["w1", "b1", "w2", "b2"]), to_f32(&["x", "y"]));
    let lr = 0.3;
    for mode in [Mode::Strict, Mode::Fixed] {
        for momentum in [0.0, 0.6] {
            for steps in [1, 2, 7] {
                let config = InferenceConfig {
                    mode,
                    steps,
                    rate: 0.2,
                    momentum,
                    schedule: Schedule::Incremental,
                    ..Default::default()
                };
                let programs =
                    Programs::build(&forward, Method::Pc, &config, None).expect("programs");
                let want = incremental_reference(&b, mode, steps, 0.2, momentum, lr);
                let optimizer = Optimizer::new(
                    OptimizerConfig::Sgd {
                        lr,
                        momentum: 0.0,
                        weight_decay: 0.0,
                    },
                    None,
                );
                let engines: Vec<Box<dyn Engine>> = vec![
                    Box::new(JitEngine::new(programs.clone(), &Default::default()).expect("jit")),
                    Box::new(InterpEngine::new(programs)),
                ];
                for mut engine in engines {
                    engine
                        .start(params.clone(), optimizer.clone())
                        .expect("starts");
                    engine.train_step(&batch).expect("steps");
                    let (got, optimizer) = engine.trained();
                    assert_eq!(optimizer.steps(), steps as u64, "one optimiser step a step");
                    for (name, reference) in &want {
                        let value = got[name].mapv(f64::from);
                        let moved = (reference - &b[name]).mapv(|x| x * x).sum().sqrt();
                        let diff = (&value - reference).mapv(|x| x * x).sum().sqrt();
                        assert!(
                            diff < 1e-4 * moved.max(1e-3),
                            "{} {mode:?} momentum {momentum} T = {steps}: {name} is off by {diff:e} (moved {moved:e})",
                            engine.backend()
                        );
                    }
                }
            }
        }
    }
    // A gradient is refused: the schedule updates the parameters within the step.
    let config = InferenceConfig {
        schedule: Schedule::Incremental,
        ..Default::default()
    };
    let programs = Programs::build(&forward, Method::Pc, &config, None).expect("programs");
    let err = InterpEngine::new(programs)
        .gradients(&params, &batch)
        .expect_err("refused");
    assert!(err.to_string().contains("incremental"), "{err}");
}

/// `tol = ε`: the relaxation stops by itself, on both backends at the same step, and its
/// result is that of a run with `steps` set to the steps it reports. Several tolerances make
/// the loop stop after odd and even step counts (the compiled loop keeps the state of the
/// two parities in different buffers).
#[test]
fn tol_stops_where_a_run_of_that_many_steps_ends() {
    use pcg::sema::Method;
    use pcg::train::engine::{Engine, InterpEngine, JitEngine, Programs};
    let forward = forward();
    let b = leaves(&forward);
    let arrays = |names: &[&str]| -> pcg::npz::Arrays {
        names
            .iter()
            .map(|&n| (n.to_string(), b[n].mapv(|x| x as f32)))
            .collect()
    };
    let (params, batch) = (arrays(&["w1", "b1", "w2", "b2"]), arrays(&["x", "y"]));
    let mut parities = std::collections::BTreeSet::new();
    for mode in [Mode::Strict, Mode::Fixed] {
        for tol in [1e-2, 3e-3, 1e-3, 3e-4, 1e-4] {
            let config = InferenceConfig {
                mode,
                steps: 300,
                rate: 0.1,
                tol: Some(tol),
                ..Default::default()
            };
            let programs = Programs::build(&forward, Method::Pc, &config, None).expect("programs");
            // Fixed mode runs the closed form's loop over coefficients; the simulated loop
            // must stop at the same step.
            assert_eq!(programs.solved_relax.is_some(), mode == Mode::Fixed);
            let mut simulated =
                JitEngine::new(programs.clone().simulated(), &Default::default()).expect("jit");
            let mut jit = JitEngine::new(programs.clone(), &Default::default()).expect("jit");
            let mut interp = InterpEngine::new(programs);
            let stopped = jit.gradients(&params, &batch).expect("jit");
            let reference = interp.gradients(&params, &batch).expect("interp");
            let stepped = simulated.gradients(&params, &batch).expect("simulated");
            let steps = stopped.relaxation_steps.expect("steps reported");
            assert_eq!(Some(steps), stepped.relaxation_steps, "{mode:?} tol {tol}");
            assert_eq!(
                Some(steps),
                reference.relaxation_steps,
                "{mode:?} tol {tol}"
            );
            assert!((2.0..300.0).contains(&steps), "{mode:?} tol {tol}: {steps}");
            parities.insert(steps as usize % 2);
            // The same number of steps without the tolerance.
            let fixed_steps = InferenceConfig {
                steps: steps as usize,
                tol: None,
                ..config
            };
            let programs =
                Programs::build(&forward, Method::Pc, &fixed_steps, None).expect("programs");
            let mut plain = JitEngine::new(programs, &Default::default()).expect("jit");
            let want = plain.gradients(&params, &batch).expect("plain");
            for (name, g) in &want.grads {
                for (engine, got) in [
                    ("jit", &stopped),
                    ("interp", &reference),
                    ("simulated", &stepped),
                ] {
                    let diff = (&got.grads[name] - g).mapv(|x| x * x).sum().sqrt();
                    let norm = g.mapv(|x| x * x).sum().sqrt().max(1e-12);
                    assert!(
                        diff / norm < 1e-5,
                        "{engine} {mode:?} tol {tol}: {name} differs from {steps} plain steps by {:e}",
                        diff / norm
                    );
                }
            }
        }
    }
    assert_eq!(parities.len(), 2, "stopped after odd and even step counts");
}

/// On deeper graphs (several relaxed levels, a recurrent state the loss reads at every step),
/// the closed form's loop with a stopping tolerance stops where the simulated loop does, with
/// its result.
#[test]
fn tol_in_closed_form_stops_with_the_simulated_loop() {
    use pcg::sema::Method;
    use pcg::train::engine::{Engine, JitEngine, Programs};
    for path in ["examples/rnn_digits.pcg", "examples/shared_branches.pcg"] {
        let options = CompileOptions {
            batch: Some(4),
            ..Default::default()
        };
        let (_, compiled) = sema::compile_file(Path::new(path), &options);
        let forward = compiled.expect("compiles").forward;
        let params = init::init_params(&forward, 1);
        let batch = batch::random_batch(&forward, 1);
        for tol in [1e-2, 1e-3, 1e-4] {
            let config = InferenceConfig {
                mode: Mode::Fixed,
                steps: 400,
                rate: 0.2,
                tol: Some(tol),
                ..Default::default()
            };
            let programs = Programs::build(&forward, Method::Pc, &config, None).expect("programs");
            assert!(programs.solved_relax.is_some(), "{path}: closed form");
            let depth = programs.pc.as_ref().expect("pc").graph.depth;
            assert!(depth > 1, "{path}: depth {depth}");
            let mut solved = JitEngine::new(programs.clone(), &Default::default()).expect("jit");
            let mut simulated =
                JitEngine::new(programs.simulated(), &Default::default()).expect("jit");
            let a = solved.gradients(&params, &batch).expect("solved");
            let b = simulated.gradients(&params, &batch).expect("simulated");
            assert_eq!(a.relaxation_steps, b.relaxation_steps, "{path} tol {tol}");
            let steps = a.relaxation_steps.expect("reported");
            assert!(steps < 400.0, "{path} tol {tol}: ran all {steps} steps");
            for (name, g) in &b.grads {
                let diff = (&a.grads[name] - g).mapv(|x| x * x).sum().sqrt();
                let norm = g.mapv(|x| x * x).sum().sqrt().max(1e-12);
                assert!(
                    diff / norm < 1e-4,
                    "{path} tol {tol}: {name} off by {:e}",
                    diff / norm
                );
            }
        }
    }
}

/// Nesterov and Adam on the states, clipped steps, a node's own rate and the batch-averaged
/// energy, each against the hidden unit's update rule written out by hand.
#[test]
fn state_optimisers_match_their_update_rules() {
    let forward = forward();
    let b = leaves(&forward);
    let (steps, rate) = (12, 0.2);
    let strict = InferenceConfig {
        mode: Mode::Strict,
        steps,
        rate,
        ..Default::default()
    };
    let mut cases: Vec<(&str, InferenceConfig, Bindings<f64>)> = Vec::new();

    let m = 0.7;
    let mut u = Array2::<f64>::zeros((BATCH, 64));
    let mut nesterov = |d: &Array2<f64>| {
        u = &u * m + d;
        (d + &(&u * m)) * rate
    };
    cases.push((
        "nesterov",
        InferenceConfig {
            optimizer: StateOptimizer::Nesterov,
            momentum: m,
            ..strict.clone()
        },
        reference_with(&b, Mode::Strict, steps, 1.0, 1.0, &mut nesterov),
    ));

    let (beta1, beta2, eps) = (0.8, 0.95, 1e-6);
    let (mut first, mut second) = (
        Array2::<f64>::zeros((BATCH, 64)),
        Array2::<f64>::zeros((BATCH, 64)),
    );
    let mut t = 0;
    let mut adam = |d: &Array2<f64>| {
        t += 1;
        first = &first * beta1 + d * (1.0 - beta1);
        second = &second * beta2 + &(d * d) * (1.0 - beta2);
        let m_hat = &first / (1.0 - beta1.powi(t));
        let s_hat = &second / (1.0 - beta2.powi(t));
        m_hat / (s_hat.mapv(f64::sqrt) + eps) * 0.01
    };
    cases.push((
        "adam",
        InferenceConfig {
            optimizer: StateOptimizer::Adam { beta1, beta2, eps },
            rate: 0.01,
            ..strict.clone()
        },
        reference_with(&b, Mode::Strict, steps, 1.0, 1.0, &mut adam),
    ));

    let c = 0.05;
    let mut clip = |d: &Array2<f64>| {
        let mut s = d * rate;
        for mut row in s.rows_mut() {
            let norm = row.mapv(|x| x * x).sum().sqrt();
            row *= c / norm.max(c);
        }
        s
    };
    let want = reference_with(&b, Mode::Strict, steps, 1.0, 1.0, &mut clip);
    cases.push((
        "clip",
        InferenceConfig {
            clip: Some(c),
            ..strict.clone()
        },
        want,
    ));

    let mut own_rate = |d: &Array2<f64>| d * 0.35;
    cases.push((
        "rates",
        InferenceConfig {
            rates: [("h".to_string(), 0.35)].into(),
            ..strict.clone()
        },
        reference_with(&b, Mode::Strict, steps, 1.0, 1.0, &mut own_rate),
    ));

    let mut plain = |d: &Array2<f64>| d * 2.0;
    cases.push((
        "energy mean",
        InferenceConfig {
            energy: EnergyReduction::Mean,
            rate: 2.0,
            ..strict.clone()
        },
        reference_with(&b, Mode::Strict, steps, 1.0, 1.0 / BATCH as f64, &mut plain),
    ));

    for (what, config, want) in &cases {
        assert_matches(what, &compiled(&b, config), want);
    }
    // Each rule changes the trajectory: after the steps the updates differ from plain steps'.
    let plain = reference(&b, Mode::Strict, steps, rate, 0.0, 1.0);
    for (what, _, want) in &cases {
        let moved = (&want["update.w1"] - &plain["update.w1"])
            .mapv(f64::abs)
            .sum();
        assert!(moved > 1e-6, "{what} did not change the update");
    }
}

const DEEP: &str = "
model deep {
    input  x: [B, 6]
    target y: [B, 3]
    param  w1: [6, 5] = normal(0.5)
    param  b1: [5]    = normal(0.1)
    param  w2: [5, 4] = normal(0.5)
    param  b2: [4]    = normal(0.1)
    param  w3: [4, 3] = normal(0.5)
    param  b3: [3]    = normal(0.1)
    let h1 = tanh(x @ w1 + b1)
    let h2 = tanh(h1 @ w2 + b2)
    let out = h2 @ w3 + b3
    loss sum((out - y) * (out - y)) / 8
}
";

fn deep() -> (pcg::ir::Program, Bindings<f64>) {
    let options = CompileOptions {
        batch: Some(4),
        ..Default::default()
    };
    let (_, compiled) = sema::compile_source("deep.pcg", DEEP, &options);
    let forward = compiled.expect("compiles").forward;
    let b = leaves(&forward);
    (forward, b)
}

/// ePC by hand on a two-hidden-layer perceptron: errors e1, e2 start at 0; each step runs
/// the forward pass h1 = tanh(x w1 + b1) + e1, h2 = tanh(h1 w2 + b2) + e2,
/// out = h2 w3 + b3, backpropagates L = Σ (out − y)² / 8 to the errors and moves them by
/// η (−e − ∂L/∂e); learning is strict mode's at the values h1, h2 of the final errors.
fn epc_reference(b: &Bindings<f64>, steps: usize, rate: f64) -> Bindings<f64> {
    let (x, y) = (matrix(b, "x"), matrix(b, "y"));
    let (w1, b1, w2, b2, w3, b3) = (
        matrix(b, "w1"),
        vector(b, "b1"),
        matrix(b, "w2"),
        vector(b, "b2"),
        matrix(b, "w3"),
        vector(b, "b3"),
    );
    let mu1 = (x.dot(&w1) + &b1).mapv(f64::tanh);
    let mut e1 = Array2::<f64>::zeros(mu1.raw_dim());
    let mut e2 = Array2::<f64>::zeros((x.nrows(), 4));
    let pass = |e1: &Array2<f64>, e2: &Array2<f64>| {
        let h1 = &mu1 + e1;
        let mu2 = (h1.dot(&w2) + &b2).mapv(f64::tanh);
        let h2 = &mu2 + e2;
        let out = h2.dot(&w3) + &b3;
        (h1, mu2, h2, out)
    };
    for _ in 0..steps {
        let (_, mu2, _, out) = pass(&e1, &e2);
        let g_out = (&out - &y) * (2.0 / 8.0);
        let g_h2 = g_out.dot(&w3.t());
        let g_h1 = (&g_h2 * &mu2.mapv(|t| 1.0 - t * t)).dot(&w2.t());
        let d1 = -&e1 - &g_h1;
        let d2 = -&e2 - &g_h2;
        e1 = &e1 + &(d1 * rate);
        e2 = &e2 + &(d2 * rate);
    }
    let (h1, mu2, h2, out) = pass(&e1, &e2);
    let e_out = (&y - &out) * (2.0 / 8.0);
    let local2 = &e2 * &mu2.mapv(|t| 1.0 - t * t);
    let local1 = &e1 * &mu1.mapv(|t| 1.0 - t * t);
    let mut updates = Bindings::new();
    layer_updates(&mut updates, "3", &h2, &e_out);
    layer_updates(&mut updates, "2", &h1, &local2);
    layer_updates(&mut updates, "1", &x, &local1);
    updates
}

fn relaxed_updates(
    forward: &pcg::ir::Program,
    b: &Bindings<f64>,
    config: &InferenceConfig,
) -> Bindings<f64> {
    let programs = pcg::pc::transform(forward, config).expect("transforms");
    let state = interp::run_loop(&programs.relax, b, config.steps, |_, _| true).expect("runs");
    let mut env = b.clone();
    env.extend(state);
    interp::eval_outputs(&programs.learn, &env).expect("learns")
}

#[test]
fn epc_matches_the_hand_reference_and_strict_modes_fixed_point() {
    let (forward, b) = deep();
    let epc = |steps: usize, rate: f64| InferenceConfig {
        mode: Mode::Epc,
        steps,
        rate,
        ..Default::default()
    };
    for steps in [1, 3, 10] {
        let got = relaxed_updates(&forward, &b, &epc(steps, 0.3));
        assert_matches(
            &format!("epc {steps} steps"),
            &got,
            &epc_reference(&b, steps, 0.3),
        );
    }
    // A change of variables of strict mode: the same fixed point (and a different path there:
    // after a few steps they differ).
    let strict = |steps: usize| InferenceConfig {
        mode: Mode::Strict,
        steps,
        rate: 0.3,
        ..Default::default()
    };
    let settled = relaxed_updates(&forward, &b, &strict(600));
    assert_matches(
        "epc at equilibrium",
        &relaxed_updates(&forward, &b, &epc(600, 0.3)),
        &settled,
    );
    let early = |config| relaxed_updates(&forward, &b, &config)["update.w1"].clone();
    assert!((early(epc(3, 0.3)) - early(strict(3))).mapv(f64::abs).sum() > 1e-6);
}

#[test]
fn state_optimisers_parse_as_the_command_line_writes_them() {
    let adam = "adam(beta1 = 0.8, eps=1e-6)".parse::<StateOptimizer>();
    assert_eq!(
        adam,
        Ok(StateOptimizer::Adam {
            beta1: 0.8,
            beta2: 0.999,
            eps: 1e-6
        })
    );
    assert_eq!("nesterov".parse(), Ok(StateOptimizer::Nesterov));
    for bad in [
        "rmsprop",
        "adam(beta1=1.5)",
        "adam(gamma=0.1)",
        "sgd(momentum=0.9)",
        "adam(beta1",
    ] {
        assert!(bad.parse::<StateOptimizer>().is_err(), "{bad}");
    }
}
