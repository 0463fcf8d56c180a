//! The deterministic text form of a program: one line per node, numbered in program order,
//! with the result shape on every line, loss-region nodes tagged `[loss]` and the source
//! name as a comment. A scan's body follows its line, indented, as a program of its own.

use super::{fmt_f64, Op, Program, Region};
use std::fmt::Write;

/// Renders a program as text.
pub fn to_text(program: &Program) -> String {
    let mut out = String::new();
    write_program(&mut out, program, "");
    out
}

fn write_program(out: &mut String, program: &Program, indent: &str) {
    let _ = writeln!(out, "{indent}program {} {{", program.name);
    for (name, init) in &program.inits {
        let _ = writeln!(out, "{indent}  init {name} = {init}");
    }
    for id in program.ids() {
        let node = program.node(id);
        let mut line = format!("{indent}  {id} = ");
        match &node.op {
            Op::Leaf(kind) => {
                let _ = write!(
                    line,
                    "{} {}",
                    kind.keyword(),
                    node.name.as_deref().unwrap_or("?")
                );
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
        if node.region == Region::Loss {
            line.push_str("  [loss]");
        }
        if let (Some(name), false) = (&node.name, matches!(node.op, Op::Leaf(_))) {
            let _ = write!(line, "  // {name}");
        }
        let _ = writeln!(out, "{line}");
        if let Op::Scan(scan) = &node.op {
            write_program(out, &scan.body, &format!("{indent}    "));
        }
    }
    for o in &program.outputs {
        let _ = writeln!(out, "{indent}  return {} = {}", o.name, o.value);
    }
    let _ = writeln!(out, "{indent}}}");
}
