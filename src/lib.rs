//! pcg: a compiler for differentiable programs that turns computation graphs into their
//! predictive-coding equivalents.
//!
//! The pipeline, one module per stage: `syntax` (text to AST), `sema` (AST to the forward IR
//! program), `ir` (the program representation shared by every later stage).

pub mod cli;
pub mod data;
pub mod diag;
pub mod ir;
pub mod sema;
pub mod source;
pub mod syntax;
