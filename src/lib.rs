//! pcg: a compiler for differentiable programs that turns computation graphs into their
//! predictive-coding equivalents.

pub mod autodiff;
pub mod diag;
pub mod interp;
pub mod ir;
pub mod source;
pub mod syntax;
