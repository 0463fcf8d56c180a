//! pcg: a compiler for differentiable programs that turns computation graphs into their
//! predictive-coding equivalents.
//!
//! The pipeline, one module per stage: `syntax` (text to AST), `sema` (AST to the forward IR
//! program), `ir` (the program representation shared by every later stage), `autodiff` (the
//! gradient program), `pc` (the relaxation and learning programs), `opt` (the IR-to-IR
//! optimisations), `interp` (the reference backend), `jit` (native code), `train` (training loops), `distributed` (training over several processes); `data` and `npz` handle files, `onnx` imports and exports ONNX models, `predict` runs a model on inputs alone, `memory` what a model needs and the machine has; `lsp` is the language server over all of it.

pub mod autodiff;
pub mod cli;
pub mod data;
pub mod diag;
pub mod distributed;
pub mod dump;
pub mod gradcheck;
pub mod interp;
pub mod ir;
pub mod jit;
pub mod lsp;
pub mod memory;
pub mod model;
pub mod npz;
pub mod onnx;
pub mod opt;
pub mod pc;
pub mod plot;
pub mod predict;
pub mod sema;
pub mod source;
pub mod syntax;
pub mod train;
