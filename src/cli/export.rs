//! `pcg export`: a model's forward pass and its parameters as an ONNX file.

use super::{compile_to_run, emit, fail, CmdResult};
use crate::ir::LeafKind;
use crate::npz;
use crate::onnx;
use crate::sema::CompileOptions;
use crate::train::batch;
use std::collections::BTreeMap;
use std::path::Path;

/// The files `pcg export` reads and writes.
pub(super) struct Files<'a> {
    pub params: &'a Path,
    pub out: &'a Path,
    pub names: Option<&'a Path>,
}

/// `pcg export M.pcg --params P.npz --out M.onnx [--names N.json] [--batch N]`: the model's
/// prediction program, compiled at the batch size of `options`, as ONNX.
pub(super) fn export(file: &Path, files: Files, options: &CompileOptions) -> CmdResult {
    let compiled = compile_to_run(file, options)?;
    let program = crate::predict::prediction_program(&compiled.forward).map_err(fail)?;
    let params = npz::read(files.params).map_err(fail)?;
    batch::check_arrays(&program, &[LeafKind::Param], &params, files.params).map_err(fail)?;
    let names = match files.names {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| fail(format!("cannot read `{}`: {e}", path.display())))?;
            onnx::onnx_names(&text).map_err(|e| fail(format!("{}: {e}", path.display())))?
        }
        None => BTreeMap::new(),
    };
    let model = onnx::export(&program, &params, &names)
        .map_err(|e| fail(format!("{}: {e}", file.display())))?;
    std::fs::write(files.out, onnx::encode(&model))
        .map_err(|e| fail(format!("cannot write `{}`: {e}", files.out.display())))?;
    let graph = model.graph.unwrap_or_default();
    emit(&format!(
        "ok: {} → {} (model {}, opset {}: {} nodes, {} initializers; outputs {})\n",
        file.display(),
        files.out.display(),
        compiled.model_name,
        onnx::OPSET,
        graph.node.len(),
        graph.initializer.len(),
        super::predict::outputs_text(&program)
    ));
    Ok(())
}
