//! `pcg import` on the ONNX fixtures of `tests/onnx` (made by `scripts/onnx_fixtures.py`):
//! the written model checks and is formatted, and its forward pass on the fixture's inputs
//! equals ONNX Runtime's output; a model import cannot express writes nothing.

use ndarray::ArrayD;
use pcg::interp::{eval, Bindings};
use pcg::npz;
use pcg::sema::{compile_file, CompileOptions};
use std::path::{Path, PathBuf};

mod common;

use common::{pcg, text};

fn scratch(name: &str) -> PathBuf {
    common::scratch("onnx-import", name)
}

/// What `pcg import` wrote for one fixture.
struct Imported {
    model: PathBuf,
    params: PathBuf,
    names: PathBuf,
}

/// Imports a fixture into files named after `label` (tests run at once) and checks that the
/// model passes `pcg check` and `pcg fmt --check`.
fn import(fixture: &str, label: &str, extra: &[&str]) -> Imported {
    let written = Imported {
        model: scratch(&format!("{label}.pcg")),
        params: scratch(&format!("{label}_params.npz")),
        names: scratch(&format!("{label}_names.json")),
    };
    let onnx = format!("tests/onnx/{fixture}.onnx");
    let mut args = vec![
        "import",
        &onnx,
        "--out",
        written.model.to_str().unwrap(),
        "--params",
        written.params.to_str().unwrap(),
        "--names",
        written.names.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = pcg(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("ok: "), "{}", text(&o.stdout));
    for command in [&["check"][..], &["fmt", "--check"][..]] {
        let mut args = command.to_vec();
        args.push(written.model.to_str().unwrap());
        let o = pcg(&args);
        assert!(o.status.success(), "{command:?}: {}", text(&o.stderr));
    }
    written
}

fn as_f64(a: &ArrayD<f32>) -> ArrayD<f64> {
    a.mapv(f64::from)
}

/// Runs the imported model's forward program on the fixture's inputs (under their `.pcg`
/// names: `inputs` maps ONNX names to them) and compares the value named `output` with ONNX
/// Runtime's, to 1e-5 relative.
fn assert_forward_matches(
    fixture: &str,
    written: &Imported,
    inputs: &[(&str, &str)],
    output: &str,
) {
    let reference = npz::read(Path::new(&format!("tests/onnx/{fixture}.npz"))).expect("fixture");
    let expected = &reference[output];
    let batch = expected.shape()[0];
    let options = CompileOptions {
        batch: Some(batch),
        ..CompileOptions::default()
    };
    let (_, compiled) = compile_file(&written.model, &options);
    let forward = compiled.expect("compiles").forward;
    let mut leaves: Bindings<f64> = npz::read(&written.params)
        .expect("params")
        .iter()
        .map(|(name, value)| (name.clone(), as_f64(value)))
        .collect();
    for (onnx_name, pcg_name) in inputs {
        leaves.insert(pcg_name.to_string(), as_f64(&reference[*onnx_name]));
    }
    leaves.insert("y".to_string(), as_f64(expected));
    let values = eval(&forward, &leaves).expect("evaluates");
    let id = forward
        .ids()
        .find(|&id| forward.node(id).name.as_deref() == Some(output))
        .unwrap_or_else(|| panic!("no value named `{output}`"));
    let found = &values[id.index()];
    assert_eq!(found.shape(), expected.shape());
    for (f, e) in found.iter().zip(expected.iter()) {
        let e = f64::from(*e);
        assert!(
            (f - e).abs() <= 1e-5 * (1.0 + e.abs()),
            "{fixture}: {found} != {expected}"
        );
    }
}

#[test]
fn an_mlp_of_gemm_and_relu_equals_onnx_runtime() {
    let written = import("mlp", "mlp", &[]);
    assert_forward_matches("mlp", &written, &[("input", "input_")], "logits");
    let source = std::fs::read_to_string(&written.model).unwrap();
    // `input` is a keyword; the open batch becomes `B`, the train block's batch the default.
    assert!(source.contains("input_: [B, 20]"), "{source}");
    assert!(source.contains("batch = 32"), "{source}");
    insta::assert_snapshot!("onnx_mlp", source);
    let names: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&written.names).unwrap()).unwrap();
    assert_eq!(
        names,
        serde_json::json!({
            "fc1.weight": "fc1_weight",
            "fc1.bias": "fc1_bias",
            "fc2.weight": "fc2_weight",
            "fc2.bias": "fc2_bias",
        })
    );
    let params = npz::read(&written.params).unwrap();
    assert_eq!(params["fc1_weight"].shape(), [32, 20]);
}

#[test]
fn matmul_tanh_constants_and_softmax_equal_onnx_runtime() {
    let written = import("tanh_matmul", "tanh_matmul", &["--loss", "cross_entropy"]);
    assert_forward_matches("tanh_matmul", &written, &[("x", "x")], "probs");
    let source = std::fs::read_to_string(&written.model).unwrap();
    // The export fixes the batch at 4: the inputs still read `B`, and the train block sets 4.
    assert!(source.contains("x: [B, 8]"), "{source}");
    assert!(source.contains("batch = 4"), "{source}");
    assert!(source.contains("loss cross_entropy(probs, y)"), "{source}");
}

#[test]
fn a_cnn_with_a_shape_computation_equals_onnx_runtime() {
    let written = import("cnn", "cnn", &[]);
    assert_forward_matches("cnn", &written, &[("image", "image")], "logits");
    let source = std::fs::read_to_string(&written.model).unwrap();
    // Shape → Gather → Unsqueeze → Concat folds into the reshape's target.
    assert!(
        source.contains("reshape(relu2_LeakyRelu, [B, 24])"),
        "{source}"
    );
    insta::assert_snapshot!("onnx_cnn", source);
}

#[test]
fn layer_norm_movement_and_known_bounds_equal_onnx_runtime() {
    let written = import("layers", "layers", &[]);
    assert_forward_matches("layers", &written, &[("x", "x")], "out");
    // Initializers read as numbers (clip bounds, an exponent) are not parameters.
    let params = npz::read(&written.params).unwrap();
    let names: Vec<&str> = params.keys().map(String::as_str).collect();
    assert_eq!(names, ["ln2_weight", "ln_bias", "ln_weight", "proj_weight"]);
}

#[test]
fn an_embedding_of_integer_ids_equals_onnx_runtime() {
    let written = import("embedding", "embedding", &[]);
    assert_forward_matches("embedding", &written, &[("ids", "ids")], "scores");
    let source = std::fs::read_to_string(&written.model).unwrap();
    assert!(source.contains("embedding(ids, embed_weight)"), "{source}");
}

#[test]
fn another_target_name_and_batch() {
    let written = import("mlp", "mlp_label", &["--target", "label", "--batch", "8"]);
    let source = std::fs::read_to_string(&written.model).unwrap();
    assert!(source.contains("label: [B, 10]"), "{source}");
    assert!(source.contains("loss mse(logits, label)"), "{source}");
    assert!(source.contains("batch = 8"), "{source}");
}

/// Imports a model that must be refused: the error names what is missing, and no file is
/// written.
fn assert_refused(fixture: &str, expected: &[&str]) {
    let out = scratch(&format!("{fixture}.pcg"));
    let params = scratch(&format!("{fixture}.npz"));
    let names = scratch(&format!("{fixture}.json"));
    let o = pcg(&[
        "import",
        &format!("tests/onnx/{fixture}.onnx"),
        "--out",
        out.to_str().unwrap(),
        "--params",
        params.to_str().unwrap(),
        "--names",
        names.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let stderr = text(&o.stderr);
    for part in expected {
        assert!(stderr.contains(part), "`{part}` not in: {stderr}");
    }
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for path in [&out, &params, &names] {
        assert!(!path.exists(), "{} was written", path.display());
    }
}

#[test]
fn an_unsupported_op_is_an_error_naming_the_node_and_nothing_is_written() {
    assert_refused(
        "unsupported_nms",
        &[
            "error: ",
            "node `/nms` (NonMaxSuppression)",
            "not supported",
        ],
    );
}

#[test]
fn an_unsupported_attribute_is_an_error_saying_what_is_missing() {
    assert_refused(
        "unsupported_conv3d",
        &["node `/conv/Conv` (Conv)", "1-D and 2-D convolutions"],
    );
}

#[test]
fn grouped_dilated_depthwise_and_transposed_convolutions_equal_onnx_runtime() {
    let written = import("conv_options", "conv_options", &[]);
    assert_forward_matches("conv_options", &written, &[("image", "image")], "logits");
    let source = std::fs::read_to_string(&written.model).unwrap();
    for part in [
        "stride = [2, 1]",
        "padding = [1, 0, 2, 1]",
        "dilation = [1, 2]",
        "groups = 2",
        "padding = 1, groups = 6",
        "conv_transpose2d(",
        "padding = [1, 0, 1, 1]",
        "output_padding = [1, 0]",
    ] {
        assert!(source.contains(part), "`{part}` not in:\n{source}");
    }
}

#[test]
fn overlapping_padded_dilated_and_ceiling_pools_equal_onnx_runtime() {
    let written = import("pools", "pools", &[]);
    assert_forward_matches("pools", &written, &[("image", "image")], "logits");
    let source = std::fs::read_to_string(&written.model).unwrap();
    for part in [
        "max_pool2d(c_Conv, 3, stride = 2, padding = 1)",
        "ceil_mode = true",
        "count_include_pad = false",
    ] {
        assert!(source.contains(part), "`{part}` not in:\n{source}");
    }
}

/// Batch normalisation's running statistics are `frozen` tensors, loaded with the parameters;
/// the exact GELU is written with `erf`.
#[test]
fn batch_norm_statistics_are_frozen_and_the_erf_gelu_equals_onnx_runtime() {
    let written = import("batchnorm_gelu", "batchnorm_gelu", &[]);
    assert_forward_matches("batchnorm_gelu", &written, &[("image", "image")], "logits");
    let source = std::fs::read_to_string(&written.model).unwrap();
    for part in [
        "frozen bn_running_mean: [5]",
        "frozen bn_running_var: [5]",
        "param  bn_weight: [5]",
        "erf(",
    ] {
        assert!(source.contains(part), "`{part}` not in:\n{source}");
    }
    let params = npz::read(&written.params).unwrap();
    assert!(params.contains_key("bn_running_var"));
}

#[test]
fn a_file_that_is_not_onnx_is_refused() {
    let out = scratch("not_onnx.pcg");
    let o = pcg(&[
        "import",
        "examples/mlp_digits.pcg",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).starts_with("error: "),
        "{}",
        text(&o.stderr)
    );
    assert!(!out.exists());
}

#[test]
fn a_missing_directory_is_found_before_anything_is_written() {
    let out = scratch("missing_dir.pcg");
    let params = scratch("no_such_dir").join("params.npz");
    let o = pcg(&[
        "import",
        "tests/onnx/mlp.onnx",
        "--out",
        out.to_str().unwrap(),
        "--params",
        params.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("its directory does not exist"),
        "{}",
        text(&o.stderr)
    );
    assert!(!out.exists());
}

/// LSTM and GRU layers become `for` loops over the sequence, with ONNX's gate order and
/// equations (the GRU here resets before its linear map, as ONNX's default does; PyTorch's
/// resets after, which `scripts/torch_models.py` checks).
#[test]
fn lstm_and_gru_layers_are_loops_that_equal_onnx_runtime() {
    for name in ["lstm", "gru"] {
        let written = import(name, name, &[]);
        assert_forward_matches(name, &written, &[("x", "x")], "out");
        let source = std::fs::read_to_string(&written.model).unwrap();
        assert!(source.contains("for rnn_"), "{source}");
    }
}

/// A node of several outputs, `Split`: one `let` per part.
#[test]
fn split_parts_equal_onnx_runtime() {
    let written = import("split", "split", &[]);
    assert_forward_matches("split", &written, &[("x", "x")], "out");
    let source = std::fs::read_to_string(&written.model).unwrap();
    assert!(source.contains("slice(MatMul, 1, 0, 4)"), "{source}");
}
