//! Graphviz DOT output of a program. Parameters, inputs, targets, state buffers, operations,
//! loss nodes and outputs are drawn in visibly different shapes and colours.

use super::{LeafKind, Op, OpKind, Program, Region};
use std::fmt::Write;

/// Renders a program as a Graphviz `digraph`.
pub fn to_dot(program: &Program) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&program.name));
    let _ = writeln!(out, "  rankdir=TB;");
    let _ = writeln!(out, "  node [fontname=\"Helvetica\", fontsize=10];");
    for id in program.ids() {
        let node = program.node(id);
        let name = node.name.as_deref().unwrap_or("");
        let (label, style) = match &node.op {
            Op::Leaf(kind) => {
                let style = match kind {
                    LeafKind::Param => "shape=box, style=filled, fillcolor=\"#f4c542\"",
                    LeafKind::Input => "shape=invhouse, style=filled, fillcolor=\"#8ecae6\"",
                    LeafKind::Target => "shape=house, style=filled, fillcolor=\"#b7e4c7\"",
                    LeafKind::State => "shape=box3d, style=filled, fillcolor=\"#e0e0e0\"",
                    LeafKind::Noise => "shape=octagon, style=filled, fillcolor=\"#f1c0e8\"",
                };
                (
                    format!("{} {}\\n{}", kind.keyword(), name, node.shape),
                    style,
                )
            }
            op => {
                let title = if name.is_empty() {
                    format!("{op}")
                } else {
                    format!("{name} = {op}")
                };
                let style = match (node.region, op.kind()) {
                    (Region::Loss, _) => "shape=ellipse, style=filled, fillcolor=\"#f8a5a5\"",
                    (_, OpKind::Const) => "shape=plaintext",
                    (_, OpKind::Contraction) => {
                        "shape=ellipse, style=\"filled,bold\", fillcolor=\"#cdb4db\""
                    }
                    _ => "shape=ellipse",
                };
                (format!("{id} {}\\n{}", escape(&title), node.shape), style)
            }
        };
        let _ = writeln!(out, "  n{} [label=\"{}\", {}];", id.0, label, style);
        for a in &node.args {
            let _ = writeln!(out, "  n{} -> n{};", a.0, id.0);
        }
    }
    for (i, o) in program.outputs.iter().enumerate() {
        let _ = writeln!(
            out,
            "  out{i} [label=\"{}\", shape=doublecircle, style=filled, fillcolor=\"#e63946\", fontcolor=white];",
            escape(&o.name)
        );
        let _ = writeln!(out, "  n{} -> out{i};", o.value.0);
    }
    out.push_str("}\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
