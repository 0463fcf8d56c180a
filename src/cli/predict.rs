//! `pcg predict`: a model's predictions on inputs from a file, written to a file.

use super::{compile_to_run, emit, fail, BackendFlags, CmdResult, DtypeFlag};
use crate::ir::LeafKind;
use crate::npz;
use crate::predict::{self, Origins};
use crate::sema::{CompileOptions, Compiled, Dtype};
use crate::train::engine::Element;
use std::path::Path;

/// The files `pcg predict` reads and writes.
pub(super) struct Files<'a> {
    pub params: &'a Path,
    pub inputs: &'a Path,
    pub out: &'a Path,
}

/// `pcg predict M.pcg --params P.npz --inputs X.npz --out Y.npz`: compiles the model at the
/// inputs' batch size and runs its prediction program on `backend`.
pub(super) fn predict(
    file: &Path,
    files: Files,
    backend: &BackendFlags,
    dtype: &DtypeFlag,
    options: &CompileOptions,
) -> CmdResult {
    let compiled = compile_to_run(file, options)?;
    match dtype.resolve(compiled.train.as_ref()) {
        Dtype::F32 => predict_in::<f32>(file, compiled, files, backend, options),
        Dtype::F64 => predict_in::<f64>(file, compiled, files, backend, options),
    }
}

/// `pcg predict` in element type `F`.
fn predict_in<F: Element>(
    file: &Path,
    compiled: Compiled,
    files: Files,
    backend: &BackendFlags,
    options: &CompileOptions,
) -> CmdResult {
    let inputs = npz::read_as::<F>(files.inputs).map_err(fail)?;
    let params = npz::read_as::<F>(files.params).map_err(fail)?;
    let batch = predict::batch_of(&compiled.forward, &inputs, files.inputs).map_err(fail)?;
    let compiled = if declared_batch(&compiled) == Some(batch) {
        compiled
    } else {
        let options = CompileOptions {
            batch: Some(batch),
            ..options.clone()
        };
        compile_to_run(file, &options)?
    };
    let program = predict::prediction_program(&compiled.forward).map_err(fail)?;
    let origins = Origins {
        params: files.params,
        inputs: files.inputs,
    };
    let predictions = predict::run(
        &program,
        (&params, &inputs),
        origins,
        backend.backend.into_backend(),
        &backend.jit_options(),
    )
    .map_err(fail)?;
    npz::write(files.out, &predictions).map_err(fail)?;
    emit(&format!(
        "ok: {} → {} (model {}, batch {batch}: {})\n",
        files.inputs.display(),
        files.out.display(),
        compiled.model_name,
        outputs_text(&program)
    ));
    Ok(())
}

/// A prediction program's outputs as the commands list them: `logits [4, 10], ...`.
pub(super) fn outputs_text(program: &crate::ir::Program) -> String {
    let outputs: Vec<String> = predict::outputs(program)
        .iter()
        .map(|(name, shape)| format!("{name} {}", crate::ir::Shape::new(shape.as_slice())))
        .collect();
    outputs.join(", ")
}

/// The batch size a compiled model's first input declares (axis 0).
fn declared_batch(compiled: &Compiled) -> Option<usize> {
    let forward = &compiled.forward;
    let (id, _) = *forward.leaves(LeafKind::Input).first()?;
    forward.shape(id).dims().first().copied()
}
