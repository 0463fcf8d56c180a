//! pcg: a compiler for differentiable programs that turns computation graphs into their
//! predictive-coding equivalents.

pub mod data;
pub mod diag;
pub mod ir;
pub mod source;
pub mod syntax;
