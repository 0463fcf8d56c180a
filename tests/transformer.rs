//! The transformer's pieces and the example built from them: the causal mask's values, the
//! character transformer's exact-mode PC gradient against backprop's, the JIT against the
//! interpreter on it, and accuracy over sequence targets (a decision per position). Run
//! through the library's `Model`, as the Python module runs it.

use ndarray::{ArrayD, IxDyn};
use pcg::data::npz::{from_arrays, Array};
use pcg::model::{Data, Model, ModelSource, Run};
use pcg::npz::Arrays;
use pcg::sema::{CompileOptions, InferenceOverrides, Method, Mode};
use pcg::train::engine::Backend;
use std::path::{Path, PathBuf};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/transformer_shakespeare.pcg")
}

fn small_transformer() -> Model {
    let options = CompileOptions {
        batch: Some(2),
        ..CompileOptions::default()
    };
    Model::compile(ModelSource::File(example()), options, None).expect("compiles")
}

fn run(method: Method, mode: Option<Mode>, backend: Backend) -> Run {
    Run {
        method: Some(method),
        backend,
        relax: InferenceOverrides {
            mode,
            ..InferenceOverrides::default()
        },
        lr: None,
    }
}

fn rel(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

#[test]
fn causal_mask_is_one_on_and_below_the_diagonal() {
    let source = "model m {\n  param w: [3, 3]\n  loss sum(causal_mask(3) * w)\n}\n";
    let text = ModelSource::Text {
        name: "mask.pcg".into(),
        text: source.into(),
    };
    let mut model = Model::compile(text, CompileOptions::default(), Some(0)).expect("compiles");
    let (result, _) = model
        .grad(Some(Arrays::new()), &run(Method::Bp, None, Backend::Interp))
        .expect("runs");
    let expected = [[1., 0., 0.], [1., 1., 0.], [1., 1., 1.]];
    let got = &result.grads["w"];
    for i in 0..3 {
        for j in 0..3 {
            assert_eq!(got[[i, j]], expected[i][j], "mask[{i}, {j}]");
        }
    }
}

#[test]
fn the_transformers_exact_pc_gradient_is_backprops() {
    let mut model = small_transformer();
    let (bp, _) = model
        .grad(None, &run(Method::Bp, None, Backend::Jit))
        .expect("bp");
    let (pc, _) = model
        .grad(None, &run(Method::Pc, Some(Mode::Exact), Backend::Jit))
        .expect("pc");
    assert_eq!(bp.grads.len(), 18);
    for (name, g) in &bp.grads {
        let err = rel(&pc.grads[name], g);
        assert!(err < 1e-4, "{name}: {err:.3e}");
    }
    let (report, _) = model
        .gradcheck(None, &run(Method::Pc, Some(Mode::Exact), Backend::Interp))
        .expect("gradcheck");
    assert!(report.max_rel_err() <= 1e-4, "{}", report.max_rel_err());
    // Fewer steps than the graph is deep do not reach backprop's gradient.
    let short = Run {
        relax: InferenceOverrides {
            mode: Some(Mode::Exact),
            steps: Some(3),
            ..InferenceOverrides::default()
        },
        ..run(Method::Pc, None, Backend::Jit)
    };
    let (partial, _) = model.grad(None, &short).expect("pc, 3 steps");
    assert!(bp
        .grads
        .iter()
        .any(|(n, g)| rel(&partial.grads[n], g) > 1e-2));
}

#[test]
fn the_jit_and_the_interpreter_agree_on_the_transformer() {
    let mut model = small_transformer();
    for method in [Method::Bp, Method::Pc] {
        let mode = (method == Method::Pc).then_some(Mode::Exact);
        let (jit, _) = model
            .grad(None, &run(method, mode, Backend::Jit))
            .expect("jit");
        let (interp, _) = model
            .grad(None, &run(method, mode, Backend::Interp))
            .expect("interp");
        assert!((jit.loss - interp.loss).abs() <= 1e-5 * interp.loss.abs());
        for (name, g) in &interp.grads {
            let err = rel(&jit.grads[name], g);
            assert!(err < 1e-4, "{method:?} {name}: {err:.3e}");
        }
    }
}

#[test]
fn accuracy_over_sequences_counts_positions() {
    let mut model = small_transformer();
    // Parameters that predict character 5 at every position: all zero but the output bias.
    let (t, v, c) = (64, 73, 5);
    let mut params: Arrays = model
        .params()
        .iter()
        .map(|(k, a)| (k.clone(), ArrayD::zeros(a.raw_dim())))
        .collect();
    params.get_mut("by").expect("by")[[c]] = 1.0;
    model.set_params(params).expect("params");
    // Four windows whose next characters are 5 at three positions in four.
    let mut y = ArrayD::zeros(IxDyn(&[4, t, v]));
    for n in 0..4 {
        for p in 0..t {
            y[[n, p, if p % 4 == 3 { 6 } else { c }]] = 1.0;
        }
    }
    let arrays = [
        Array::Floats(y.clone()),
        Array::Floats(y.clone()),
        Array::Floats(y.clone()),
        Array::Floats(y),
    ];
    let names = ["x", "y", "x_test", "y_test"];
    let dataset = from_arrays(Path::new("windows"), names, arrays, false).expect("data");
    let (loss, acc, examples) = model
        .evaluate(Data::Loaded(Box::new(dataset)), Backend::Jit)
        .expect("evaluates");
    assert_eq!(examples, 4);
    assert!(loss.is_finite());
    let acc = acc.expect("the logits are shaped like the target");
    assert!((acc - 0.75).abs() < 1e-12, "accuracy {acc}");
}
