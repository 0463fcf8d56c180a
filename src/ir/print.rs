//! The deterministic text form of a program: one line per node, numbered in program order,
//! with the result shape on every line, the source name as a comment and loss nodes marked.

use super::{fmt_f64, Op, Program, Region};
use std::fmt::Write;

/// Renders a program as text.
pub fn to_text(program: &Program) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "program {} {{", program.name);
    for (name, init) in &program.inits {
        let _ = writeln!(out, "  init {name} = {init}");
    }
    for id in program.ids() {
        let node = program.node(id);
        let mut line = format!("  {id} = ");
        match &node.op {
            Op::Leaf(kind) => {
                let _ = write!(line, "{} {}", kind.keyword(), node.name.as_deref().unwrap_or("?"));
            }
            Op::Const(c) => {
                let _ = write!(line, "const {}", fmt_f64(*c));
            }
            op => {
                let args: Vec<String> = node.args.iter().map(|a| a.to_string()).collect();
                let _ = write!(line, "{op} {}", args.join(", "));
            }
        }
        let _ = write!(line, " : {}", node.shape);
        let mut notes = Vec::new();
        if node.region == Region::Loss {
            notes.push("loss".to_string());
        }
        if let (Some(name), false) = (&node.name, matches!(node.op, Op::Leaf(_))) {
            notes.push(name.clone());
        }
        if !notes.is_empty() {
            let _ = write!(line, "  // {}", notes.join(" "));
        }
        let _ = writeln!(out, "{line}");
    }
    for o in &program.outputs {
        let _ = writeln!(out, "  return {} = {}", o.name, o.value);
    }
    out.push_str("}\n");
    out
}
