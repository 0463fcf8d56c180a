//! The values of compile-time evaluation: tensors are IR values, everything else (integers for
//! shapes and loop bounds, floats, tuples, lists, strings) lives only at compile time.

use crate::ir::{Program, ValueId};

#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    /// A tensor computed by the program.
    Tensor(ValueId),
    /// A compile-time integer: a dimension, an index, a loop counter.
    Int(i64),
    /// A compile-time number; it becomes a constant tensor where a tensor is needed.
    Float(f64),
    Bool(bool),
    Str(String),
    Tuple(Vec<Val>),
    List(Vec<Val>),
    /// The index of a loop being lowered as a scan, plus a constant: `t`, `t + 1`. `level`
    /// is the loop's nesting depth (1 for the outermost). Only indexing and adding or
    /// subtracting integers accept it; anything else makes the loop unroll instead.
    Iteration {
        level: usize,
        offset: i64,
    },
    /// The value of an expression whose error has already been reported.
    Poison,
}

impl Val {
    /// How the value is described in diagnostics ("a tensor of shape [64, 10]").
    pub fn describe(&self, program: &Program) -> String {
        match self {
            Val::Tensor(id) => {
                let shape = program.shape(*id);
                if shape.rank() == 0 {
                    "a scalar tensor".to_string()
                } else {
                    format!("a tensor of shape {shape}")
                }
            }
            Val::Int(i) => format!("the integer {i}"),
            Val::Float(x) => format!("the number {x}"),
            Val::Bool(_) => "a boolean".to_string(),
            Val::Str(_) => "a string".to_string(),
            Val::Tuple(items) => format!("a tuple of {} values", items.len()),
            Val::List(items) => format!("a list of {} values", items.len()),
            Val::Iteration { .. } => "a loop index".to_string(),
            Val::Poison => "an erroneous value".to_string(),
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Float(x) => Some(*x),
            _ => None,
        }
    }
}
