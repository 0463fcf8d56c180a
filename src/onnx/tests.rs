//! One-node models built in Rust: what `import` writes for an op and its attributes, and what
//! it refuses. (`tests/onnx_import.rs` compares whole models with ONNX Runtime.)

use super::proto::{
    self, attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
};
use super::{import, Loss, Options};
use prost::Message;

fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    proto::float_value(name, dims)
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: format!("/{op}"),
        op_type: op.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute,
        ..Default::default()
    }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    proto::ints_attribute(name, values)
}

fn int(name: &str, value: i64) -> AttributeProto {
    proto::int_attribute(name, value)
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Float as i32,
        f: value,
        ..Default::default()
    }
}

fn weights(name: &str, dims: &[i64]) -> TensorProto {
    let count = dims.iter().product::<i64>() as usize;
    TensorProto {
        name: name.to_string(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: (0..count).map(|i| i as f32 / 10.0).collect(),
        ..Default::default()
    }
}

fn shape(name: &str, values: &[i64]) -> TensorProto {
    proto::int64_tensor(name, values)
}

/// Imports a graph of `nodes` from input `x` to output `out`.
fn imported(
    nodes: Vec<NodeProto>,
    x: &[i64],
    out: &[i64],
    initializer: Vec<TensorProto>,
) -> Result<String, String> {
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "g".to_string(),
            node: nodes,
            input: vec![value("x", x)],
            output: vec![value("out", out)],
            initializer,
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = Options {
        model_name: "m".to_string(),
        loss: Loss::Mse,
        target: "y".to_string(),
        batch: None,
        source_name: "m.onnx".to_string(),
    };
    import(&model.encode_to_vec(), &options)
        .map(|i| i.text)
        .map_err(|e| e.to_string())
}

#[test]
fn a_reshape_to_the_fixed_batch_size_keeps_it_symbolic() {
    let nodes = vec![node("Reshape", &["x", "target"], "out", vec![])];
    let text = imported(nodes, &[2, 3, 4], &[2, 12], vec![shape("target", &[2, 12])]).unwrap();
    assert!(text.contains("let out = reshape(x, [B, 12])"), "{text}");
    assert!(text.contains("batch = 2"), "{text}");
}

#[test]
fn gemm_writes_its_attributes() {
    let attrs = vec![float("alpha", 0.5), float("beta", 2.0), int("transA", 1)];
    let nodes = vec![node("Gemm", &["x", "w", "c"], "out", attrs)];
    let inits = vec![weights("w", &[3, 5]), weights("c", &[5])];
    let text = imported(nodes, &[3, 3], &[3, 5], inits);
    // transA of the input [B, 3] would multiply along the batch: the shapes tell.
    assert!(text.unwrap_err().contains("a product of [3, B] by [3, 5]"));
    let attrs = vec![float("alpha", 0.5), float("beta", 2.0), int("transB", 1)];
    let nodes = vec![node("Gemm", &["x", "w", "c"], "out", attrs)];
    let inits = vec![weights("w", &[5, 3]), weights("c", &[5])];
    let text = imported(nodes, &[4, 3], &[4, 5], inits).unwrap();
    assert!(
        text.contains("let out = 0.5 * (x @ transpose(w)) + 2.0 * c"),
        "{text}"
    );
}

#[test]
fn refusals_name_the_node_and_what_is_missing() {
    let cases: Vec<(NodeProto, Vec<TensorProto>, &[i64], &str)> = vec![
        (
            node(
                "BatchNormalization",
                &["x", "s", "b", "mean", "var"],
                "out",
                vec![int("training_mode", 1)],
            ),
            ["s", "b", "mean", "var"]
                .iter()
                .map(|n| weights(n, &[3]))
                .collect(),
            &[2, 3, 4, 4],
            "node `/BatchNormalization` (BatchNormalization): training-mode batch normalisation",
        ),
        (
            node(
                "MaxPool",
                &["x"],
                "out",
                vec![ints("kernel_shape", &[2, 2]), ints("pads", &[2, 0, 0, 0])],
            ),
            vec![],
            &[2, 3, 7, 7],
            "as large as the window",
        ),
        (
            node("Relu", &["x"], "out", vec![int("fast", 1)]),
            vec![],
            &[2, 3],
            "node `/Relu` (Relu): its attribute `fast` is not supported",
        ),
        (
            node("Softmax", &["x"], "out", vec![int("axis", 0)]),
            vec![],
            &[2, 3],
            "the stdlib's softmax is over the last axis",
        ),
        (
            node("Conv", &["x", "w"], "out", vec![int("group", 2)]),
            vec![weights("w", &[2, 2, 3, 3])],
            &[2, 3, 5, 5],
            "an input of 3 channels, a weight of 2 per group and 2 outputs in 2 groups",
        ),
        (
            node(
                "ConvTranspose",
                &["x", "w"],
                "out",
                vec![ints("output_shape", &[9, 9])],
            ),
            vec![weights("w", &[3, 2, 3, 3])],
            &[2, 3, 5, 5],
            "output_shape = [9, 9] differs from the shape its pads give, [7, 7]",
        ),
    ];
    for (node, inits, input, expected) in cases {
        let op = node.op_type.clone();
        let error = imported(vec![node], input, input, inits).unwrap_err();
        assert!(error.contains(expected), "{op}: {error}");
    }
}

#[test]
fn same_padding_maps_to_a_padding_even_or_not() {
    // An odd kernel pads evenly; an even one one more at the end (SAME_UPPER).
    for (kernel, padding) in [(3, "1"), (2, "[0, 0, 1, 1]")] {
        let attrs = vec![
            AttributeProto {
                name: "auto_pad".to_string(),
                r#type: AttributeType::String as i32,
                s: b"SAME_UPPER".to_vec(),
                ..Default::default()
            },
            ints("kernel_shape", &[kernel, kernel]),
        ];
        let nodes = vec![node("Conv", &["x", "w"], "out", attrs)];
        let text = imported(
            nodes,
            &[2, 3, 5, 5],
            &[2, 4, 5, 5],
            vec![weights("w", &[4, 3, kernel, kernel])],
        )
        .unwrap();
        let expected = format!("let out = conv2d(x, w, padding = {padding})");
        assert!(text.contains(&expected), "{text}");
    }
}
