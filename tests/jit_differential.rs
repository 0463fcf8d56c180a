//! The JIT against the interpreter: every op alone (odd sizes, broadcasting, reductions over
//! several axes, movement ops), every example's forward, gradient and predictive-coding
//! programs, and random graphs. Each program compiled in f32 is compiled in f64 too, and
//! must agree with the f64 interpreter to the last digits.

use ndarray::ArrayD;
use pcg::interp::{self, Bindings, Real, Tensor};
use pcg::ir::{BinaryOp, ConvParams, LeafKind, Op, Program, ReduceOp, Shape, UnaryOp, ValueId};
use pcg::jit::{JitLoop, JitOptions, JitProgram};
use pcg::sema::{self, CompileOptions, Dtype};
use pcg::train::{batch, init};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

const TOLERANCE: f32 = 1e-4;

/// The f64 JIT against the f64 interpreter: the same sums in other orders, the same libm.
const TOLERANCE_F64: f64 = 1e-12;

fn checked() -> JitOptions {
    JitOptions {
        bounds_checks: true,
        threads: 2,
        auto_threads: false,
        split_scan_flops: 0,
        ..JitOptions::default()
    }
}

/// `|jit − reference| ≤ tol · max(|reference|, 1)` element by element (NaN matches NaN).
fn assert_close<F: Real + std::fmt::Display>(
    what: &str,
    jit: &Bindings<F>,
    reference: &Bindings<F>,
    tol: F,
) {
    assert_eq!(
        jit.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>(),
        "{what}: output names"
    );
    for (name, expected) in reference {
        let found = &jit[name];
        assert_eq!(found.shape(), expected.shape(), "{what}: shape of {name}");
        for (i, (&a, &b)) in found.iter().zip(expected.iter()).enumerate() {
            let same = (a.is_nan() && b.is_nan())
                || a == b
                || (a - b).abs() <= tol * b.abs().max(F::one());
            assert!(same, "{what}: {name}[{i}] is {a}, the interpreter says {b}");
        }
    }
}

fn random_tensor(shape: &Shape, rng: &mut ChaCha8Rng) -> Tensor<f32> {
    ArrayD::from_shape_simple_fn(shape.dims(), || rng.random_range(-2.0f32..2.0))
}

/// Random values for every leaf of a program.
fn random_leaves(program: &Program, seed: u64) -> Bindings<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    program
        .ids()
        .filter(|&id| matches!(program.node(id).op, Op::Leaf(_)))
        .map(|id| {
            let node = program.node(id);
            let name = node.name.clone().unwrap_or_default();
            (name, random_tensor(&node.shape, &mut rng))
        })
        .collect()
}

fn check_program(what: &str, program: &Program, leaves: &Bindings<f32>) {
    check_program_with(what, program, leaves, &checked());
}

fn check_program_with(what: &str, program: &Program, leaves: &Bindings<f32>, options: &JitOptions) {
    let reference = interp::eval_outputs(program, leaves).expect("the interpreter runs it");
    let mut jit = JitProgram::compile(program, options)
        .unwrap_or_else(|e| panic!("{what}: compile: {e}\n{}", pcg::ir::to_text(program)));
    let out = jit
        .run(leaves)
        .unwrap_or_else(|e| panic!("{what}: run: {e}"));
    assert_close(what, &out, &reference, TOLERANCE);
    // A second run reuses the arena and must give the same result.
    let again = jit.run(leaves).expect("runs again");
    assert_close(what, &again, &out, 0.0);

    let wide: Bindings<f64> = leaves
        .iter()
        .map(|(k, v)| (k.clone(), v.mapv(f64::from)))
        .collect();
    let reference = interp::eval_outputs(program, &wide).expect("the interpreter runs it");
    let f64_options = JitOptions {
        dtype: Dtype::F64,
        ..options.clone()
    };
    let out = JitProgram::compile(program, &f64_options)
        .and_then(|mut jit| jit.run(&wide))
        .unwrap_or_else(|e| panic!("{what}: f64: {e}"));
    assert_close(&format!("{what} (f64)"), &out, &reference, TOLERANCE_F64);
}

/// A program with leaves of the given shapes whose one output is built by `body`.
fn single(shapes: &[&[usize]], body: impl FnOnce(&mut Program, &[ValueId]) -> ValueId) -> Program {
    let mut p = Program::new("op");
    let leaves: Vec<ValueId> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| p.leaf(LeafKind::Input, format!("x{i}"), Shape::new(s.to_vec())))
        .collect();
    let out = body(&mut p, &leaves);
    p.set_output("out", out);
    p
}

fn op(p: &mut Program, op: Op, args: &[ValueId], target: Option<Vec<usize>>) -> ValueId {
    p.add(op, args.to_vec(), target.map(Shape::new))
        .expect("well-shaped test op")
}

#[test]
fn every_op_alone() {
    let unary = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Tan,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Abs,
        UnaryOp::Sign,
        UnaryOp::Powf(2.0),
        UnaryOp::Powf(0.5),
        UnaryOp::Powf(-1.0),
        UnaryOp::Powf(1.7),
    ];
    let mut cases: Vec<(String, Program)> = Vec::new();
    for u in unary {
        cases.push((
            format!("{u}"),
            single(&[&[3, 7]], |p, x| op(p, Op::Unary(u), &[x[0]], None)),
        ));
    }
    let binary = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Greater,
        BinaryOp::Equal,
    ];
    for b in binary {
        cases.push((
            format!("{b}"),
            single(&[&[5, 9], &[5, 9]], |p, x| {
                op(p, Op::Binary(b), &[x[0], x[1]], None)
            }),
        ));
    }
    cases.push((
        "equal with itself".into(),
        single(&[&[13]], |p, x| {
            op(p, Op::Binary(BinaryOp::Equal), &[x[0], x[0]], None)
        }),
    ));
    cases.push((
        "where".into(),
        single(&[&[11], &[11], &[11]], |p, x| {
            let c = op(p, Op::Binary(BinaryOp::Greater), &[x[0], x[1]], None);
            op(p, Op::Where, &[c, x[1], x[2]], None)
        }),
    ));
    cases.push((
        "const".into(),
        single(&[], |p, _| p.constant(1.5, Shape::new(vec![3, 5]))),
    ));
    cases.push((
        "iota".into(),
        single(&[&[3, 6]], |p, x| {
            let i = op(p, Op::Iota { axis: 1 }, &[], Some(vec![3, 6]));
            op(p, Op::Binary(BinaryOp::Add), &[i, x[0]], None)
        }),
    ));
    cases.push((
        "transposed iota".into(),
        single(&[], |p, _| {
            let i = op(p, Op::Iota { axis: 0 }, &[], Some(vec![5, 6]));
            op(p, Op::Transpose(vec![1, 0]), &[i], None)
        }),
    ));
    for axes in [
        vec![0],
        vec![1],
        vec![2],
        vec![0, 2],
        vec![1, 2],
        vec![0, 1, 2],
    ] {
        for r in [ReduceOp::Sum, ReduceOp::Max] {
            cases.push((
                format!("reduce {r:?} {axes:?}"),
                single(&[&[3, 5, 7]], |p, x| {
                    op(p, Op::Reduce(r, axes.clone()), &[x[0]], None)
                }),
            ));
        }
    }
    cases.push((
        "fused reduce of a square".into(),
        single(&[&[6, 9]], |p, x| {
            let sq = p.mul(x[0], x[0]);
            op(p, Op::Reduce(ReduceOp::Sum, vec![0, 1]), &[sq], None)
        }),
    ));
    cases.push((
        "reshape".into(),
        single(&[&[3, 10]], |p, x| {
            op(p, Op::Reshape, &[x[0]], Some(vec![5, 2, 3]))
        }),
    ));
    cases.push((
        "reshape of a transpose".into(),
        single(&[&[3, 5]], |p, x| {
            let t = op(p, Op::Transpose(vec![1, 0]), &[x[0]], None);
            let e = p.unary(UnaryOp::Exp, t);
            op(p, Op::Reshape, &[e], Some(vec![15]))
        }),
    ));
    cases.push((
        "transpose".into(),
        single(&[&[2, 3, 5]], |p, x| {
            op(p, Op::Transpose(vec![2, 0, 1]), &[x[0]], None)
        }),
    ));
    cases.push((
        "broadcast".into(),
        single(&[&[3, 1], &[4, 3, 5]], |p, x| {
            let b = op(p, Op::Broadcast, &[x[0]], Some(vec![4, 3, 5]));
            p.add_values(b, x[1])
        }),
    ));
    cases.push((
        "broadcast of a computed value".into(),
        single(&[&[7]], |p, x| {
            let t = p.unary(UnaryOp::Tanh, x[0]);
            op(p, Op::Broadcast, &[t], Some(vec![5, 7]))
        }),
    ));
    cases.push((
        "slice".into(),
        single(&[&[5, 9]], |p, x| {
            op(
                p,
                Op::Slice {
                    axis: 1,
                    start: 2,
                    end: 7,
                },
                &[x[0]],
                None,
            )
        }),
    ));
    cases.push((
        "pad".into(),
        single(&[&[3, 5]], |p, x| {
            let n = p.unary(UnaryOp::Neg, x[0]);
            op(
                p,
                Op::Pad {
                    axis: 0,
                    before: 2,
                    after: 1,
                },
                &[n],
                None,
            )
        }),
    ));
    cases.push((
        "concat".into(),
        single(&[&[3, 2], &[3, 5], &[3, 1]], |p, x| {
            op(p, Op::Concat { axis: 1 }, &[x[0], x[1], x[2]], None)
        }),
    ));
    cases.push((
        "matmul".into(),
        single(&[&[5, 7], &[7, 3]], |p, x| {
            op(p, Op::MatMul, &[x[0], x[1]], None)
        }),
    ));
    cases.push((
        "matvec".into(),
        single(&[&[1, 13], &[13, 9]], |p, x| {
            op(p, Op::MatMul, &[x[0], x[1]], None)
        }),
    ));
    cases.push((
        "batched matmul".into(),
        single(&[&[2, 3, 4, 5], &[2, 3, 5, 6]], |p, x| {
            op(p, Op::MatMul, &[x[0], x[1]], None)
        }),
    ));
    cases.push((
        "matmul of a transpose".into(),
        single(&[&[7, 5], &[7, 3]], |p, x| {
            let t = op(p, Op::Transpose(vec![1, 0]), &[x[0]], None);
            op(p, Op::MatMul, &[t, x[1]], None)
        }),
    ));
    cases.push((
        "matmul of a computed value".into(),
        single(&[&[4, 6], &[6, 5]], |p, x| {
            let t = p.unary(UnaryOp::Tanh, x[0]);
            op(p, Op::MatMul, &[t, x[1]], None)
        }),
    ));
    for (stride, padding) in [(1, 0), (2, 1), (1, 2)] {
        cases.push((
            format!("conv2d stride {stride} padding {padding}"),
            single(&[&[3, 3, 7, 6], &[4, 3, 3, 2]], |p, x| {
                op(
                    p,
                    Op::Conv2d(ConvParams::new(stride, padding)),
                    &[x[0], x[1]],
                    None,
                )
            }),
        ));
        let out = pcg::ir::shape::infer(
            &Op::Conv2d(ConvParams::new(stride, padding)),
            &[&Shape::new(vec![3, 3, 7, 6]), &Shape::new(vec![4, 3, 3, 2])],
            None,
        )
        .expect("conv shape");
        let out: Vec<usize> = out.dims().to_vec();
        cases.push((
            format!("conv2d input grad stride {stride} padding {padding}"),
            single(&[&out, &[4, 3, 3, 2]], |p, x| {
                op(
                    p,
                    Op::Conv2dInputGrad(ConvParams::new(stride, padding)),
                    &[x[0], x[1]],
                    Some(vec![3, 3, 7, 6]),
                )
            }),
        ));
        cases.push((
            format!("conv2d weight grad stride {stride} padding {padding}"),
            single(&[&[3, 3, 7, 6], &out], |p, x| {
                op(
                    p,
                    Op::Conv2dWeightGrad(ConvParams::new(stride, padding)),
                    &[x[0], x[1]],
                    Some(vec![4, 3, 3, 2]),
                )
            }),
        ));
    }
    cases.push((
        "scalar chain".into(),
        single(&[&[]], |p, x| {
            let e = p.unary(UnaryOp::Exp, x[0]);
            let s = p.scale(e, 3.0);
            p.add_values(s, x[0])
        }),
    ));
    // On one thread, and with products and convolutions shared between two.
    let one_thread = JitOptions {
        threads: 1,
        ..checked()
    };
    for (what, program) in &cases {
        let leaves = random_leaves(program, 7);
        check_program(what, program, &leaves);
        check_program_with(
            &format!("{what} (one thread)"),
            program,
            &leaves,
            &one_thread,
        );
    }
}

/// The JIT's and the interpreter's outputs of a one-leaf program on the values `xs`.
fn unary_outputs(p: &Program, xs: &[f32]) -> (Bindings<f32>, Bindings<f32>) {
    let leaves = Bindings::from([(
        "x0".to_string(),
        ArrayD::from_shape_vec(vec![xs.len()], xs.to_vec()).expect("shape"),
    )]);
    let reference = interp::eval_outputs(p, &leaves).expect("runs");
    let out = JitProgram::compile(p, &JitOptions::default())
        .expect("compiles")
        .run(&leaves)
        .expect("runs");
    (out, reference)
}

#[test]
fn transcendentals_match_libm_closely() {
    let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.0113).collect();
    let n = xs.len();
    for u in [UnaryOp::Exp, UnaryOp::Log, UnaryOp::Tanh, UnaryOp::Sigmoid] {
        let p = single(&[&[n]], |p, x| {
            let a = if u == UnaryOp::Log {
                p.unary(UnaryOp::Abs, x[0])
            } else {
                x[0]
            };
            p.unary(u, a)
        });
        let (out, reference) = unary_outputs(&p, &xs);
        let worst = out["out"]
            .iter()
            .zip(reference["out"].iter())
            .filter(|(_, b)| b.is_finite() && b.abs() > 1e-30)
            .map(|(a, b)| ((a - b) / b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "{u}: worst relative error {worst}");
    }
}

/// A map of one transcendental function over rows of 16 or more contiguous elements runs
/// sixteen lanes at a time where the machine has AVX-512 (`jit::wide`); shorter rows run the
/// four-lane code. Both compute each element by the same operations: bit-identical results.
#[test]
fn wide_rows_equal_the_four_lane_code() {
    let xs: Vec<f32> = (0..12 * 48).map(|i| (i as f32 - 288.0) * 0.37).collect();
    for u in [UnaryOp::Exp, UnaryOp::Tanh, UnaryOp::Sigmoid] {
        let mut p = Program::new("rows");
        let x = p.leaf(LeafKind::Input, "x0", Shape::new(vec![12, 48]));
        let whole = p.unary(u, x);
        let narrow = op(
            &mut p,
            Op::Slice {
                axis: 1,
                start: 0,
                end: 12,
            },
            &[x],
            None,
        );
        let narrow = p.unary(u, narrow);
        p.set_output("whole", whole);
        p.set_output("narrow", narrow);
        let leaves = Bindings::from([(
            "x0".to_string(),
            ArrayD::from_shape_vec(vec![12, 48], xs.clone()).expect("shape"),
        )]);
        let out = JitProgram::compile(&p, &JitOptions::default())
            .expect("compiles")
            .run(&leaves)
            .expect("runs");
        for r in 0..12 {
            for c in 0..12 {
                let (a, b) = (out["whole"][[r, c]], out["narrow"][[r, c]]);
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{u}({}): {a} vs {b}",
                    xs[r * 48 + c]
                );
            }
        }
    }
}

/// NaN stays NaN (divergence detection relies on it), infinities and values far outside the
/// polynomials' ranges saturate as libm does, and tiny arguments keep their value.
#[test]
fn transcendentals_at_special_values() {
    let xs = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e30,
        -1e30,
        100.0,
        -100.0,
        88.0,
        -86.0,
        8.5,
        -8.5,
        1e-5,
        -1e-5,
        0.0,
        1e-38,
    ];
    let n = xs.len();
    for u in [UnaryOp::Exp, UnaryOp::Tanh, UnaryOp::Sigmoid, UnaryOp::Log] {
        let p = single(&[&[n]], |p, x| p.unary(u, x[0]));
        let (out, reference) = unary_outputs(&p, &xs);
        for ((x, a), b) in xs.iter().zip(&out["out"]).zip(&reference["out"]) {
            let close = (a.is_nan() && b.is_nan())
                || a == b
                || (b.is_finite() && (a - b).abs() <= 1e-6 * b.abs().max(1e-30));
            assert!(close, "{u}({x}): jit {a}, libm {b}");
        }
    }
}

#[test]
fn missing_and_misshapen_leaves_are_errors() {
    let p = single(&[&[3, 4]], |p, x| p.unary(UnaryOp::Neg, x[0]));
    let mut jit = JitProgram::compile(&p, &JitOptions::default()).expect("compiles");
    let e = jit.run(&Bindings::<f32>::new()).expect_err("missing leaf");
    assert!(e.to_string().contains("x0"), "{e}");
    let wrong = Bindings::from([("x0".to_string(), ArrayD::<f32>::zeros(vec![4, 3]))]);
    let e = jit.run(&wrong).expect_err("misshapen leaf").to_string();
    assert!(
        e.contains("x0") && e.contains("[3, 4]") && e.contains("[4, 3]"),
        "{e}"
    );
}

fn compile_example(path: &Path) -> sema::Compiled {
    let options = CompileOptions {
        batch: Some(4),
        ..Default::default()
    };
    let (_, compiled) = sema::compile_file(path, &options);
    compiled.unwrap_or_else(|_| panic!("{} compiles", path.display()))
}

/// The file's inference settings (the defaults where it has no train block).
fn file_inference(compiled: &sema::Compiled) -> sema::InferenceConfig {
    compiled
        .train
        .as_ref()
        .map(|t| t.inference.clone())
        .unwrap_or_default()
}

fn example_leaves(forward: &Program) -> Bindings<f32> {
    let mut leaves = init::init_params(forward, 0);
    leaves.extend(batch::random_batch(forward, 0));
    leaves
}

fn examples() -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir("examples")
        .expect("examples directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcg"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn examples_forward_and_gradient() {
    for path in examples() {
        let compiled = compile_example(&path);
        let leaves = example_leaves(&compiled.forward);
        let what = path.display().to_string();
        check_program(&format!("{what} forward"), &compiled.forward, &leaves);
        let grad = pcg::autodiff::grad_program(&compiled.forward).expect("differentiable");
        check_program(&format!("{what} gradient"), &grad, &leaves);
    }
}

#[test]
fn examples_predictive_coding() {
    for path in examples() {
        let compiled = compile_example(&path);
        let leaves = example_leaves(&compiled.forward);
        let inference = file_inference(&compiled);
        let what = path.display().to_string();
        let programs = pcg::pc::transform(&compiled.forward, &inference).expect("transforms");
        let mut relax = JitLoop::compile(&programs.relax, &checked())
            .unwrap_or_else(|e| panic!("{what}: relax: {e}"));
        // Odd and even step counts end in different state buffers.
        for steps in [0, 1, 4, programs.relax.steps.min(7)] {
            let reference =
                interp::run_loop(&programs.relax, &leaves, steps, |_, _| true).expect("relaxes");
            let state = relax.run(&leaves, steps).expect("relaxes");
            assert_close(
                &format!("{what} relax {steps} steps"),
                &state,
                &reference,
                TOLERANCE,
            );
        }
        // The loop as training compiles it, without the per-step energy: its body runs as one
        // part per thread, each on its own block of samples (checked accesses, two threads).
        let lean = pcg::train::engine::compiled_relaxation(&programs.relax);
        let options = JitOptions {
            threads: 2,
            ..checked()
        };
        let mut split = JitLoop::compile(&lean, &options).expect("compiles");
        let batched = compiled
            .forward
            .leaves(pcg::ir::LeafKind::Input)
            .iter()
            .any(|&(id, _)| compiled.forward.shape(id).rank() > 0);
        assert!(
            split.plan().parts == 2 || !batched,
            "{what}: the relaxation does not split"
        );
        for steps in [1, 4] {
            let reference = interp::run_loop(&lean, &leaves, steps, |_, _| true).expect("relaxes");
            let state = split.run(&leaves, steps).expect("relaxes");
            assert_close(
                &format!("{what} split relax {steps} steps"),
                &state,
                &reference,
                TOLERANCE,
            );
        }
        let state = interp::run_loop(&programs.relax, &leaves, 3, |_, _| true).expect("relaxes");
        let mut env = leaves.clone();
        env.extend(state.clone());
        check_program(&format!("{what} learn"), &programs.learn, &env);
        // Leaves and state given as layers, the state first, read as the merged map.
        let mut learn = JitProgram::compile(&programs.learn, &checked()).expect("compiles");
        let layered = learn.run_layered(&[&state, &leaves]).expect("learns");
        assert_close(
            &format!("{what} layered learn"),
            &layered,
            &learn.run(&env).expect("learns"),
            0.0,
        );
    }
}

/// Every example with a loop, its loops kept as scans: the scans whose batch rows are
/// independent run as parts on two threads, each the whole loop on its own block of rows
/// (checked accesses), and give the interpreter's forward pass, gradients and PC relaxation.
#[test]
fn scans_split_into_blocks_of_rows() {
    let mut split_somewhere = Vec::new();
    for path in examples() {
        let source = std::fs::read_to_string(&path).expect("example");
        if !source.contains("for ") {
            continue;
        }
        let options = CompileOptions {
            batch: Some(4),
            loops: sema::LoopPolicy::Scan,
            ..Default::default()
        };
        let (_, compiled) = sema::compile_file(&path, &options);
        let compiled = compiled.unwrap_or_else(|_| panic!("{} compiles", path.display()));
        let leaves = example_leaves(&compiled.forward);
        let what = format!("{} as scans", path.display());
        let mut grad = pcg::autodiff::grad_program(&compiled.forward).expect("differentiable");
        check_program(&format!("{what} forward"), &compiled.forward, &leaves);
        check_program(&format!("{what} gradient"), &grad, &leaves);
        // As training compiles it: the per-iteration loss moved out of the loop.
        pcg::opt::simplify(&mut grad);
        check_program(&format!("{what} simplified gradient"), &grad, &leaves);
        let plan = JitProgram::compile(&grad, &checked()).expect("compiles");
        if !plan.plan().part_kernels.is_empty() {
            split_somewhere.push(what.clone());
        }
        let programs =
            pcg::pc::transform(&compiled.forward, &file_inference(&compiled)).expect("transforms");
        let mut relax = JitLoop::compile(&programs.relax, &checked()).expect("compiles");
        let reference = interp::run_loop(&programs.relax, &leaves, 3, |_, _| true).expect("runs");
        let state = relax.run(&leaves, 3).expect("relaxes");
        assert_close(&format!("{what} relax"), &state, &reference, TOLERANCE);
    }
    // The recurrent networks' forward and reverse scans treat each sample alone.
    for name in ["lstm_shakespeare", "rnn_digits"] {
        assert!(
            split_somewhere.iter().any(|w| w.contains(name)),
            "{name}'s gradient has no scan split into parts: {split_somewhere:?}"
        );
    }
}

/// A scan whose products read an iteration's row of a stacked input and of a stacked output
/// of the loop (views) and write one: they are read and written where they are, not copied to
/// and from a fixed place, in a loop split into parts and not, with checked accesses. Its
/// carried value, stacked too, is written into its row and carried over from there.
#[test]
fn products_read_and_write_the_rows_of_a_loop() {
    let program = pcg::ir::from_text(
        "program p {
  %0 = input x : [5, 4, 3]
  %1 = param w : [6, 2]
  %2 = param v : [2, 3]
  %3 = const 0 : [4, 3]
  %4 = scan[trips=5, carries=1, stacked=1] %3, %0, %1, %2 : []
    program p.for_t {
      %0 = state h : [4, 3]
      %1 = state x[t] : [4, 3]
      %2 = state w : [6, 2]
      %3 = state v : [2, 3]
      %4 = concat[axis=1] %1, %0 : [4, 6]
      %5 = matmul %4, %2 : [4, 2]
      %6 = matmul %5, %3 : [4, 3]
      %7 = tanh %6 : [4, 3]
      return h = %7
      return joined = %4
      return z = %5
      return hs = %7
    }
  %5 = result[1] %4 : [5, 4, 6]
  %6 = result[2] %4 : [5, 4, 2]
  %7 = result[0] %4 : [4, 3]
  %8 = result[3] %4 : [5, 4, 3]
  return joined = %5
  return z = %6
  return h = %7
  return hs = %8
}
",
    )
    .expect("parses");
    let leaves = random_leaves(&program, 7);
    for split_scan_flops in [0, u64::MAX] {
        let options = JitOptions {
            split_scan_flops,
            ..checked()
        };
        check_program_with("products on a loop's rows", &program, &leaves, &options);
        let jit = JitProgram::compile(&program, &options).expect("compiles");
        let copies: Vec<_> = jit
            .plan()
            .buffers
            .iter()
            .filter(|b| b.label.ends_with("fixed") || b.label.contains(" next "))
            .map(|b| b.label.clone())
            .collect();
        assert!(copies.is_empty(), "copied for a product: {copies:?}");
    }
}

/// A random straight-line program over a few leaves of related shapes.
fn random_program(seed: u64, rows: usize, cols: usize, ops: usize) -> Program {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = Program::new("random");
    let matrix = Shape::new(vec![rows, cols]);
    let mut values = vec![
        p.leaf(LeafKind::Input, "a", matrix.clone()),
        p.leaf(LeafKind::Input, "b", matrix.clone()),
    ];
    let row = p.leaf(LeafKind::Param, "r", Shape::new(vec![cols]));
    let square = p.leaf(LeafKind::Param, "w", Shape::new(vec![cols, cols]));
    let pick = |rng: &mut ChaCha8Rng, values: &[ValueId]| values[rng.random_range(0..values.len())];
    for _ in 0..ops {
        let x = pick(&mut rng, &values);
        let y = pick(&mut rng, &values);
        let v = match rng.random_range(0..16) {
            0 => p.unary(UnaryOp::Tanh, x),
            1 => p.unary(UnaryOp::Sigmoid, x),
            2 => p.add_values(x, y),
            3 => p.mul(x, y),
            4 => p.sub(x, y),
            5 => p.binary(BinaryOp::Max, x, y),
            6 => {
                let b = p.broadcast(row, matrix.clone());
                p.add_values(x, b)
            }
            7 => p.build(Op::MatMul, &[x, square], None),
            8 => {
                let s = p.reduce_sum(x, vec![0]);
                let s = p.reshape(s, Shape::new(vec![1, cols]));
                p.broadcast(s, matrix.clone())
            }
            9 => {
                let c = p.binary(BinaryOp::Greater, x, y);
                p.build(Op::Where, &[c, x, y], None)
            }
            11 => {
                // A computed value read transposed and transposed back.
                let t = p.transpose(x, vec![1, 0]);
                let u = p.unary(UnaryOp::Sin, t);
                let w = p.add_values(u, u);
                p.transpose(w, vec![1, 0])
            }
            12 if cols > 1 => {
                let s = p.build(
                    Op::Slice {
                        axis: 1,
                        start: 1,
                        end: cols,
                    },
                    &[x],
                    None,
                );
                let e = p.unary(UnaryOp::Exp, s);
                p.build(
                    Op::Pad {
                        axis: 1,
                        before: 0,
                        after: 1,
                    },
                    &[e],
                    None,
                )
            }
            13 if rows > 1 => {
                let top = p.build(
                    Op::Slice {
                        axis: 0,
                        start: 0,
                        end: 1,
                    },
                    &[x],
                    None,
                );
                let rest = p.build(
                    Op::Slice {
                        axis: 0,
                        start: 1,
                        end: rows,
                    },
                    &[y],
                    None,
                );
                let rest = p.unary(UnaryOp::Neg, rest);
                p.build(Op::Concat { axis: 0 }, &[top, rest], None)
            }
            14 => {
                // The transpose of a matrix reshaped to the matrix's shape: not a strided view.
                let t = p.transpose(x, vec![1, 0]);
                let m = p.reshape(t, Shape::new(vec![rows * cols]));
                let c = p.unary(UnaryOp::Cos, m);
                p.reshape(c, matrix.clone())
            }
            15 => {
                let i = p.build(Op::Iota { axis: 0 }, &[], Some(matrix.clone()));
                let i = p.scale(i, 0.1);
                p.mul(i, x)
            }
            12..=13 => p.unary(UnaryOp::Abs, x),
            _ => {
                let m = p.build(Op::Reduce(ReduceOp::Max, vec![1]), &[x], None);
                let m = p.reshape(m, Shape::new(vec![rows, 1]));
                let m = p.broadcast(m, matrix.clone());
                p.sub(x, m)
            }
        };
        values.push(v);
    }
    let last = *values.last().expect("values");
    p.set_output("last", last);
    let other = pick(&mut rng, &values);
    p.set_output("other", other);
    let total = p.reduce_sum(last, vec![0, 1]);
    p.set_output("total", total);
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_graphs(seed in 0u64..1_000_000, rows in 1usize..9, cols in 1usize..11, ops in 1usize..14) {
        let program = random_program(seed, rows, cols, ops);
        let mut leaves = random_leaves(&program, seed);
        // Keep products of many matrices in range.
        for v in leaves.values_mut() {
            v.mapv_inplace(|x| x * 0.3);
        }
        let reference = interp::eval_outputs(&program, &leaves).expect("runs");
        let out = JitProgram::compile(&program, &checked()).expect("compiles").run(&leaves).expect("runs");
        assert_close(&format!("random graph {seed}"), &out, &reference, TOLERANCE);
    }
}

/// A loop whose carried state is partly set by the prologue and partly taken from the leaves,
/// with a body output nobody reads back and an invariant state entry.
#[test]
fn loop_state_from_prologue_and_leaves() {
    use pcg::ir::LoopProgram;
    let shape = Shape::new(vec![3, 5]);
    let mut prologue = Program::new("prologue");
    let x = prologue.leaf(LeafKind::Input, "x", shape.clone());
    let a0 = prologue.unary(UnaryOp::Tanh, x);
    prologue.set_output("a", a0);
    let k = prologue.scale(x, 0.5);
    prologue.set_output("k", k);
    let mut body = Program::new("body");
    let a = body.leaf(LeafKind::State, "a", shape.clone());
    let b = body.leaf(LeafKind::State, "b", shape.clone());
    let k = body.leaf(LeafKind::State, "k", shape.clone());
    let ab = body.mul(a, b);
    let next_a = body.add_values(ab, k);
    let half = body.scale(a, 0.5);
    let next_b = body.sub(b, half);
    body.set_output("a", next_a);
    body.set_output("b", next_b);
    body.set_output("b copy", b);
    let energy = body.reduce_sum(next_a, vec![0, 1]);
    body.set_output("energy", energy);
    let program = LoopProgram {
        prologue,
        body,
        steps: 5,
        until: None,
    };
    let mut leaves = Bindings::new();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    leaves.insert("x".to_string(), random_tensor(&shape, &mut rng));
    leaves.insert(
        "b".to_string(),
        random_tensor(&shape, &mut rng).mapv(|v| v * 0.2),
    );
    let mut jit = JitLoop::compile(&program, &checked()).expect("compiles");
    for steps in 0..6 {
        let reference = interp::run_loop(&program, &leaves, steps, |_, _| true).expect("runs");
        let state = jit.run(&leaves, steps).expect("runs");
        assert_close(&format!("{steps} steps"), &state, &reference, TOLERANCE);
    }
}

/// Every function `pcg run` compiles for an example keeps its arena within 1.5× of the most
/// memory its buffers ever need at once.
#[test]
fn buffer_plans_stay_close_to_the_live_peak() {
    use pcg::sema::Method;
    use pcg::train::engine::Programs;
    let tight = |what: &str, plan: &pcg::jit::BufferPlan| {
        let (arena, live) = (plan.peak_bytes(), plan.live_bytes());
        assert!(
            arena as f64 <= 1.5 * live as f64,
            "{what}: arena {arena} bytes, live at most {live}"
        );
    };
    for path in examples() {
        let compiled = compile_example(&path);
        let inference = file_inference(&compiled);
        let what = path.display().to_string();
        for method in [Method::Pc, Method::Bp] {
            let programs = Programs::build(&compiled.forward, method, &inference, None)
                .expect("programs build");
            let options = JitOptions::default();
            for program in programs.grad.iter().chain(&programs.fused) {
                let jit = JitProgram::compile(program, &options).expect("compiles");
                tight(&format!("{what} {}", program.name), jit.plan());
            }
            if let (Some(pc), None) = (&programs.pc, &programs.fused) {
                let relax = JitLoop::compile(&pc.relax, &options).expect("compiles");
                tight(&format!("{what} relax"), relax.plan());
                let learn = JitProgram::compile(&pc.learn, &options).expect("compiles");
                tight(&format!("{what} learn"), learn.plan());
            }
        }
    }
}

/// The training step `pcg run` compiles for every example (at its file's batch, with its
/// file's relaxation and in strict mode, whose loop body is split into parts) keeps its arena
/// within 1.5× of the most memory its buffers need at once, as `pcg ir --stage plan` says.
#[test]
fn training_steps_stay_close_to_the_live_peak() {
    use pcg::dump::{stage_text, Format, Stage};
    for path in examples() {
        let (_, compiled) = sema::compile_file(&path, &CompileOptions::default());
        let compiled = compiled.unwrap_or_else(|_| panic!("{} compiles", path.display()));
        let strict = sema::InferenceConfig {
            mode: sema::Mode::Strict,
            steps: 5,
            rate: 0.01,
            ..file_inference(&compiled)
        };
        for (what, inference) in [("file", file_inference(&compiled)), ("strict", strict)] {
            let plan = stage_text(&compiled, Stage::Plan, Format::Text, &inference)
                .expect("the step compiles");
            let ratio: f64 = plan
                .split("arena / live = ")
                .nth(1)
                .and_then(|rest| rest.split(')').next())
                .and_then(|r| r.parse().ok())
                .expect("the plan says its arena / live ratio");
            assert!(
                ratio <= 1.5,
                "{} ({what}): arena / live = {ratio}",
                path.display()
            );
        }
    }
}

/// Loop nests large enough to be shared between threads (flat, broadcast, reduced along the
/// inner axis, with an odd outer extent, and one reduced along the outer axis, which stays on
/// one thread) give the interpreter's results, every access checked.
#[test]
fn kernels_shared_between_threads() {
    let cases: Vec<(&str, Program)> = vec![
        (
            "flat",
            single(&[&[128, 130], &[128, 130]], |p, x| {
                let m = p.mul(x[0], x[1]);
                p.unary(UnaryOp::Tanh, m)
            }),
        ),
        (
            "broadcast row",
            single(&[&[128, 130], &[130]], |p, x| {
                let r = p.broadcast(x[1], Shape::new(vec![128, 130]));
                let s = p.add_values(x[0], r);
                p.unary(UnaryOp::Sigmoid, s)
            }),
        ),
        (
            "inner reduction, odd rows",
            single(&[&[131, 129]], |p, x| {
                let e = p.unary(UnaryOp::Exp, x[0]);
                p.reduce_sum(e, vec![1])
            }),
        ),
        (
            "outer reduction",
            single(&[&[131, 129]], |p, x| p.reduce_sum(x[0], vec![0])),
        ),
        (
            "leading axis into rows, the kept axis outermost",
            single(&[&[37, 90, 33]], |p, x| {
                let e = p.unary(UnaryOp::Exp, x[0]);
                p.reduce_sum(e, vec![0])
            }),
        ),
        (
            "leading and inner axes, the kept axis outermost",
            single(&[&[37, 90, 33]], |p, x| {
                p.build(Op::Reduce(ReduceOp::Max, vec![0, 2]), &[x[0]], None)
            }),
        ),
        (
            "whole sum, partial results by row",
            single(&[&[301, 7, 33]], |p, x| {
                let sq = p.mul(x[0], x[0]);
                p.reduce_sum(sq, vec![0, 1, 2])
            }),
        ),
        (
            "whole max, partial results by row",
            single(&[&[301, 231]], |p, x| {
                p.build(Op::Reduce(ReduceOp::Max, vec![0, 1]), &[x[0]], None)
            }),
        ),
        (
            "transposed read",
            single(&[&[192, 100], &[100, 192]], |p, x| {
                let t = p.transpose(x[1], vec![1, 0]);
                p.mul(x[0], t)
            }),
        ),
    ];
    for (what, program) in &cases {
        check_program(what, program, &random_leaves(program, 3));
    }
    // The first two are shared, and the whole reductions' partial results: each has a
    // function of its own besides the entry.
    for (what, program) in cases[..2].iter().chain(&cases[4..8]) {
        let jit = JitProgram::compile(program, &checked()).expect("compiles");
        let functions = jit.clif().matches("function ").count();
        assert!(functions > 1, "{what}: {functions} function(s)");
    }
}

/// Compiled code flushes subnormal results to zero (a product of two small numbers that
/// would be subnormal is 0), and the calling thread's floating-point mode is as it was
/// afterwards.
#[test]
#[cfg(target_arch = "x86_64")]
fn compiled_code_flushes_subnormals() {
    let program = single(&[&[64], &[64]], |p, x| p.mul(x[0], x[1]));
    let leaves: Bindings<f32> = [
        (
            "x0".to_string(),
            Tensor::from_shape_vec(&[64][..], vec![1e-30; 64]).unwrap(),
        ),
        (
            "x1".to_string(),
            Tensor::from_shape_vec(&[64][..], vec![1e-10; 64]).unwrap(),
        ),
    ]
    .into_iter()
    .collect();
    let mut jit = JitProgram::compile(&program, &checked()).expect("compiles");
    let out = jit.run(&leaves).expect("runs");
    assert!(out["out"].iter().all(|&v| v == 0.0), "{:?}", out["out"]);
    let subnormal = std::hint::black_box(1e-30f32) * std::hint::black_box(1e-10f32);
    assert!(subnormal > 0.0, "the caller's mode is left as it was");
}
