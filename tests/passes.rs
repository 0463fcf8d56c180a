//! The IR-to-IR passes, tested as pairs of IR text: each `tests/passes/*.ir` file names a pass
//! (`# pass: NAME`), gives the program(s) before it, then, after a `# expect` line, the text
//! the pass must produce. The harness reads the first part with the IR reader, runs the pass,
//! verifies the result and compares its printout with the second part. A loop pass reads two
//! programs, the prologue then the body (and a third, the program after the loop, for
//! `hoist_epilogue`). `UPDATE_PASSES=1 cargo test --test passes` rewrites
//! the expected parts from what the passes now produce (review the diff).

use pcg::ir::{from_text, to_text, verify, LoopProgram, Program};
use std::path::Path;

/// Splits text holding several programs into one text per program.
fn programs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.starts_with('#') || (current.is_empty() && line.trim().is_empty()) {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if line == "}" {
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

fn parse(text: &str, file: &Path) -> Program {
    let program = from_text(text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    verify(&program).unwrap_or_else(|e| panic!("{}: input invalid: {e}", file.display()));
    program
}

/// Runs the named pass over the input programs and returns the programs after it.
fn run(pass: &str, inputs: Vec<Program>) -> Vec<Program> {
    let mut inputs = inputs;
    match pass {
        "hoist" => {
            let body = inputs.pop().expect("a body");
            let prologue = inputs.pop().expect("a prologue");
            let mut looped = LoopProgram {
                prologue,
                body,
                steps: 1,
                until: None,
            };
            pcg::opt::hoist_invariants(&mut looped);
            vec![looped.prologue, looped.body]
        }
        "hoist_epilogue" => {
            let mut epilogue = inputs.pop().expect("an epilogue");
            let body = inputs.pop().expect("a body");
            let prologue = inputs.pop().expect("a prologue");
            let mut looped = LoopProgram {
                prologue,
                body,
                steps: 1,
                until: None,
            };
            pcg::opt::hoist::hoist_epilogue(&mut looped, &mut epilogue);
            vec![looped.prologue, looped.body, epilogue]
        }
        single => inputs
            .into_iter()
            .map(|mut p| {
                match single {
                    "cse" => pcg::opt::cse(&mut p),
                    "concat" => pcg::opt::concat::join_padded_sums(&mut p),
                    "dead_parts" => pcg::opt::dead_parts::narrow_products(&mut p),
                    "batching" => pcg::opt::batching::batch_products(&mut p),
                    "distribute" => pcg::opt::concat::distribute(&mut p),
                    "split_padded_sums" => pcg::opt::concat::split_padded_sums(&mut p),
                    "row_order" => pcg::opt::row_order::products_in_row_order(&mut p),
                    "leading_rows" => pcg::opt::leading_rows::share_leading_rows(&mut p),
                    "simplify" => pcg::opt::simplify(&mut p),
                    "scan_hoist" => {
                        pcg::opt::scan_hoist::hoist_scans(&mut p);
                    }
                    other => panic!("unknown pass `{other}`"),
                }
                p
            })
            .collect(),
    }
}

#[test]
fn passes_rewrite_as_expected() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/passes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/passes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ir"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "too few pass tests");
    let update = std::env::var_os("UPDATE_PASSES").is_some();
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let pass = text
            .lines()
            .find_map(|l| l.strip_prefix("# pass:"))
            .unwrap_or_else(|| panic!("{}: no `# pass:` line", file.display()))
            .trim()
            .to_string();
        let (before, expected) = text
            .split_once("\n# expect\n")
            .unwrap_or_else(|| panic!("{}: no `# expect` line", file.display()));
        let inputs = programs(before).iter().map(|t| parse(t, file)).collect();
        let outputs = run(&pass, inputs);
        for p in &outputs {
            verify(p).unwrap_or_else(|e| panic!("{}: output invalid: {e}", file.display()));
        }
        let actual: String = outputs.iter().map(to_text).collect();
        let wanted: String = programs(expected).concat();
        if update {
            std::fs::write(file, format!("{before}\n# expect\n{actual}")).expect("writable");
        } else if actual != wanted {
            failures.push(format!(
                "{}: pass `{pass}` produced\n{actual}\nexpected\n{wanted}",
                file.display()
            ));
        }
        // The expected text reads back as itself: it is a program, not only a string.
        for t in programs(expected) {
            assert_eq!(to_text(&parse(&t, file)), t, "{}", file.display());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every example's relaxation step, in fixed and strict mode, split into two blocks of
/// samples: block p of the leaves gives block p of every output, to rounding. A loop's
/// stacked units (`[T, B, ...]`) are split along their samples' axis.
#[test]
fn a_split_relaxation_step_computes_its_block() {
    use pcg::interp::{self, Bindings};
    use pcg::ir::{LeafKind, Op};
    use pcg::sema::{self, CompileOptions, InferenceConfig, Mode};
    use pcg::train::{batch, init};
    let examples = [
        "mlp_digits",
        "mlp_fmnist",
        "cnn_fmnist",
        "rnn_digits",
        "lstm_shakespeare",
        "shared_branches",
    ];
    let mut split = 0;
    for name in examples {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.pcg"));
        let options = CompileOptions {
            batch: Some(4),
            ..Default::default()
        };
        let (_, compiled) = sema::compile_file(&path, &options);
        let forward = compiled.expect("compiles").forward;
        let mut leaves: Bindings<f64> = init::init_params(&forward, 0)
            .into_iter()
            .chain(batch::random_batch(&forward, 0))
            .map(|(k, v)| (k, v.mapv(f64::from)))
            .collect();
        for mode in [Mode::Fixed, Mode::Strict] {
            let config = InferenceConfig {
                mode,
                steps: 3,
                rate: 0.1,
                ..Default::default()
            };
            let mut relax = pcg::pc::transform(&forward, &config)
                .expect("transforms")
                .relax;
            relax.retain_outputs(|n| n != "energy");
            let state = interp::run_loop(&relax, &leaves, 1, |_, _| true).expect("runs");
            leaves.extend(state);
            let full = interp::eval_outputs(&relax.body, &leaves).expect("runs");
            // Each output's samples: the first axis of the batch's size (4).
            let axes: Vec<usize> = relax
                .body
                .outputs
                .iter()
                .map(|o| {
                    let dims = relax.body.shape(o.value).dims();
                    dims.iter().position(|&d| d == 4).unwrap_or(0)
                })
                .collect();
            let Some(parts) = pcg::opt::split::split_along(&relax.body, 2, &axes, |n, a| {
                n.op == Op::Leaf(LeafKind::State) || (a == 0 && n.op != Op::Leaf(LeafKind::Param))
            }) else {
                panic!("{name} {mode:?}: the relaxation step does not split");
            };
            split += 1;
            verify(&parts.program).expect("valid");
            for p in 0..2 {
                let mut block = leaves.clone();
                for (id, leaf) in parts.program.leaves(LeafKind::State).into_iter().chain(
                    [LeafKind::Input, LeafKind::Target]
                        .into_iter()
                        .flat_map(|k| parts.program.leaves(k)),
                ) {
                    if let Some(axis) = parts.axes[id.index()] {
                        let whole = &leaves[leaf];
                        let rows = whole.shape()[axis] / 2;
                        let view = whole.slice_axis(
                            ndarray::Axis(axis),
                            ndarray::Slice::from(p * rows..(p + 1) * rows),
                        );
                        block.insert(leaf.to_string(), view.to_owned());
                    }
                }
                let out = interp::eval_outputs(&parts.program, &block).expect("block runs");
                for (k, v) in &out {
                    let at = relax.body.outputs.iter().position(|o| o.name == *k);
                    let axis = at.map_or(0, |i| axes[i]);
                    let rows = full[k].shape()[axis] / 2;
                    let want = full[k].slice_axis(
                        ndarray::Axis(axis),
                        ndarray::Slice::from(p * rows..(p + 1) * rows),
                    );
                    let diff = (v - &want).mapv(f64::abs).sum();
                    assert!(
                        diff < 1e-9,
                        "{name} {mode:?} part {p}: {k} differs by {diff}"
                    );
                }
            }
        }
    }
    assert_eq!(split, 12);
}

/// A random program in the shape the passes meet: an unrolled recurrence through one weight
/// (`concat(x_t, h) @ w`, its slices), independent messages through the same weight and its
/// transpose (as in a synchronous relaxation step), parts of products used, and elementwise
/// ops on concats.
fn random_unrolled(seed: u64) -> Program {
    use pcg::ir::{BinaryOp, LeafKind, Op, Shape, UnaryOp};
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (rows, k, steps) = (4, 8, rng.random_range(4..8));
    let mut p = Program::new("random");
    let w = p.leaf(LeafKind::Param, "w", Shape::new(vec![2 * k, 2 * k]));
    let wt = p.transpose(w, vec![1, 0]);
    let mut h = p.leaf(LeafKind::State, "h", Shape::new(vec![rows, k]));
    let mut results = Vec::new();
    for t in 0..steps {
        let x = p.leaf(LeafKind::Input, format!("x{t}"), Shape::new(vec![rows, k]));
        let e = p.leaf(
            LeafKind::State,
            format!("e{t}"),
            Shape::new(vec![rows, 2 * k]),
        );
        // The recurrence: only h's half of the message to concat(x, h) is read.
        let joined = p.build(Op::Concat { axis: 1 }, &[x, h], None);
        let z = p.build(Op::MatMul, &[joined, w], None);
        let gate = p.build(
            Op::Slice {
                axis: 1,
                start: 0,
                end: k,
            },
            &[z],
            None,
        );
        h = p.unary(UnaryOp::Tanh, gate);
        // A message through the transposed weight, independent of the other steps'.
        let message = p.build(Op::MatMul, &[e, wt], None);
        let start = rng.random_range(0..k);
        let part = p.build(
            Op::Slice {
                axis: 1,
                start,
                end: start + k,
            },
            &[message],
            None,
        );
        // Elementwise ops on a concat, and a second product of the state through w.
        let both = p.build(Op::Concat { axis: 1 }, &[part, h], None);
        let scaled = p.scale(both, 0.5);
        let update = match rng.random_range(0..3) {
            0 => p.add_values(e, scaled),
            1 => p.binary(BinaryOp::Max, scaled, e),
            _ => p.sub(e, scaled),
        };
        let again = p.build(Op::MatMul, &[e, w], None);
        results.push(p.mul(update, again));
    }
    for (t, r) in results.into_iter().enumerate() {
        p.set_output(format!("e{t}"), r);
    }
    p.set_output("h", h);
    p
}

/// The passes on random unrolled programs leave every output as it was (the interpreter in
/// f64), and the compiled program agrees with the interpreter on the rewritten one.
#[test]
fn passes_keep_random_unrolled_programs_exact() {
    use pcg::interp::{self, Bindings};
    use pcg::ir::LeafKind;
    use rand::{Rng, SeedableRng};
    for seed in 0..24 {
        let original = random_unrolled(seed);
        verify(&original).expect("valid");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1000 + seed);
        let mut leaves: Bindings<f64> = Bindings::new();
        for kind in [LeafKind::Param, LeafKind::State, LeafKind::Input] {
            for (id, name) in original.leaves(kind) {
                let dims = original.shape(id).dims().to_vec();
                let values = ndarray::ArrayD::from_shape_fn(dims, |_| rng.random_range(-1.0..1.0));
                leaves.insert(name.to_string(), values);
            }
        }
        let reference = interp::eval_outputs(&original, &leaves).expect("runs");
        let mut optimised = original.clone();
        pcg::opt::simplify(&mut optimised);
        pcg::opt::batching::batch_products(&mut optimised);
        pcg::opt::simplify(&mut optimised);
        verify(&optimised).expect("valid after the passes");
        let products = |p: &Program| {
            p.nodes
                .iter()
                .filter(|n| n.op == pcg::ir::Op::MatMul)
                .count()
        };
        assert!(
            products(&optimised) < products(&original),
            "seed {seed}: nothing batched"
        );
        let out = interp::eval_outputs(&optimised, &leaves).expect("runs");
        for (name, value) in &reference {
            let diff = (value - &out[name]).mapv(f64::abs).sum();
            assert!(diff < 1e-9, "seed {seed}: {name} differs by {diff}");
        }
        let f32_leaves: Bindings<f32> = leaves
            .iter()
            .map(|(k, v)| (k.clone(), v.mapv(|x| x as f32)))
            .collect();
        let mut jit =
            pcg::jit::JitProgram::compile(&optimised, &Default::default()).expect("compiles");
        let compiled = jit.run(&f32_leaves).expect("runs");
        for (name, value) in &reference {
            let diff = (value.mapv(|x| x as f32) - &compiled[name]).mapv(f32::abs);
            let worst = diff.iter().fold(0.0f32, |m, &d| m.max(d));
            assert!(
                worst < 1e-4,
                "seed {seed}: compiled {name} differs by {worst}"
            );
        }
    }
}
