//! `pcg predict` and `pcg export` on the ONNX fixtures of `tests/onnx`, imported first: the
//! predictions equal the interpreter's forward pass and ONNX Runtime's outputs, bad inputs
//! are clear errors, and an exported file decodes, names its initializers as asked and
//! imports back into a model that predicts the same.

use ndarray::{ArrayD, Axis};
use pcg::interp::{eval, Bindings};
use pcg::npz::{self, Arrays};
use pcg::onnx::proto::{self, ModelProto};
use pcg::sema::{compile_file, CompileOptions};
use std::path::{Path, PathBuf};

mod common;

use common::{pcg, text};

fn scratch(name: &str) -> PathBuf {
    common::scratch("onnx-export", name)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A fixture imported into files named after `label`: the model, its parameters and the map
/// of their names.
struct Imported {
    model: PathBuf,
    params: PathBuf,
    names: PathBuf,
}

fn import(onnx: &Path, label: &str) -> Imported {
    let written = Imported {
        model: scratch(&format!("{label}.pcg")),
        params: scratch(&format!("{label}_params.npz")),
        names: scratch(&format!("{label}_names.json")),
    };
    let o = pcg(&[
        "import",
        path(onnx),
        "--out",
        path(&written.model),
        "--params",
        path(&written.params),
        "--names",
        path(&written.names),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    written
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(format!("tests/onnx/{name}.onnx"))
}

/// The fixture's reference arrays: its inputs and ONNX Runtime's output.
fn reference(name: &str) -> Arrays {
    npz::read(Path::new(&format!("tests/onnx/{name}.npz"))).expect("fixture")
}

/// Writes `inputs` to a scratch `.npz` and runs `pcg predict` on it; returns the command's
/// output and where the predictions were to go.
fn predict(
    written: &Imported,
    inputs: &Arrays,
    label: &str,
    extra: &[&str],
) -> (std::process::Output, PathBuf) {
    let inputs_path = scratch(&format!("{label}_inputs.npz"));
    npz::write(&inputs_path, inputs).unwrap();
    let out = scratch(&format!("{label}_predictions.npz"));
    let _ = std::fs::remove_file(&out);
    let mut args = vec!["--inputs", path(&inputs_path)];
    args.extend_from_slice(extra);
    (run("predict", written, &out, &args), out)
}

/// Runs `pcg COMMAND MODEL --params P --out OUT ARGS...` on an imported model.
fn run(command: &str, written: &Imported, out: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec![
        command,
        path(&written.model),
        "--params",
        path(&written.params),
        "--out",
        path(out),
    ];
    all.extend_from_slice(args);
    pcg(&all)
}

fn predicted(written: &Imported, inputs: &Arrays, label: &str, extra: &[&str]) -> Arrays {
    let (o, out) = predict(written, inputs, label, extra);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("ok: "), "{}", text(&o.stdout));
    npz::read(&out).expect("predictions")
}

fn assert_close(found: &ArrayD<f32>, expected: &ArrayD<f32>, tol: f32, what: &str) {
    assert_eq!(found.shape(), expected.shape(), "{what}");
    for (f, e) in found.iter().zip(expected) {
        assert!(
            (f - e).abs() <= tol * (1.0 + e.abs()),
            "{what}: {found} != {expected}"
        );
    }
}

/// The interpreter's value of the node named `output` in the model's forward program (which
/// also computes the loss, against a target of zeros).
fn interpreter_forward(written: &Imported, inputs: &Arrays, output: &str) -> ArrayD<f32> {
    let batch = inputs.values().next().unwrap().shape()[0];
    let options = CompileOptions {
        batch: Some(batch),
        ..CompileOptions::default()
    };
    let forward = compile_file(&written.model, &options)
        .1
        .expect("compiles")
        .forward;
    let mut leaves: Bindings<f32> = npz::read(&written.params).unwrap();
    leaves.extend(inputs.clone());
    for (id, name) in forward.leaves(pcg::ir::LeafKind::Target) {
        leaves.insert(name.to_string(), ArrayD::zeros(forward.shape(id).dims()));
    }
    let values = eval(&forward, &leaves).expect("evaluates");
    let id = forward
        .ids()
        .find(|&id| forward.node(id).name.as_deref() == Some(output))
        .unwrap_or_else(|| panic!("no value named `{output}`"));
    values[id.index()].clone()
}

fn one(name: &str, value: ArrayD<f32>) -> Arrays {
    Arrays::from([(name.to_string(), value)])
}

#[test]
fn predict_equals_the_interpreters_forward_and_onnx_runtime() {
    let written = import(&fixture("cnn"), "cnn");
    let reference = reference("cnn");
    let inputs = one("image", reference["image"].clone());
    for backend in ["jit", "interp"] {
        let label = format!("cnn_{backend}");
        let found = predicted(&written, &inputs, &label, &["--backend", backend]);
        let names: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(names, ["logits"]);
        let expected = interpreter_forward(&written, &inputs, "logits");
        assert_close(&found["logits"], &expected, 1e-5, backend);
        assert_close(&found["logits"], &reference["logits"], 1e-5, "ONNX Runtime");
    }
}

#[test]
fn predict_takes_the_batch_size_from_the_inputs() {
    let written = import(&fixture("mlp"), "mlp_batch");
    let all = reference("mlp")["input"].clone();
    let whole = predicted(&written, &one("input_", all.clone()), "whole", &[]);
    // The file's train block says 32; the inputs hold fewer rows, and any number of them.
    for rows in [1, 3] {
        let part = all.slice_axis(Axis(0), (0..rows).into()).to_owned();
        let found = predicted(&written, &one("input_", part), &format!("rows{rows}"), &[]);
        let expected = whole["logits"]
            .slice_axis(Axis(0), (0..rows).into())
            .to_owned();
        assert_close(&found["logits"], &expected, 1e-6, &format!("{rows} rows"));
    }
}

#[test]
fn predict_reads_a_checkpoint_and_ignores_other_arrays() {
    let written = import(&fixture("mlp"), "mlp_checkpoint");
    let input = reference("mlp")["input"].clone();
    let plain = predicted(&written, &one("input_", input.clone()), "plain", &[]);
    // A checkpoint holds the optimiser's state and the epochs done besides the parameters.
    let mut checkpoint = npz::read(&written.params).unwrap();
    for (name, value) in checkpoint.clone() {
        checkpoint.insert(format!("opt.m.{name}"), value.mapv(|x| x + 1.0));
    }
    checkpoint.insert("meta.epochs_done".into(), ArrayD::from_elem(vec![], 3.0));
    let checkpoint_path = scratch("checkpoint.npz");
    npz::write(&checkpoint_path, &checkpoint).unwrap();
    let from_checkpoint = Imported {
        params: checkpoint_path,
        ..written
    };
    let mut inputs = one("input_", input);
    inputs.insert("y".into(), ArrayD::zeros(vec![2, 10]));
    let found = predicted(&from_checkpoint, &inputs, "from_checkpoint", &[]);
    assert_eq!(found["logits"], plain["logits"]);
}

/// Runs `pcg predict` expecting it to fail: no panic, no file written, and every one of
/// `expected` in the error.
fn assert_predict_fails(written: &Imported, inputs: &Arrays, label: &str, expected: &[&str]) {
    let (o, out) = predict(written, inputs, label, &[]);
    assert!(!o.status.success(), "{label}: {}", text(&o.stdout));
    let stderr = text(&o.stderr);
    assert!(!stderr.contains("panicked"), "{label}: {stderr}");
    for part in expected {
        assert!(stderr.contains(part), "{label}: `{part}` not in: {stderr}");
    }
    assert!(!out.exists(), "{label}: wrote {}", out.display());
}

#[test]
fn predict_refuses_bad_inputs_and_parameters_clearly() {
    let written = import(&fixture("mlp"), "mlp_errors");
    let good = reference("mlp")["input"].clone();
    assert_predict_fails(
        &written,
        &one("x", good.clone()),
        "misnamed",
        &["no array named `input_`", "[N, 20]"],
    );
    assert_predict_fails(
        &written,
        &one("input_", ArrayD::zeros(vec![2, 21])),
        "too_wide",
        &["input_", "[2, 21]"],
    );
    assert_predict_fails(
        &written,
        &one("input_", ArrayD::zeros(vec![20])),
        "no_batch_axis",
        &["input_", "[20]"],
    );
    let inputs = one("input_", good);
    let mut missing = npz::read(&written.params).unwrap();
    missing.remove("fc2_bias");
    let missing_path = scratch("missing_param.npz");
    npz::write(&missing_path, &missing).unwrap();
    let corrupt_path = scratch("corrupt.npz");
    std::fs::write(&corrupt_path, b"not a zip file").unwrap();
    let absent_path = scratch("absent.npz");
    for (params, expected) in [
        (missing_path, "no array named `fc2_bias`"),
        (corrupt_path, "not a valid .npz file"),
        (absent_path, "cannot open"),
    ] {
        let label = params.file_stem().unwrap().to_string_lossy().into_owned();
        let broken = Imported {
            params,
            model: written.model.clone(),
            names: written.names.clone(),
        };
        assert_predict_fails(&broken, &inputs, &label, &[expected]);
    }
}

/// Runs `pcg export` and decodes the written file.
fn export(written: &Imported, label: &str, extra: &[&str]) -> (PathBuf, ModelProto) {
    let out = scratch(&format!("{label}.onnx"));
    let o = run("export", written, &out, extra);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("ok: "), "{}", text(&o.stdout));
    let model = proto::decode_model(&std::fs::read(&out).unwrap()).expect("decodes");
    (out, model)
}

fn dims(value: &proto::ValueInfoProto) -> Vec<usize> {
    let (_, dims) = proto::declared_tensor(value).expect("a tensor type with a shape");
    dims.iter()
        .map(|d| match d {
            proto::DeclaredDim::Size(n) => *n,
            proto::DeclaredDim::Open(p) => panic!("open dimension `{p}`"),
        })
        .collect()
}

#[test]
fn export_writes_the_forward_graph_with_the_parameters_as_initializers() {
    let written = import(&fixture("mlp"), "mlp_export");
    let (_, model) = export(&written, "mlp_export", &["--batch", "3"]);
    assert_eq!(model.ir_version, 8);
    let opset = &model.opset_import[0];
    assert_eq!((opset.domain.as_str(), opset.version), ("", 17));
    let graph = model.graph.expect("a graph");
    let inputs: Vec<(&str, Vec<usize>)> = graph
        .input
        .iter()
        .map(|v| (v.name.as_str(), dims(v)))
        .collect();
    assert_eq!(inputs, [("input_", vec![3, 20])]);
    let outputs: Vec<(&str, Vec<usize>)> = graph
        .output
        .iter()
        .map(|v| (v.name.as_str(), dims(v)))
        .collect();
    assert_eq!(outputs, [("logits", vec![3, 10])]);
    // No loss, no target: two dense layers and a ReLU.
    let ops: Vec<&str> = graph
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .filter(|op| *op != "Constant")
        .collect();
    assert_eq!(
        ops,
        [
            "Transpose",
            "MatMul",
            "Add",
            "Max",
            "Transpose",
            "MatMul",
            "Add"
        ]
    );
    // The initializers hold the parameters' values under their `.pcg` names.
    let params = npz::read(&written.params).unwrap();
    let mut names = Vec::new();
    for init in &graph.initializer {
        let (shape, values) = proto::tensor_values(init).expect("readable");
        let proto::Values::Float(values) = values else {
            panic!("`{}` is not a float tensor", init.name)
        };
        let expected = &params[&init.name];
        assert_eq!(shape, expected.shape());
        let expected: Vec<f64> = expected.iter().map(|&x| f64::from(x)).collect();
        assert_eq!(values, expected, "{}", init.name);
        names.push(init.name.as_str());
    }
    names.sort_unstable();
    assert_eq!(names, ["fc1_bias", "fc1_weight", "fc2_bias", "fc2_weight"]);
}

/// Predictions of `written` on a fixture's inputs (renamed to the model's inputs).
fn fixture_predictions(written: &Imported, fixture: &str, label: &str) -> Arrays {
    let reference = reference(fixture);
    let model = proto::decode_model(&std::fs::read(self::fixture(fixture)).unwrap()).unwrap();
    let graph = model.graph.unwrap();
    let onnx_input = &graph.input[0].name;
    let source = std::fs::read_to_string(&written.model).unwrap();
    let pcg_input = source
        .lines()
        .find_map(|l| l.trim().strip_prefix("input")?.trim().split(':').next())
        .expect("an input declaration")
        .to_string();
    let inputs = one(&pcg_input, reference[onnx_input].clone());
    predicted(written, &inputs, label, &[])
}

#[test]
fn an_exported_import_imports_back_with_its_names_and_predictions() {
    for name in ["mlp", "cnn", "layers", "tanh_matmul"] {
        let original = import(&fixture(name), &format!("{name}_original"));
        let batch = reference(name).values().next().unwrap().shape()[0].to_string();
        let label = format!("{name}_exported");
        let (onnx, model) = export(
            &original,
            &label,
            &["--names", path(&original.names), "--batch", &batch],
        );
        let graph = model.graph.unwrap();
        let fixture_graph = proto::decode_model(&std::fs::read(fixture(name)).unwrap())
            .unwrap()
            .graph
            .unwrap();
        for init in &graph.initializer {
            assert!(
                fixture_graph
                    .initializer
                    .iter()
                    .any(|i| i.name == init.name),
                "{name}: `{}` is not an initializer of the original",
                init.name
            );
        }
        let again = import(&onnx, &format!("{name}_again"));
        let names = |p: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        assert_eq!(names(&again.names), names(&original.names), "{name}");
        let before = fixture_predictions(&original, name, &format!("{name}_before"));
        let after = fixture_predictions(&again, name, &format!("{name}_after"));
        assert_eq!(before.len(), 1);
        let (output, expected) = before.iter().next().unwrap();
        assert_close(&after[output], expected, 1e-5, name);
    }
}

#[test]
fn an_op_without_an_onnx_form_is_an_error_naming_it() {
    let program = pcg::ir::from_text(
        "program adjoint {
           %0 = input x : [1, 2, 4, 4]
           %1 = param g : [1, 3, 2, 2]
           %2 = conv2d_weight_grad[stride=1, padding=0] %0, %1 : [3, 2, 3, 3]
           return out = %2
         }",
    )
    .expect("parses");
    let params = one("g", ArrayD::zeros(vec![1, 3, 2, 2]));
    let error = pcg::onnx::export(&program, &params, &Default::default()).unwrap_err();
    assert!(error.contains("conv2d_weight_grad"), "{error}");
    assert!(error.contains("no ONNX form"), "{error}");
}

#[test]
fn export_refuses_a_map_of_names_that_is_not_one() {
    let written = import(&fixture("mlp"), "mlp_bad_names");
    let names = scratch("bad_names.json");
    std::fs::write(&names, "[1, 2]").unwrap();
    let out = scratch("bad_names.onnx");
    let o = run("export", &written, &out, &["--names", path(&names)]);
    assert!(!o.status.success());
    let stderr = text(&o.stderr);
    assert!(stderr.contains("not a map of names"), "{stderr}");
    assert!(!out.exists());
}
