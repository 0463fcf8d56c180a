//! `pcg import`: an ONNX model to a `.pcg` model, its parameters and the map of their names.

use super::{emit, fail, CmdResult, LossArg};
use crate::onnx::{self, Options};
use std::collections::BTreeMap;
use std::path::Path;

/// Where `pcg import` writes, besides the model.
pub(super) struct ImportOutputs<'a> {
    pub out: &'a Path,
    pub params: Option<&'a Path>,
    pub names: Option<&'a Path>,
}

/// `pcg import MODEL.onnx --out M.pcg [--params P.npz] [--names N.json]`: translates the
/// whole model first and writes the files only once it has succeeded.
pub(super) fn import(
    model: &Path,
    outputs: ImportOutputs,
    loss: LossArg,
    target: &str,
    batch: Option<usize>,
) -> CmdResult {
    let bytes = std::fs::read(model)
        .map_err(|e| fail(format!("cannot read `{}`: {e}", model.display())))?;
    let stem = outputs
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let options = Options {
        model_name: onnx::model_name(&stem),
        loss: loss.into(),
        target: target.to_string(),
        batch,
        source_name: model
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let imported =
        onnx::import(&bytes, &options).map_err(|e| fail(format!("{}: {e}", model.display())))?;
    // A missing directory is found before any file is written, so that none is.
    for path in [Some(outputs.out), outputs.params, outputs.names]
        .into_iter()
        .flatten()
    {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            return Err(fail(format!(
                "cannot write `{}`: its directory does not exist",
                path.display()
            )));
        }
    }
    if let Some(path) = outputs.params {
        let arrays: crate::npz::Arrays = imported
            .params
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        crate::npz::write(path, &arrays).map_err(fail)?;
    }
    if let Some(path) = outputs.names {
        let names: BTreeMap<&str, &str> = imported
            .params
            .iter()
            .map(|p| (p.onnx_name.as_str(), p.name.as_str()))
            .collect();
        let json = serde_json::to_string_pretty(&names).map_err(fail)?;
        std::fs::write(path, json + "\n")
            .map_err(|e| fail(format!("cannot write `{}`: {e}", path.display())))?;
    }
    std::fs::write(outputs.out, &imported.text)
        .map_err(|e| fail(format!("cannot write `{}`: {e}", outputs.out.display())))?;
    let sizes = |frozen: bool| -> Vec<usize> {
        imported
            .params
            .iter()
            .filter(|p| p.frozen == frozen)
            .map(|p| p.value.len())
            .collect()
    };
    let counts = super::parameter_counts(&sizes(false), &sizes(true));
    emit(&format!(
        "ok: {} → {} (model {}: {counts})\n",
        model.display(),
        outputs.out.display(),
        options.model_name,
    ));
    Ok(())
}
