//! Whole-pipeline differential testing on random well-typed `.pcg` programs: source text
//! through the front end, autodiff, the PC transform and both backends.
//!
//! The generator writes models from a seed: dense layers with several activations,
//! shape-annotated functions, `for` loops that rebind a state, tuples, slicing, concat,
//! broadcasting, reductions with `keepdims`, transposes, smooth unary builtins, parameters used
//! several times, `where`, `max` reductions, mean squared error or cross-entropy heads, and
//! several loss terms (every intermediate value is read by the model or by
//! a loss term). For each program:
//!
//! - it compiles (`check` passes);
//! - backprop's gradients equal central finite differences in f64 on the interpreter;
//! - PC in exact mode equals backprop to 1e-9 in f64;
//! - PC in fixed mode converges to backprop as T grows;
//! - the JIT equals the interpreter in f32 (to 1e-4) for the forward program, the gradient
//!   program, the relaxation loop (fixed and strict) and the learning program.
//!
//! `PCG_RANDOM_PROGRAMS=N` sets how many programs (default 1000, from seed 0; about a minute) and
//! `PCG_RANDOM_SEED=S` the first seed; `scripts/random_programs.sh` runs more. A failing
//! program is shrunk (the generator's programs with the same seed and fewer statements are a
//! prefix of it: the smallest that still fails is kept) and written out; copied into
//! `tests/random_regressions/`, it is checked by `regressions_still_pass` from then on.

use pcg::interp::{self, Bindings};
use pcg::ir::{LeafKind, Program};
use pcg::jit::{JitLoop, JitOptions, JitProgram};
use pcg::sema::{self, CompileOptions, InferenceConfig, Mode};
use pcg::train::{batch, init};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;

const B: usize = 3;

/// A program under construction: every value is a `[B, d]` tensor.
struct Gen {
    rng: ChaCha8Rng,
    fns: BTreeSet<&'static str>,
    decls: Vec<String>,
    body: Vec<String>,
    /// (name, width, read by something)
    values: Vec<(String, usize, bool)>,
    /// Square parameters `[d, d]` that later statements may use again.
    square: Vec<(String, usize)>,
    next: usize,
}

const ACTIVATIONS: [&str; 4] = ["tanh", "sigmoid", "sin", ""];

impl Gen {
    fn fresh(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    fn param(&mut self, shape: &[usize]) -> String {
        let name = self.fresh("p");
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        self.decls.push(format!(
            "    param {name}: [{}] = normal(0.5)",
            dims.join(", ")
        ));
        name
    }

    /// A value to read, preferring recent ones; marks it read.
    fn pick(&mut self) -> (String, usize) {
        let n = self.values.len();
        let i = n - 1 - self.rng.random_range(0..n.min(3));
        self.values[i].2 = true;
        (self.values[i].0.clone(), self.values[i].1)
    }

    fn define(&mut self, name: String, width: usize, text: String) {
        self.body.push(text);
        self.values.push((name, width, false));
    }

    fn act(&mut self, z: &str) -> String {
        match ACTIVATIONS[self.rng.random_range(0..ACTIVATIONS.len())] {
            "" => z.to_string(),
            a => format!("{a}({z})"),
        }
    }

    fn statement(&mut self) {
        let (v, d) = self.pick();
        let m = self.rng.random_range(2..6);
        let h = self.fresh("h");
        match self.rng.random_range(0..12) {
            0 | 1 => {
                let (w, b) = (self.param(&[d, m]), self.param(&[m]));
                let z = self.act(&format!("{v} @ {w} + {b}"));
                self.define(h.clone(), m, format!("    let {h} = {z}"));
            }
            2 => {
                let a = ["tanh", "sigmoid"][self.rng.random_range(0..2)];
                let f: &'static str = if a == "tanh" {
                    "layer_tanh"
                } else {
                    "layer_sigmoid"
                };
                self.fns.insert(f);
                let (w, b) = (self.param(&[d, m]), self.param(&[m]));
                self.define(h.clone(), m, format!("    let {h} = {f}({v}, {w}, {b})"));
            }
            3 => {
                // An elementwise product, sum or difference with another value of the width,
                // or a broadcast parameter vector.
                let op = ["+", "-", "*"][self.rng.random_range(0..3)];
                let other = self
                    .values
                    .iter()
                    .rposition(|(n, w, _)| *w == d && *n != v)
                    .map(|i| {
                        self.values[i].2 = true;
                        self.values[i].0.clone()
                    });
                let other = other.unwrap_or_else(|| self.param(&[d]));
                self.define(
                    h.clone(),
                    d,
                    format!("    let {h} = {v} {op} tanh({other})"),
                );
            }
            4 => {
                let (u, e) = self.pick();
                if d + e <= 10 {
                    let text = format!("    let {h} = concat({v}, {u}, axis = 1)");
                    self.define(h.clone(), d + e, text);
                } else {
                    self.define(h.clone(), d, format!("    let {h} = {v} + 0.5 * {v}"));
                }
            }
            5 if d >= 2 => {
                let a = self.rng.random_range(0..d - 1);
                let b = self.rng.random_range(a + 1..=d);
                self.define(h.clone(), b - a, format!("    let {h} = {v}[.., {a}..{b}]"));
            }
            6 => {
                let (u, _) = self.pick();
                let reduce = ["sum", "mean", "max"][self.rng.random_range(0..3)];
                let text =
                    format!("    let {h} = {v} * {reduce}(tanh({u}), axis = 1, keepdims = true)");
                self.define(h.clone(), d, text);
            }
            7 => {
                // A loop that rebinds its state, with a parameter used at every iteration.
                let (w, b) = match self.square.iter().find(|(_, s)| *s == d) {
                    Some((w, _)) if self.rng.random_bool(0.5) => (w.clone(), self.param(&[d])),
                    _ => {
                        let w = self.param(&[d, d]);
                        self.square.push((w.clone(), d));
                        (w, self.param(&[d]))
                    }
                };
                let n = self.rng.random_range(1..4);
                self.body.push(format!("    let {h} = {v}"));
                self.define(
                    h.clone(),
                    d,
                    format!("    for i in 0..{n} {{\n        {h} = tanh({h} @ {w} + {b})\n    }}"),
                );
            }
            8 => {
                let p = self.fresh("t");
                self.body.push(format!("    let {p} = ({v}, sigmoid({v}))"));
                self.define(h.clone(), d, format!("    let {h} = {p}[1] * {p}[0]"));
            }
            9 => {
                let unary = [
                    format!("square({v}) * 0.5"),
                    format!("exp(tanh({v}))"),
                    format!("sqrt(square({v}) + 1)"),
                    format!("pow(sigmoid({v}), 2)"),
                    format!("log(sigmoid({v}) + 0.5)"),
                    format!("cos({v})"),
                    format!("transpose(tanh(transpose({v})))"),
                    format!("maximum({v}, -10) + 0.1 * {v}"),
                ];
                let text = unary[self.rng.random_range(0..unary.len())].clone();
                self.define(h.clone(), d, format!("    let {h} = {text}"));
            }
            10 => {
                let text = format!("    let {h} = reshape({v}, [{B}, -1]) * 0.9");
                self.define(h.clone(), d, text);
            }
            _ => {
                let text = format!("    let {h} = where(relu({v}), {v}, 0.5 * tanh({v}))");
                self.define(h.clone(), d, text);
            }
        }
    }
}

/// The program of `seed` with `size` statements (a prefix of those with more).
fn program(seed: u64, size: usize) -> String {
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(seed),
        fns: BTreeSet::new(),
        decls: Vec::new(),
        body: Vec::new(),
        values: Vec::new(),
        square: Vec::new(),
        next: 0,
    };
    let width = g.rng.random_range(2..6);
    let classes = g.rng.random_range(2..5);
    g.values.push(("x".to_string(), width, false));
    for _ in 0..size {
        g.statement();
    }
    let (last, d) = g.pick();
    let (w, b) = (g.param(&[d, classes]), g.param(&[classes]));
    let head = ["mse", "cross_entropy"][g.rng.random_range(0..2)];
    let mut losses = vec![format!("    loss {head}(dense({last}, {w}, {b}), y)")];
    // Every value nothing reads gets a loss term of its own.
    for (name, _, read) in &g.values {
        if !read && name != "x" {
            let scale = [0.1, 0.05, 0.02][name.len() % 3];
            losses.push(format!("    loss {scale} * mean(square({name}))"));
        }
    }
    let mut text = String::from("use nn\n\n");
    for f in &g.fns {
        let a = f.trim_start_matches("layer_");
        text.push_str(&format!(
            "fn {f}(x: [N, I], w: [I, O], b: [O]) -> [N, O] {{\n    let z = x @ w + b\n    {a}(z)\n}}\n\n"
        ));
    }
    text.push_str(&format!(
        "model random {{\n    input  x: [{B}, {width}]\n    target y: [{B}, {classes}]\n"
    ));
    for d in &g.decls {
        text.push_str(d);
        text.push('\n');
    }
    for s in g.body.iter().chain(&losses) {
        text.push_str(s);
        text.push('\n');
    }
    text.push_str("}\n");
    text
}

fn to_f64(b: &Bindings<f32>) -> Bindings<f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v.mapv(f64::from)))
        .collect()
}

/// The relative distance of PC's updates (ascent) from backprop's gradients, over all params.
fn distance(updates: &Bindings<f64>, grads: &Bindings<f64>) -> f64 {
    let (mut diff, mut total) = (0.0, 0.0);
    for (name, g) in grads {
        let Some(p) = name.strip_prefix("grad.") else {
            continue;
        };
        let u = &updates[&format!("update.{p}")];
        diff += (u + g).mapv(|x| x * x).sum();
        total += g.mapv(|x| x * x).sum();
    }
    (diff / total.max(1e-300)).sqrt()
}

/// Every output of `got` within 1e-4 (relative to the reference's scale) of `want`.
fn close_f32(what: &str, got: &Bindings<f32>, want: &Bindings<f32>) -> Result<(), String> {
    for (name, w) in want {
        let Some(g) = got.get(name) else {
            return Err(format!("{what}: the JIT has no `{name}`"));
        };
        let scale = w.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        let diff = (g - w).iter().fold(0.0f32, |m, x| m.max(x.abs()));
        if diff.is_nan() || diff > 1e-4 * scale {
            return Err(format!(
                "{what}: `{name}` differs by {diff:e} (scale {scale:e})"
            ));
        }
    }
    Ok(())
}

/// All the checks on one program's text; `Err` says which failed.
fn check(text: &str) -> Result<(), String> {
    let options = CompileOptions::default();
    let (_, compiled) = sema::compile_source("random.pcg", text, &options);
    let forward = compiled
        .map_err(|d| format!("does not compile: {:?}", d.first().map(|d| &d.message)))?
        .forward;
    let leaves32 = {
        let mut l = init::init_params(&forward, 7);
        l.extend(batch::random_batch(&forward, 7));
        l
    };
    let leaves = to_f64(&leaves32);

    // Backprop against central finite differences (f64, interpreter).
    let grad =
        pcg::autodiff::gradient_program(&forward, &[LeafKind::Param]).map_err(|e| e.to_string())?;
    let grads = interp::eval_outputs(&grad, &leaves).map_err(|e| e.to_string())?;
    let loss_at = |l: &Bindings<f64>| -> Result<f64, String> {
        let out = interp::eval_outputs(&forward, l).map_err(|e| e.to_string())?;
        Ok(out["loss"].iter().sum())
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (_, name) in forward.leaves(LeafKind::Param) {
        let g = &grads[&format!("grad.{name}")];
        for _ in 0..2 {
            let at = rng.random_range(0..g.len());
            let h = 1e-5;
            let mut plus = leaves.clone();
            plus.get_mut(name).unwrap().as_slice_mut().unwrap()[at] += h;
            let mut minus = leaves.clone();
            minus.get_mut(name).unwrap().as_slice_mut().unwrap()[at] -= h;
            let fd = (loss_at(&plus)? - loss_at(&minus)?) / (2.0 * h);
            let exact = g.as_slice().unwrap()[at];
            if (fd - exact).abs() > 1e-6 + 1e-5 * exact.abs() {
                return Err(format!(
                    "grad.{name}[{at}] = {exact:e}, finite differences {fd:e}"
                ));
            }
        }
    }

    // PC exact equals backprop; fixed converges to it.
    let exact = InferenceConfig {
        mode: Mode::Exact,
        ..Default::default()
    };
    let pc = pcg::pc::transform(&forward, &exact).map_err(|e| e.to_string())?;
    let exact_steps = pc.relax.steps;
    let e = distance(&run_pc(&forward, &exact, exact_steps, &leaves)?, &grads);
    if e.is_nan() || e > 1e-9 {
        return Err(format!("exact mode is {e:e} from backprop"));
    }
    let fixed = |steps| InferenceConfig {
        mode: Mode::Fixed,
        steps,
        rate: 0.5,
        ..Default::default()
    };
    let early = distance(&run_pc(&forward, &fixed(1), 1, &leaves)?, &grads);
    let late = distance(&run_pc(&forward, &fixed(150), 150, &leaves)?, &grads);
    if late.is_nan() || late > 1e-6 || late > early {
        return Err(format!(
            "fixed mode: {early:e} after 1 step, {late:e} after 150"
        ));
    }

    // The JIT against the interpreter, f32.
    let options = JitOptions::default();
    let jit = |p: &Program, l: &Bindings<f32>| -> Result<Bindings<f32>, String> {
        let mut compiled = JitProgram::compile(p, &options).map_err(|e| e.to_string())?;
        compiled.run(l).map_err(|e| e.to_string())
    };
    let reference =
        |p: &Program, l: &Bindings<f32>| interp::eval_outputs(p, l).map_err(|e| e.to_string());
    close_f32(
        "forward",
        &jit(&forward, &leaves32)?,
        &reference(&forward, &leaves32)?,
    )?;
    close_f32(
        "grad",
        &jit(&grad, &leaves32)?,
        &reference(&grad, &leaves32)?,
    )?;
    for (mode, steps) in [(Mode::Fixed, 5), (Mode::Strict, 3)] {
        let config = InferenceConfig {
            mode,
            steps,
            rate: 0.2,
            ..Default::default()
        };
        let pc = pcg::pc::transform(&forward, &config).map_err(|e| e.to_string())?;
        let want = interp::run_loop(&pc.relax, &leaves32, steps, |_, _| true)
            .map_err(|e| e.to_string())?;
        let mut looped = JitLoop::compile(&pc.relax, &options).map_err(|e| e.to_string())?;
        let got = looped.run(&leaves32, steps).map_err(|e| e.to_string())?;
        close_f32(&format!("{mode:?} relaxation"), &got, &want)?;
        let mut env = leaves32.clone();
        env.extend(want);
        close_f32(
            &format!("{mode:?} learning"),
            &jit(&pc.learn, &env)?,
            &reference(&pc.learn, &env)?,
        )?;
    }
    Ok(())
}

/// PC's updates after `steps` relaxation steps, f64 on the interpreter.
fn run_pc(
    forward: &Program,
    config: &InferenceConfig,
    steps: usize,
    leaves: &Bindings<f64>,
) -> Result<Bindings<f64>, String> {
    let pc = pcg::pc::transform(forward, config).map_err(|e| e.to_string())?;
    let state =
        interp::run_loop(&pc.relax, leaves, steps, |_, _| true).map_err(|e| e.to_string())?;
    let mut env = leaves.clone();
    env.extend(state);
    interp::eval_outputs(&pc.learn, &env).map_err(|e| e.to_string())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_programs_pass_every_check() {
    let count = env_usize("PCG_RANDOM_PROGRAMS", 1000);
    let first = env_usize("PCG_RANDOM_SEED", 0) as u64;
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("random_programs");
    for seed in first..first + count as u64 {
        let size = 1 + (seed % 9) as usize;
        let text = program(seed, size);
        if let Err(why) = check(&text) {
            // Shrink: the same seed with fewer statements is a prefix of the program.
            let (small, reason) = (1..size)
                .map(|s| program(seed, s))
                .find_map(|t| check(&t).err().map(|w| (t, w)))
                .unwrap_or((text, why));
            std::fs::create_dir_all(&out).unwrap();
            let path = out.join(format!("seed-{seed}.pcg"));
            std::fs::write(&path, &small).unwrap();
            panic!(
                "seed {seed}: {reason}\nsaved to {} (copy it into tests/random_regressions/):\n{small}",
                path.display()
            );
        }
    }
}

/// The programs that once failed, kept as regression cases.
#[test]
fn regressions_still_pass() {
    let dir = std::path::Path::new("tests/random_regressions");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "pcg") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(why) = check(&text) {
                panic!("{}: {why}", path.display());
            }
        }
    }
}

/// The generator makes programs of every construct it knows, and they differ by seed.
#[test]
fn the_generator_covers_its_constructs() {
    let all: String = (0..60).map(|s| program(s, 8)).collect();
    for construct in [
        "for i in",
        "concat(",
        "[.., ",
        "keepdims = true",
        "fn layer_",
        "[1] * ",
        "transpose(",
        "loss 0.",
    ] {
        assert!(all.contains(construct), "no program has `{construct}`");
    }
    assert_ne!(program(1, 5), program(2, 5));
}
