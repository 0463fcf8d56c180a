//! Graphviz view of a PC graph: each node's value and error units, the predictions that flow
//! up (value of a parent → error of a child) and the error messages that flow back (error of a
//! child → value of a parent), the loss clamping the outputs and the parameter updates.

use super::{PcGraph, Role};
use crate::ir::{LeafKind, Op, Program};
use std::fmt::Write;

/// Renders the PC graph of `forward` as a `digraph`.
pub fn to_dot(forward: &Program, graph: &PcGraph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}.pc\" {{", forward.name);
    let _ = writeln!(out, "  rankdir=BT;");
    let _ = writeln!(out, "  node [fontname=\"Helvetica\", fontsize=10];");
    let _ = writeln!(out, "  loss [label=\"loss\", shape=doublecircle, style=filled, fillcolor=\"#e63946\", fontcolor=white];");
    for (i, pc) in graph.nodes.iter().enumerate() {
        let _ = writeln!(out, "  subgraph cluster_{i} {{");
        let _ = writeln!(
            out,
            "    label=\"{} {}\"; style=rounded; color=\"#999999\";",
            pc.label, pc.shape
        );
        match pc.role {
            Role::Relaxed { .. } => {
                let _ = writeln!(
                    out,
                    "    v{i} [label=\"v {}\", shape=box, style=filled, fillcolor=\"#8ecae6\"];",
                    pc.label
                );
                let _ = writeln!(out, "    e{i} [label=\"ε = v − μ\", shape=box, style=filled, fillcolor=\"#f8a5a5\"];");
            }
            Role::Output => {
                let _ = writeln!(out, "    e{i} [label=\"ε = −∂L/∂μ\", shape=box, style=filled, fillcolor=\"#f8a5a5\"];");
            }
        }
        let _ = writeln!(out, "  }}");
        if pc.role == Role::Output || matches!(pc.role, Role::Relaxed { loss_reads: true }) {
            let _ = writeln!(out, "  loss -> e{i} [label=\"clamp\", color=\"#e63946\"];");
        }
        for p in &pc.params {
            let _ = writeln!(
                out,
                "  e{i} -> p_{p} [label=\"Δθ\", style=dashed, color=\"#b08900\"];"
            );
        }
    }
    for (id, name) in forward.leaves(LeafKind::Param) {
        let _ = id;
        let _ = writeln!(
            out,
            "  p_{name} [label=\"param {name}\", shape=box, style=filled, fillcolor=\"#f4c542\"];"
        );
    }
    // Predictions: a child's prediction reads its parents' values (or clamped inputs).
    for (j, pc) in graph.nodes.iter().enumerate() {
        for (i, parent) in graph.nodes.iter().enumerate() {
            if parent.children.contains(&j) {
                let _ = writeln!(out, "  v{i} -> e{j} [label=\"μ\", color=\"#555555\"];");
                let _ = writeln!(
                    out,
                    "  e{j} -> v{i} [label=\"(∂μ/∂v)ᵀ ε\", style=dashed, color=\"#d62828\"];"
                );
            }
        }
        let _ = pc;
    }
    // Clamped inputs feeding predictions.
    let users = forward.users();
    for (id, name) in forward.leaves(LeafKind::Input) {
        let mut stack = users[id.index()].clone();
        let mut seen = std::collections::HashSet::new();
        let mut reached = Vec::new();
        while let Some(u) = stack.pop() {
            if !seen.insert(u) {
                continue;
            }
            if let Some(j) = graph.nodes.iter().position(|p| p.value == u) {
                reached.push(j);
                continue;
            }
            if !matches!(forward.node(u).op, Op::Leaf(_)) {
                stack.extend(users[u.index()].iter().copied());
            }
        }
        if reached.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  x_{name} [label=\"input {name}\", shape=invhouse, style=filled, fillcolor=\"#b7e4c7\"];");
        reached.sort_unstable();
        reached.dedup();
        for j in reached {
            let _ = writeln!(out, "  x_{name} -> e{j} [label=\"μ\", color=\"#555555\"];");
        }
    }
    out.push_str("}\n");
    out
}
