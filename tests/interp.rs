//! The reference interpreter, op by op, against values worked out by hand.

use ndarray::{array, ArrayD, IxDyn};
use pcg::interp::{eval, eval_outputs, Bindings, EvalError, Tensor};
use pcg::ir::{BinaryOp, ConvParams, LeafKind, Op, Program, ReduceOp, Shape, UnaryOp};

/// Runs `op` on the given operands (bound to input leaves `x0`, `x1`, ...) and returns its
/// value, checking that `eval` and `eval_outputs` agree.
fn run(op: Op, operands: &[ArrayD<f64>], target: Option<&[usize]>) -> ArrayD<f64> {
    let mut p = Program::new("op");
    let mut leaves = Bindings::new();
    let mut args = Vec::new();
    for (i, value) in operands.iter().enumerate() {
        let name = format!("x{i}");
        args.push(p.leaf(LeafKind::Input, &name, Shape::new(value.shape())));
        leaves.insert(name, value.clone());
    }
    let out = p.build(op, &args, target.map(Shape::new));
    p.set_output("out", out);
    let all = eval(&p, &leaves).expect("eval");
    let outputs = eval_outputs(&p, &leaves).expect("eval_outputs");
    assert_eq!(all[out.index()], outputs["out"]);
    assert_eq!(all[out.index()].shape(), p.shape(out).dims());
    assert!(all.iter().all(|v| v.is_standard_layout()));
    outputs["out"].clone()
}

/// `run` with one operand.
fn run1(op: Op, x: &ArrayD<f64>, target: Option<&[usize]>) -> ArrayD<f64> {
    run(op, std::slice::from_ref(x), target)
}

fn unary(op: UnaryOp, x: ArrayD<f64>) -> ArrayD<f64> {
    run(Op::Unary(op), &[x], None)
}

fn binary(op: BinaryOp, a: ArrayD<f64>, b: ArrayD<f64>) -> ArrayD<f64> {
    run(Op::Binary(op), &[a, b], None)
}

fn assert_close(found: &ArrayD<f64>, expected: &ArrayD<f64>) {
    assert_eq!(found.shape(), expected.shape());
    for (f, e) in found.iter().zip(expected) {
        assert!(
            (f - e).abs() <= 1e-12 * (1.0 + e.abs()),
            "{found} != {expected}"
        );
    }
}

/// 1, 2, 3, ... in the given shape.
fn counting(shape: &[usize]) -> ArrayD<f64> {
    let n = shape.iter().product::<usize>();
    ArrayD::from_shape_vec(IxDyn(shape), (1..=n).map(|i| i as f64).collect()).unwrap()
}

#[test]
fn leaves_and_constants() {
    let x = array![[1.0, 2.0], [3.0, 4.0]].into_dyn();
    let mut p = Program::new("leaf");
    let leaf = p.leaf(LeafKind::Param, "w", Shape::new([2, 2]));
    let c = p.constant(2.5, Shape::new([3]));
    p.set_output("w", leaf);
    p.set_output("c", c);
    let leaves = Bindings::from([("w".to_string(), x.clone())]);
    let out = eval_outputs(&p, &leaves).unwrap();
    assert_eq!(out["w"], x);
    assert_eq!(out["c"], array![2.5, 2.5, 2.5].into_dyn());
    let scalar = eval_outputs::<f32>(&single_const(-1.5), &Bindings::new()).unwrap();
    assert_eq!(scalar["c"], ndarray::arr0(-1.5f32).into_dyn());
}

fn single_const(value: f64) -> Program {
    let mut p = Program::new("const");
    let c = p.constant(value, Shape::scalar());
    p.set_output("c", c);
    p
}

#[test]
fn missing_and_misshapen_leaves_are_errors() {
    let mut p = Program::new("leaf");
    let x = p.leaf(LeafKind::Input, "x", Shape::new([2]));
    p.set_output("x", x);
    let err = eval_outputs::<f64>(&p, &Bindings::new()).unwrap_err();
    assert_eq!(
        err,
        EvalError::MissingLeaf {
            name: "x".into(),
            kind: LeafKind::Input,
            shape: Shape::new([2])
        }
    );
    assert_eq!(err.to_string(), "no value given for input `x` of shape [2]");

    let wrong = Bindings::from([("x".to_string(), array![1.0, 2.0, 3.0].into_dyn())]);
    let err = eval(&p, &wrong).unwrap_err();
    assert_eq!(
        err,
        EvalError::LeafShape {
            name: "x".into(),
            expected: Shape::new([2]),
            found: Shape::new([3])
        }
    );
    assert_eq!(
        err.to_string(),
        "`x` is declared [2] but was given a value of shape [3]"
    );
}

#[test]
fn invalid_programs_are_errors_not_panics() {
    let mut p = Program::new("bad");
    let x = p.leaf(LeafKind::Input, "x", Shape::new([2]));
    let y = p.unary(UnaryOp::Neg, x);
    p.nodes[y.index()].shape = Shape::new([3]);
    let leaves = Bindings::from([("x".to_string(), array![1.0, 2.0].into_dyn())]);
    assert!(matches!(eval(&p, &leaves), Err(EvalError::Invalid(_))));
}

#[test]
fn eval_outputs_skips_what_no_output_needs() {
    let mut p = Program::new("partial");
    let x = p.leaf(LeafKind::Input, "x", Shape::new([2]));
    let unused = p.leaf(LeafKind::Input, "unbound", Shape::new([2]));
    let _dead = p.unary(UnaryOp::Exp, unused);
    let y = p.unary(UnaryOp::Neg, x);
    let z = p.mul(y, y);
    p.set_output("z", z);
    p.set_output("again", z);
    let leaves = Bindings::from([("x".to_string(), array![1.0, -3.0].into_dyn())]);
    let out = eval_outputs(&p, &leaves).unwrap();
    assert_eq!(out["z"], array![1.0, 9.0].into_dyn());
    assert_eq!(out["again"], out["z"]);
    assert!(eval(&p, &leaves).is_err(), "eval needs every leaf");
}

#[test]
fn long_chains_evaluate() {
    let mut p = Program::new("chain");
    let mut v = p.leaf(LeafKind::Input, "x", Shape::new([4]));
    for _ in 0..1000 {
        v = p.scale(v, 1.001);
    }
    p.set_output("y", v);
    let leaves = Bindings::from([("x".to_string(), ArrayD::ones(IxDyn(&[4])))]);
    let y: &Tensor<f64> = &eval_outputs(&p, &leaves).unwrap()["y"];
    assert!((y[[0]] - 1.001f64.powi(1000)).abs() < 1e-9);
}

#[test]
fn unary_ops() {
    use std::f64::consts::{E, FRAC_PI_2, FRAC_PI_4, PI};
    let v = |xs: &[f64]| ArrayD::from_shape_vec(IxDyn(&[xs.len()]), xs.to_vec()).unwrap();
    let cases: &[(UnaryOp, &[f64], &[f64])] = &[
        (UnaryOp::Neg, &[1.0, -2.0], &[-1.0, 2.0]),
        (UnaryOp::Exp, &[0.0, 1.0], &[1.0, E]),
        (UnaryOp::Log, &[1.0, E], &[0.0, 1.0]),
        (UnaryOp::Sqrt, &[4.0, 9.0], &[2.0, 3.0]),
        (UnaryOp::Sin, &[0.0, FRAC_PI_2], &[0.0, 1.0]),
        (UnaryOp::Cos, &[0.0, PI], &[1.0, -1.0]),
        (UnaryOp::Tan, &[0.0, FRAC_PI_4], &[0.0, 1.0]),
        (UnaryOp::Tanh, &[0.0, 1.0], &[0.0, 0.761_594_155_955_764_9]),
        (
            UnaryOp::Sigmoid,
            &[0.0, 3f64.ln(), -3f64.ln()],
            &[0.5, 0.75, 0.25],
        ),
        (UnaryOp::Sigmoid, &[-1000.0, 1000.0], &[0.0, 1.0]),
        (UnaryOp::Abs, &[-2.0, 0.0, 3.0], &[2.0, 0.0, 3.0]),
        (
            UnaryOp::Sign,
            &[-3.0, 0.0, -0.0, 2.0],
            &[-1.0, 0.0, 0.0, 1.0],
        ),
        (UnaryOp::Powf(3.0), &[2.0, -1.0], &[8.0, -1.0]),
        (UnaryOp::Powf(0.5), &[4.0, 2.25], &[2.0, 1.5]),
        (UnaryOp::Powf(-1.0), &[4.0], &[0.25]),
    ];
    for &(op, x, expected) in cases {
        assert_close(&unary(op, v(x)), &v(expected));
    }
}

#[test]
fn binary_ops() {
    let a = || array![[1.0, 2.0, 3.0], [-1.0, 0.0, 6.0]].into_dyn();
    let b = || array![[3.0, 2.0, 1.0], [-2.0, 0.0, 4.0]].into_dyn();
    let cases = [
        (BinaryOp::Add, array![[4.0, 4.0, 4.0], [-3.0, 0.0, 10.0]]),
        (BinaryOp::Sub, array![[-2.0, 0.0, 2.0], [1.0, 0.0, 2.0]]),
        (BinaryOp::Mul, array![[3.0, 4.0, 3.0], [2.0, 0.0, 24.0]]),
        (BinaryOp::Max, array![[3.0, 2.0, 3.0], [-1.0, 0.0, 6.0]]),
        (BinaryOp::Greater, array![[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]]),
        (BinaryOp::Equal, array![[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]),
    ];
    for (op, expected) in cases {
        assert_close(&binary(op, a(), b()), &expected.into_dyn());
    }
    let quotient = binary(
        BinaryOp::Div,
        array![1.0, -6.0].into_dyn(),
        array![4.0, 3.0].into_dyn(),
    );
    assert_close(&quotient, &array![0.25, -2.0].into_dyn());
}

#[test]
fn where_selects_by_nonzero_condition() {
    let cond = array![1.0, 0.0, -2.0, 0.0].into_dyn();
    let a = array![1.0, 2.0, 3.0, 4.0].into_dyn();
    let b = array![10.0, 20.0, 30.0, 40.0].into_dyn();
    let out = run(Op::Where, &[cond, a, b], None);
    assert_eq!(out, array![1.0, 20.0, 3.0, 40.0].into_dyn());
}

#[test]
fn reductions() {
    // x[i, j, k] = 1 + 6i + 2j + k over [2, 3, 2]
    let x = counting(&[2, 3, 2]);
    let sum = run1(Op::Reduce(ReduceOp::Sum, vec![0, 2]), &x, None);
    assert_eq!(
        sum,
        array![
            1.0 + 2.0 + 7.0 + 8.0,
            3.0 + 4.0 + 9.0 + 10.0,
            5.0 + 6.0 + 11.0 + 12.0
        ]
        .into_dyn()
    );
    let max = run1(Op::Reduce(ReduceOp::Max, vec![1]), &x, None);
    assert_eq!(max, array![[5.0, 6.0], [11.0, 12.0]].into_dyn());
    let total = run1(Op::Reduce(ReduceOp::Sum, vec![0, 1, 2]), &x, None);
    assert_eq!(total, ndarray::arr0(78.0).into_dyn());
    let negated = x.mapv(|v| -v);
    let max_all = run(Op::Reduce(ReduceOp::Max, vec![0, 1, 2]), &[negated], None);
    assert_eq!(max_all, ndarray::arr0(-1.0).into_dyn());
}

#[test]
fn reshape_is_row_major() {
    let x = counting(&[2, 3]);
    let out = run(Op::Reshape, &[x], Some(&[3, 2]));
    assert_eq!(out, array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]].into_dyn());
    // Reshaping a transposed value reads it in its logical (not memory) order.
    let t = run(Op::Transpose(vec![1, 0]), &[counting(&[2, 3])], None);
    let flat = run(Op::Reshape, &[t], Some(&[6]));
    assert_eq!(flat, array![1.0, 4.0, 2.0, 5.0, 3.0, 6.0].into_dyn());
}

#[test]
fn transpose_moves_input_axis_perm_i_to_output_axis_i() {
    let x = counting(&[2, 3, 4]);
    let out = run1(Op::Transpose(vec![2, 0, 1]), &x, None);
    assert_eq!(out.shape(), &[4, 2, 3]);
    for (i, j, k) in [(1, 0, 2), (3, 1, 1), (0, 1, 2)] {
        assert_eq!(out[[i, j, k]], x[[j, k, i]]);
    }
    assert!(out.is_standard_layout());
}

#[test]
fn broadcast_follows_numpy() {
    let row = array![1.0, 2.0, 3.0].into_dyn();
    assert_eq!(
        run(Op::Broadcast, &[row], Some(&[2, 3])),
        array![[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]].into_dyn()
    );
    let column = array![[1.0], [2.0]].into_dyn();
    assert_eq!(
        run(Op::Broadcast, &[column], Some(&[2, 3])),
        array![[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]].into_dyn()
    );
    let scalar = ndarray::arr0(7.0).into_dyn();
    assert_eq!(
        run(Op::Broadcast, &[scalar], Some(&[2, 2])),
        array![[7.0, 7.0], [7.0, 7.0]].into_dyn()
    );
}

#[test]
fn slice_pad_and_concat() {
    let x = counting(&[2, 4]);
    let sliced = run(
        Op::Slice {
            axis: 1,
            start: 1,
            end: 3,
        },
        &[x],
        None,
    );
    assert_eq!(sliced, array![[2.0, 3.0], [6.0, 7.0]].into_dyn());
    let padded = run(
        Op::Pad {
            axis: 0,
            before: 1,
            after: 2,
        },
        &[array![[1.0, 2.0]].into_dyn()],
        None,
    );
    assert_eq!(
        padded,
        array![[0.0, 0.0], [1.0, 2.0], [0.0, 0.0], [0.0, 0.0]].into_dyn()
    );
    let joined = run(
        Op::Concat { axis: 1 },
        &[
            array![[1.0], [2.0]].into_dyn(),
            array![[3.0, 4.0], [5.0, 6.0]].into_dyn(),
            array![[7.0], [8.0]].into_dyn(),
        ],
        None,
    );
    assert_eq!(
        joined,
        array![[1.0, 3.0, 4.0, 7.0], [2.0, 5.0, 6.0, 8.0]].into_dyn()
    );
}

#[test]
fn matmul_2d() {
    let a = array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]].into_dyn();
    let b = array![[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]].into_dyn();
    let out = run(Op::MatMul, &[a, b], None);
    assert_eq!(out, array![[7.0, -1.0], [16.0, -1.0]].into_dyn());
}

#[test]
fn matmul_batched() {
    let a = array![[[1.0, 2.0]], [[3.0, 4.0]]].into_dyn(); // [2, 1, 2]
    let b = array![
        [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]],
        [[2.0, 0.0, 0.0], [0.0, 2.0, 1.0]]
    ]
    .into_dyn(); // [2, 2, 3]
    let out = run(Op::MatMul, &[a, b], None);
    assert_eq!(out, array![[[1.0, 2.0, 3.0]], [[6.0, 8.0, 4.0]]].into_dyn());

    // Rank 4, against per-batch 2-D products.
    let a = counting(&[2, 3, 2, 4]);
    let b = counting(&[2, 3, 4, 5]).mapv(|v| v.sin());
    let out = run(Op::MatMul, &[a.clone(), b.clone()], None);
    assert_eq!(out.shape(), &[2, 3, 2, 5]);
    for i in 0..2 {
        for j in 0..3 {
            let a2: ndarray::ArrayView2<f64> = a.slice(ndarray::s![i, j, .., ..]);
            let b2: ndarray::ArrayView2<f64> = b.slice(ndarray::s![i, j, .., ..]);
            let expected = a2.dot(&b2).into_dyn();
            assert_close(
                &out.slice(ndarray::s![i, j, .., ..]).to_owned().into_dyn(),
                &expected,
            );
        }
    }
}

/// A 4x4 image 1..16 and a 3x3 kernel with 1 at the top-left and 2 at the bottom-right, so that
/// each output reads x[2i - 1, 2j - 1] + 2 x[2i + 1, 2j + 1] (stride 2, padding 1).
fn conv_example() -> (ArrayD<f64>, ArrayD<f64>) {
    let x = counting(&[1, 1, 4, 4]);
    let mut w = ArrayD::zeros(IxDyn(&[1, 1, 3, 3]));
    w[[0, 0, 0, 0]] = 1.0;
    w[[0, 0, 2, 2]] = 2.0;
    (x, w)
}

const STRIDE_2_PAD_1: (usize, usize) = (2, 1);

fn conv_op() -> Op {
    Op::Conv2d(ConvParams::new(STRIDE_2_PAD_1.0, STRIDE_2_PAD_1.1))
}

#[test]
fn conv2d_stride_2_padding_1() {
    let (x, w) = conv_example();
    let out = run(conv_op(), &[x, w], None);
    // [0 + 2*6, 0 + 2*8; 0 + 2*14, 6 + 2*16]
    assert_eq!(out, array![[[[12.0, 16.0], [28.0, 38.0]]]].into_dyn());
}

#[test]
fn conv2d_input_grad_by_hand() {
    let (_, w) = conv_example();
    let g = array![[[[1.0, 2.0], [3.0, 4.0]]]].into_dyn();
    let (stride, padding) = STRIDE_2_PAD_1;
    let dx = run(
        Op::Conv2dInputGrad(ConvParams::new(stride, padding)),
        &[g, w],
        Some(&[1, 1, 4, 4]),
    );
    // Output (1,1) reads x[1,1] with weight 1; output (i,j) reads x[2i+1, 2j+1] with weight 2.
    let expected = array![[[
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 4.0 + 2.0, 0.0, 4.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 6.0, 0.0, 8.0]
    ]]]
    .into_dyn();
    assert_eq!(dx, expected);
}

#[test]
fn conv2d_weight_grad_by_hand() {
    let (x, _) = conv_example();
    let g = array![[[[1.0, 2.0], [3.0, 4.0]]]].into_dyn();
    let (stride, padding) = STRIDE_2_PAD_1;
    let dw = run(
        Op::Conv2dWeightGrad(ConvParams::new(stride, padding)),
        &[x, g],
        Some(&[1, 1, 3, 3]),
    );
    // dw[ki, kj] = sum over outputs (i, j) of g[i, j] x[2i + ki - 1, 2j + kj - 1]
    let expected =
        array![[[[24.0, 43.0, 50.0], [44.0, 78.0, 88.0], [68.0, 118.0, 128.0]]]].into_dyn();
    assert_eq!(dw, expected);
}

/// Direct definition of the convolution, for comparison on multi-channel shapes.
fn conv_direct(x: &ArrayD<f64>, w: &ArrayD<f64>, stride: usize, padding: usize) -> ArrayD<f64> {
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (o, kh, kw) = (w.shape()[0], w.shape()[2], w.shape()[3]);
    let oh = (h + 2 * padding - kh) / stride + 1;
    let ow = (wd + 2 * padding - kw) / stride + 1;
    let mut out = ArrayD::zeros(IxDyn(&[n, o, oh, ow]));
    for (b, f, i, j) in ndarray::indices((n, o, oh, ow)) {
        let mut acc = 0.0;
        for ch in 0..c {
            for ki in 0..kh {
                for kj in 0..kw {
                    let row = (i * stride + ki).checked_sub(padding).filter(|&r| r < h);
                    let col = (j * stride + kj).checked_sub(padding).filter(|&c| c < wd);
                    if let (Some(r), Some(c)) = (row, col) {
                        acc += x[[b, ch, r, c]] * w[[f, ch, ki, kj]];
                    }
                }
            }
        }
        out[[b, f, i, j]] = acc;
    }
    out
}

fn pseudo_random(shape: &[usize], seed: f64) -> ArrayD<f64> {
    counting(shape).mapv(|v| (v * seed).sin())
}

fn dot(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn conv2d_multichannel_matches_definition_and_adjoints() {
    for (stride, padding, kernel) in [(1, 0, 3), (2, 1, 3), (1, 2, 2), (3, 1, 1)] {
        let x = pseudo_random(&[2, 3, 5, 6], 1.3);
        let w = pseudo_random(&[4, 3, kernel, kernel], 0.7);
        let y = run(
            Op::Conv2d(ConvParams::new(stride, padding)),
            &[x.clone(), w.clone()],
            None,
        );
        assert_close(&y, &conv_direct(&x, &w, stride, padding));

        // <conv(x, w), g> = <x, input_grad(g, w)> = <w, weight_grad(x, g)>
        let g = pseudo_random(y.shape(), 2.1);
        let dx = run(
            Op::Conv2dInputGrad(ConvParams::new(stride, padding)),
            &[g.clone(), w.clone()],
            Some(x.shape()),
        );
        let dw = run(
            Op::Conv2dWeightGrad(ConvParams::new(stride, padding)),
            &[x.clone(), g.clone()],
            Some(w.shape()),
        );
        let reference = dot(&y, &g);
        assert!((dot(&x, &dx) - reference).abs() < 1e-9 * (1.0 + reference.abs()));
        assert!((dot(&w, &dw) - reference).abs() < 1e-9 * (1.0 + reference.abs()));
    }
}

#[test]
fn f32_and_f64_agree() {
    let mut p = Program::new("mixed");
    let x = p.leaf(LeafKind::Input, "x", Shape::new([2, 3]));
    let w = p.leaf(LeafKind::Param, "w", Shape::new([3, 2]));
    let h = p.build(Op::MatMul, &[x, w], None);
    let y = p.unary(UnaryOp::Tanh, h);
    p.set_output("y", y);
    let x64 = pseudo_random(&[2, 3], 0.9);
    let w64 = pseudo_random(&[3, 2], 1.7);
    let in64 = Bindings::from([
        ("x".to_string(), x64.clone()),
        ("w".to_string(), w64.clone()),
    ]);
    let in32: Bindings<f32> = in64
        .iter()
        .map(|(k, v)| (k.clone(), v.mapv(|e| e as f32)))
        .collect();
    let y64 = &eval_outputs(&p, &in64).unwrap()["y"];
    let y32: &Tensor<f32> = &eval_outputs(&p, &in32).unwrap()["y"];
    for (a, b) in y64.iter().zip(y32) {
        assert!((a - *b as f64).abs() < 1e-6);
    }
}

#[test]
fn leaves_in_any_memory_layout_read_logically() {
    // A column-major binding: logically [[1, 3, 5], [2, 4, 6]].
    let x = counting(&[3, 2]).reversed_axes();
    assert!(!x.is_standard_layout());
    let flat = run1(Op::Reshape, &x, Some(&[6]));
    assert_eq!(flat, array![1.0, 3.0, 5.0, 2.0, 4.0, 6.0].into_dyn());
    let w = array![[1.0], [0.0], [-1.0]].into_dyn();
    let product = run(Op::MatMul, &[x, w], None);
    assert_eq!(product, array![[1.0 - 5.0], [2.0 - 6.0]].into_dyn());
}

/// Sums of pads whose parts are adjacent along one axis become one concat (no zeros, no
/// sums); sums of parts that are not adjacent stay sums. Either way the values are unchanged.
#[test]
fn sums_of_adjacent_pads_become_a_concat() {
    let mut p = Program::new("pads");
    let x = p.leaf(LeafKind::Input, "x", Shape::new([3, 10]));
    let part = |p: &mut Program, start: usize, end: usize| {
        let s = p
            .add(
                Op::Slice {
                    axis: 1,
                    start,
                    end,
                },
                vec![x],
                None,
            )
            .expect("slice");
        let t = p.unary(UnaryOp::Tanh, s);
        p.add(
            Op::Pad {
                axis: 1,
                before: start,
                after: 10 - end,
            },
            vec![t],
            None,
        )
        .expect("pad")
    };
    let (a, b, c) = (part(&mut p, 0, 4), part(&mut p, 4, 7), part(&mut p, 7, 10));
    // c + b, then + a: every step joins adjacent parts.
    let cb = p.add_values(c, b);
    let joined = p.add_values(cb, a);
    p.set_output("joined", joined);
    // a + c leaves a gap: not joined.
    let gap = p.add_values(a, c);
    p.set_output("gap", gap);
    let leaves = Bindings::from([("x".to_string(), counting(&[3, 10]).mapv(|v| v / 7.0))]);
    let before = eval_outputs(&p, &leaves).expect("runs");
    pcg::opt::simplify(&mut p);
    let after = eval_outputs(&p, &leaves).expect("runs");
    assert_eq!(before, after);
    let joined = p.output("joined").expect("output");
    assert!(matches!(p.node(joined).op, Op::Concat { axis: 1 }));
    assert_eq!(p.node(joined).args.len(), 3);
    let gap = p.output("gap").expect("output");
    assert!(matches!(p.node(gap).op, Op::Binary(BinaryOp::Add)));
}
