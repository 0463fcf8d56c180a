//! What analysis learns about each name of a program, for the language server: where each use
//! of a name was bound, what each binding held (a tensor's shape, the op that made it and the
//! IR node it names, or a compile-time number), and which function each call inlined.
//!
//! The lowering notes these as it goes (`note_*`). Notes are kept only while [`record`] runs;
//! everywhere else (every CLI command) a note costs one thread-local check, and the lowering
//! does not carry an index through its calls.

use super::value::Val;
use crate::ir::Program;
use crate::source::Span;
use std::cell::RefCell;

/// Everything noted while one analysis ran.
#[derive(Clone, Debug, Default)]
pub struct SymbolIndex {
    /// Each binding of a name, once per time it was bound: a binding inside a loop or an
    /// inlined function is noted at every iteration or call.
    pub bindings: Vec<BindingNote>,
    /// `(use, binding)`: where each use of a name (a read, or the target of `name = ...`) was
    /// bound.
    pub uses: Vec<(Span, Span)>,
    /// `(callee, definition)`: the name of each call of a user or stdlib function, and that
    /// function's name in its `fn`.
    pub calls: Vec<(Span, Span)>,
    /// `(callee, diagnostics)`: the indices, in the analysis's diagnostics, of those reported
    /// while a call was inlined (an error inside a function, by the call that led to it).
    pub call_errors: Vec<(Span, std::ops::Range<usize>)>,
}

/// One binding of a name to a value.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingNote {
    /// The name where it is bound (a declaration, `let`, parameter, loop variable, `const`, or
    /// the target of `name = ...`).
    pub span: Span,
    pub value: ValueNote,
}

/// What a binding held.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueNote {
    Tensor {
        shape: Vec<usize>,
        /// The op of the IR node, as the IR printer writes it (`matmul`, `tanh`,
        /// `reduce_sum[axes=[1]]`, `param`...).
        op: String,
        /// The IR node's name (the source name, `f.name` inside an inlined function `f`).
        node: Option<String>,
    },
    Int(i64),
    Float(f64),
    /// Anything else, described as diagnostics describe it ("a tuple of 2 values").
    Other(String),
}

thread_local! {
    static RECORDING: RefCell<Option<SymbolIndex>> = const { RefCell::new(None) };
}

/// Runs `analysis` (a call of the front end) and returns what it noted about names.
pub fn record<T>(analysis: impl FnOnce() -> T) -> (T, SymbolIndex) {
    let outer = RECORDING.with(|r| r.replace(Some(SymbolIndex::default())));
    let result = analysis();
    let index = RECORDING.with(|r| r.replace(outer)).unwrap_or_default();
    (result, index)
}

fn with_index(f: impl FnOnce(&mut SymbolIndex)) {
    RECORDING.with(|r| {
        if let Some(index) = r.borrow_mut().as_mut() {
            f(index);
        }
    });
}

/// Notes that `span` binds `val`.
pub(super) fn note_binding(span: Span, val: &Val, program: &Program) {
    with_index(|index| {
        let value = match val {
            Val::Tensor(id) => {
                let node = program.node(*id);
                ValueNote::Tensor {
                    shape: node.shape.0.clone(),
                    op: node.op.to_string(),
                    node: node.name.clone(),
                }
            }
            Val::Int(i) => ValueNote::Int(*i),
            Val::Float(x) => ValueNote::Float(*x),
            other => ValueNote::Other(other.describe(program)),
        };
        index.bindings.push(BindingNote { span, value });
    });
}

/// Notes that the name at `use_span` refers to the binding at `binding`.
pub(super) fn note_use(use_span: Span, binding: Span) {
    with_index(|index| index.uses.push((use_span, binding)));
}

/// Notes that the call named at `callee` inlines the function named at `definition`.
pub(super) fn note_call(callee: Span, definition: Span) {
    with_index(|index| index.calls.push((callee, definition)));
}

/// Notes that the diagnostics `reported` (indices) came while inlining the call named at
/// `callee`.
pub(super) fn note_call_errors(callee: Span, reported: std::ops::Range<usize>) {
    if !reported.is_empty() {
        with_index(|index| index.call_errors.push((callee, reported)));
    }
}
