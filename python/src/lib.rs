//! `pcg._pcg`: the native part of the `pcg` Python module, a thin layer over
//! [`pcg::model::Model`]. What it owns is the crossing: numpy arrays in (converted to float32,
//! shapes checked by the model with the CLI's messages) and out, keyword arguments parsed with
//! the CLI's spellings, the library's errors turned into Python exceptions, and the
//! interpreter's lock released while the model computes.

use clap::ValueEnum;
use ndarray::ArrayD;
use numpy::{IntoPyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pcg::data::npz::Array as DataArray;
use pcg::dump::{Format, Stage};
use pcg::ir::LeafKind;
use pcg::model::{self, Data, Fit, Model, ModelError, ModelSource, Run};
use pcg::npz::Arrays;
use pcg::sema::{CompileOptions, InferenceOverrides, NodeGranularity, Target};
use pcg::train::engine::{Backend, StepReport, StepResult};
use pcg::train::run::EpochMetrics;
use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyKeyboardInterrupt, PyMemoryError, PyOSError, PyRuntimeError, PyTypeError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

create_exception!(
    _pcg,
    CompileError,
    PyException,
    "A .pcg source that does not compile. `str(e)` is what `pcg check` prints; `e.codes` lists \
     the error codes (`E0101`, ...)."
);
create_exception!(
    _pcg,
    DivergenceError,
    PyRuntimeError,
    "A value that stopped being finite. `e.what` names the PC node, parameter or quantity; \
     `e.relaxation_step`, `e.epoch` and `e.batch` say when (None where they do not apply). The \
     parameters are those before the step that diverged."
);

/// The Python exception for a model's error.
fn py_error(py: Python<'_>, error: ModelError) -> PyErr {
    let with = |err: PyErr, attributes: &[(&str, Py<PyAny>)]| {
        let value = err.value(py);
        for (name, v) in attributes {
            if let Err(e) = value.setattr(*name, v) {
                return e;
            }
        }
        err
    };
    let message = error.to_string();
    match error {
        ModelError::Compile { rendered, codes } => {
            let codes = PyList::new(py, codes).map(|l| l.into_any().unbind());
            match codes {
                Ok(codes) => with(CompileError::new_err(rendered), &[("codes", codes)]),
                Err(e) => e,
            }
        }
        ModelError::Invalid(m) => PyValueError::new_err(m),
        ModelError::TooLarge(m) => PyMemoryError::new_err(m),
        ModelError::Diverged {
            what,
            relaxation_step,
            epoch,
            batch,
            ..
        } => {
            let number = |v: Option<usize>| -> Py<PyAny> {
                match v.map(|n| n.into_pyobject(py)) {
                    Some(Ok(n)) => n.into_any().unbind(),
                    _ => py.None(),
                }
            };
            let what = match what.into_pyobject(py) {
                Ok(w) => w.into_any().unbind(),
                Err(_) => py.None(),
            };
            with(
                DivergenceError::new_err(message),
                &[
                    ("what", what),
                    ("relaxation_step", number(relaxation_step)),
                    ("epoch", number(epoch)),
                    ("batch", number(batch)),
                ],
            )
        }
        ModelError::Interrupted(m) => PyKeyboardInterrupt::new_err(m),
        ModelError::Io(m) => PyOSError::new_err(m),
        ModelError::Failed(m) => PyRuntimeError::new_err(m),
    }
}

/// One of a CLI enum's spellings, or a `ValueError` listing them.
fn choice<T: ValueEnum>(what: &str, text: &str) -> PyResult<T> {
    T::from_str(text, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|v| format!("\"{}\"", v.get_name()))
            .collect();
        PyValueError::new_err(format!(
            "{what} must be one of {} (got \"{text}\")",
            names.join(", ")
        ))
    })
}

/// The keyword arguments every computation takes: how it runs and the relaxation's settings.
#[derive(Default)]
struct RunArgs {
    method: Option<String>,
    backend: Option<String>,
    mode: Option<String>,
    steps: Option<usize>,
    rate: Option<f64>,
    momentum: Option<f64>,
    target: Option<String>,
    schedule: Option<String>,
    tol: Option<f64>,
    precision: Option<BTreeMap<String, f64>>,
    nodes: Option<String>,
    lr: Option<f64>,
    state_optimizer: Option<String>,
    state_clip: Option<f64>,
    energy: Option<String>,
    rates: Option<BTreeMap<String, f64>>,
}

/// The keyword arguments `RunArgs` holds.
const RUN_KEYWORDS: [&str; 16] = [
    "method",
    "backend",
    "mode",
    "steps",
    "rate",
    "momentum",
    "target",
    "schedule",
    "tol",
    "precision",
    "nodes",
    "lr",
    "state_optimizer",
    "state_clip",
    "energy",
    "rates",
];

/// Keyword `key` of `kwargs` as `T` (`None` when absent or None), or a `TypeError` naming it.
fn keyword<'py, T: for<'a> FromPyObject<'a, 'py>>(
    kwargs: &Bound<'py, PyDict>,
    key: &str,
) -> PyResult<Option<T>> {
    match kwargs.get_item(key)? {
        Some(v) if !v.is_none() => v.extract::<T>().map(Some).map_err(|_| {
            let type_name = v
                .get_type()
                .name()
                .map_or("?".to_string(), |n| n.to_string());
            PyTypeError::new_err(format!("`{key}`: unexpected value of type {type_name}"))
        }),
        _ => Ok(None),
    }
}

impl RunArgs {
    fn from_kwargs(k: &Bound<'_, PyDict>) -> PyResult<RunArgs> {
        for key in k.keys() {
            let key: String = key.extract()?;
            if !RUN_KEYWORDS.contains(&key.as_str()) {
                return Err(PyTypeError::new_err(format!(
                    "unexpected keyword argument `{key}` (the settings are: {})",
                    RUN_KEYWORDS.join(", ")
                )));
            }
        }
        Ok(RunArgs {
            method: keyword(k, "method")?,
            backend: keyword(k, "backend")?,
            mode: keyword(k, "mode")?,
            steps: keyword(k, "steps")?,
            rate: keyword(k, "rate")?,
            momentum: keyword(k, "momentum")?,
            target: keyword(k, "target")?,
            schedule: keyword(k, "schedule")?,
            tol: keyword(k, "tol")?,
            precision: keyword(k, "precision")?,
            nodes: keyword(k, "nodes")?,
            lr: keyword(k, "lr")?,
            state_optimizer: keyword(k, "state_optimizer")?,
            state_clip: keyword(k, "state_clip")?,
            energy: keyword(k, "energy")?,
            rates: keyword(k, "rates")?,
        })
    }

    fn run(&self) -> PyResult<Run> {
        use pcg::cli::{BackendArg, EnergyArg, MethodArg, ModeArg, ScheduleArg};
        let method = match &self.method {
            Some(m) => Some(choice::<MethodArg>("method", m)?.into()),
            None => None,
        };
        let backend = match &self.backend {
            Some(b) => choice::<BackendArg>("backend", b)?.into_backend(),
            None => Backend::Jit,
        };
        let mode = match &self.mode {
            Some(m) => Some(choice::<ModeArg>("mode", m)?.into()),
            None => None,
        };
        let schedule = match &self.schedule {
            Some(s) => Some(choice::<ScheduleArg>("schedule", s)?.into()),
            None => None,
        };
        let energy = match &self.energy {
            Some(e) => Some(choice::<EnergyArg>("energy", e)?.into()),
            None => None,
        };
        let state_optimizer = match &self.state_optimizer {
            Some(o) => Some(o.parse().map_err(PyValueError::new_err)?),
            None => None,
        };
        let target = match &self.target {
            Some(t) => Some(t.parse::<Target>().map_err(PyValueError::new_err)?),
            None => None,
        };
        let nodes = match self.nodes.as_deref() {
            Some("named") => Some(NodeGranularity::Named),
            Some("all") => Some(NodeGranularity::All),
            Some(other) => {
                return Err(PyValueError::new_err(format!(
                    "nodes must be one of \"named\", \"all\" (got \"{other}\")"
                )))
            }
            None => None,
        };
        Ok(Run {
            method,
            backend,
            relax: InferenceOverrides {
                mode,
                steps: self.steps,
                rate: self.rate,
                momentum: self.momentum,
                target,
                schedule,
                tol: self.tol,
                precision: self.precision.clone().unwrap_or_default(),
                nodes,
                optimizer: state_optimizer,
                clip: self.state_clip,
                energy,
                rates: self.rates.clone().unwrap_or_default(),
            },
            lr: self.lr,
        })
    }
}

/// `np.asarray(value)`, refused unless it holds numbers (booleans, integers or floats).
fn numeric_array<'py>(
    py: Python<'py>,
    name: &str,
    value: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, u8)> {
    let np = py.import("numpy")?;
    let array = np
        .call_method1("asarray", (value,))
        .map_err(|e| PyTypeError::new_err(format!("`{name}`: not an array ({e})")))?;
    let kind = array
        .cast::<numpy::PyUntypedArray>()
        .map_err(|_| PyTypeError::new_err(format!("`{name}`: not an array")))?
        .dtype()
        .kind();
    if !matches!(kind, b'b' | b'i' | b'u' | b'f') {
        let dtype = array.getattr("dtype")?.str()?.to_string();
        return Err(PyTypeError::new_err(format!(
            "`{name}` has dtype {dtype}: pcg takes arrays of numbers (float32; other numeric \
             types are converted)"
        )));
    }
    Ok((array, kind))
}

/// `value` as float32 (any numeric array is converted).
fn float_array(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<ArrayD<f32>> {
    let (array, _) = numeric_array(py, name, value)?;
    let array = array.call_method1("astype", ("float32",))?;
    let array = array
        .cast::<PyArrayDyn<f32>>()
        .map_err(|_| PyTypeError::new_err(format!("`{name}`: not a float32 array")))?;
    Ok(array.readonly().as_array().to_owned())
}

/// A data set's array: bytes stay bytes, integers become int64 (class labels when
/// one-dimensional), everything else float32 — as an `.npz` data set's arrays are read.
fn data_array(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<DataArray> {
    let (array, kind) = numeric_array(py, name, value)?;
    let itemsize = array
        .cast::<numpy::PyUntypedArray>()
        .map_or(0, |a| a.dtype().itemsize());
    let convert = |dtype: &str| array.call_method1("astype", (dtype,));
    Ok(match kind {
        b'u' if itemsize == 1 => {
            let a = convert("uint8")?;
            let a = a.cast::<PyArrayDyn<u8>>().map_err(PyErr::from)?;
            DataArray::Bytes(a.readonly().as_array().to_owned())
        }
        b'i' | b'u' => {
            let a = convert("int64")?;
            let a = a.cast::<PyArrayDyn<i64>>().map_err(PyErr::from)?;
            DataArray::Integers(a.readonly().as_array().to_owned())
        }
        _ => DataArray::Floats(float_array(py, name, value)?),
    })
}

/// A dict of arrays by name, as float32.
fn arrays_of(py: Python<'_>, dict: &Bound<'_, PyDict>) -> PyResult<Arrays> {
    let mut arrays = Arrays::new();
    for (key, value) in dict.iter() {
        let name: String = key
            .extract()
            .map_err(|_| PyTypeError::new_err("array names must be strings"))?;
        let array = float_array(py, &name, &value)?;
        arrays.insert(name, array);
    }
    Ok(arrays)
}

/// Arrays by name as a dict of numpy arrays.
fn dict_of<'py>(py: Python<'py>, arrays: &Arrays) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, array) in arrays {
        dict.set_item(name, array.clone().into_pyarray(py))?;
    }
    Ok(dict)
}

fn shapes<'py>(py: Python<'py>, leaves: &[(String, Vec<usize>)]) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, shape) in leaves {
        dict.set_item(name, PyTuple::new(py, shape)?)?;
    }
    Ok(dict)
}

fn report_dict<'py>(py: Python<'py>, report: &StepReport) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("loss", report.loss)?;
    dict.set_item("energy", report.energy)?;
    dict.set_item("relaxation_steps", report.relaxation_steps)?;
    Ok(dict)
}

fn metrics_dict<'py>(py: Python<'py>, m: &EpochMetrics) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("epoch", m.epoch)?;
    dict.set_item("train_loss", m.train_loss)?;
    dict.set_item("test_loss", m.test_loss)?;
    dict.set_item("test_acc", m.test_acc)?;
    dict.set_item("energy", m.energy)?;
    dict.set_item("relaxation_steps", m.relaxation_steps)?;
    dict.set_item("seconds", m.seconds)?;
    dict.set_item("examples_per_second", m.examples_per_second)?;
    Ok(dict)
}

/// Warns (Python's `UserWarning`) with `message`, if any.
fn warn(py: Python<'_>, message: Option<String>) -> PyResult<()> {
    let Some(message) = message else {
        return Ok(());
    };
    let warnings = py.import("warnings")?;
    warnings.call_method1("warn", (message,))?;
    Ok(())
}

/// A compiled `.pcg` model with its parameters and training state.
///
/// Made by `pcg.compile(path)` or `pcg.compile_source(text)`. Arrays go in as numpy arrays
/// (float32; other numeric types are converted) and come out as float32 copies.
#[pyclass(module = "pcg._pcg", name = "Model")]
struct PyModel {
    inner: Mutex<Model>,
}

/// A model's state borrowed for one call, with the interpreter's lock released while it
/// computes.
struct Busy<'a>(std::sync::MutexGuard<'a, Model>);

impl PyModel {
    /// Runs `f` on the model with one batch (`None`: the default batch) and the keyword
    /// settings, warning when it says why the default batch is random data.
    fn on_batch<R: Send>(
        &self,
        py: Python<'_>,
        batch: Option<&Bound<'_, PyDict>>,
        kwargs: Option<&Bound<'_, PyDict>>,
        f: impl FnOnce(&mut Model, Option<Arrays>, &Run) -> Result<(R, Option<String>), ModelError>
            + Send,
    ) -> PyResult<R> {
        let run = kwargs_run(kwargs)?;
        let targets = self.busy()?.0.leaves(LeafKind::Target);
        let batch = batch_of(py, batch, &targets)?;
        let mut busy = self.busy()?;
        let (result, warning) = busy.compute(py, move |m| f(m, batch, &run))?;
        warn(py, warning)?;
        Ok(result)
    }

    fn busy(&self) -> PyResult<Busy<'_>> {
        match self.inner.try_lock() {
            Ok(guard) => Ok(Busy(guard)),
            Err(std::sync::TryLockError::WouldBlock) => Err(PyRuntimeError::new_err(
                "the model is busy with a call from another thread",
            )),
            // A panic in an earlier call is reported as an exception there; the state it left
            // is still a model (every update is checked before it is kept).
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(Busy(p.into_inner())),
        }
    }
}

impl Busy<'_> {
    /// Runs `f` on the model without the interpreter's lock.
    fn compute<R: Send>(
        &mut self,
        py: Python<'_>,
        f: impl FnOnce(&mut Model) -> Result<R, ModelError> + Send,
    ) -> PyResult<R> {
        let model: &mut Model = &mut self.0;
        py.detach(|| f(model)).map_err(|e| py_error(py, e))
    }
}

fn kwargs_run(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Run> {
    match kwargs {
        Some(k) => RunArgs::from_kwargs(k)?.run(),
        None => RunArgs::default().run(),
    }
}

/// A batch's arrays as float32, where integer class labels given for a target declared
/// one-hot (`y` of shape `[B]` for a target `[B, C]`) become its one-hot rows, as `fit`
/// takes them.
fn batch_of(
    py: Python<'_>,
    batch: Option<&Bound<'_, PyDict>>,
    targets: &[(String, Vec<usize>)],
) -> PyResult<Option<Arrays>> {
    let Some(batch) = batch else {
        return Ok(None);
    };
    let mut arrays = Arrays::new();
    for (key, value) in batch.iter() {
        let name: String = key
            .extract()
            .map_err(|_| PyTypeError::new_err("array names must be strings"))?;
        let array = match targets.iter().find(|(n, _)| *n == name) {
            Some((_, shape)) => target_array(py, &name, &value, shape)?,
            None => float_array(py, &name, &value)?,
        };
        arrays.insert(name, array);
    }
    Ok(Some(arrays))
}

/// A target's array: integer labels of the target's shape without its last axis are one-hot
/// over that axis (labels outside it are a `ValueError`); anything else as float32.
fn target_array(
    py: Python<'_>,
    name: &str,
    value: &Bound<'_, PyAny>,
    shape: &[usize],
) -> PyResult<ArrayD<f32>> {
    let (array, kind) = numeric_array(py, name, value)?;
    let given: Vec<usize> = array.getattr("shape")?.extract()?;
    let Some((&classes, labels_shape)) = shape.split_last() else {
        return float_array(py, name, value);
    };
    if !matches!(kind, b'i' | b'u') || given != labels_shape || labels_shape.is_empty() {
        return float_array(py, name, value);
    }
    let labels = array.call_method1("astype", ("int64",))?;
    let labels = labels.cast::<PyArrayDyn<i64>>().map_err(PyErr::from)?;
    let labels = labels.readonly();
    let mut one_hot = vec![0.0f32; labels.as_array().len() * classes];
    for (row, &label) in labels.as_array().iter().enumerate() {
        match usize::try_from(label) {
            Ok(class) if class < classes => one_hot[row * classes + class] = 1.0,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "`{name}`: class label {label} is outside 0..{classes} (the target is declared {shape:?})"
                )))
            }
        }
    }
    ArrayD::from_shape_vec(ndarray::IxDyn(shape), one_hot)
        .map_err(|e| PyValueError::new_err(format!("`{name}`: {e}")))
}

#[pymethods]
impl PyModel {
    /// The model's name.
    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.busy()?.0.compiled().model_name.clone())
    }

    /// The parameters: a dict of float32 copies. Assigning a dict (`m.params = {...}`)
    /// replaces the parameters it names.
    #[getter]
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut busy = self.busy()?;
        let params = busy.0.params().clone();
        dict_of(py, &params)
    }

    #[setter]
    fn set_params(&self, py: Python<'_>, params: &Bound<'_, PyDict>) -> PyResult<()> {
        let arrays = arrays_of(py, params)?;
        let mut busy = self.busy()?;
        busy.compute(py, move |m| m.set_params(arrays))
    }

    /// The inputs: name -> shape.
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        shapes(py, &self.busy()?.0.leaves(LeafKind::Input))
    }

    /// The targets: name -> shape.
    #[getter]
    fn targets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        shapes(py, &self.busy()?.0.leaves(LeafKind::Target))
    }

    /// Epochs trained so far (`fit` goes on from there; `save` records it).
    #[getter]
    fn epochs_done(&self) -> PyResult<usize> {
        Ok(self.busy()?.0.epochs_done())
    }

    /// The batch a call uses when given none: the first batch of the train block's data (or
    /// seeded random data of the model's shapes), as a dict of arrays.
    fn default_batch<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let busy = self.busy()?;
        let m = &busy.0;
        let seed = m.train().map_or(0, |t| t.seed);
        let (batch, warning) = model::default_batch(m.source().path(), m.compiled(), seed, false);
        warn(py, warning)?;
        dict_of(py, &batch)
    }

    /// Loss and gradients on one batch: `(loss, {param: gradient})`.
    ///
    /// `batch` maps the model's inputs and targets to arrays (default: the first batch of the
    /// train block's data). Backprop gives dL/dθ; predictive coding −Δθ, its update negated
    /// (what `pcg grad` writes). Keywords: method ("bp" | "pc"), backend ("jit" | "interp"),
    /// and the relaxation's mode, steps, rate, momentum, target, schedule and tol.
    #[pyo3(signature = (batch=None, **kwargs))]
    fn grad<'py>(
        &self,
        py: Python<'py>,
        batch: Option<&Bound<'py, PyDict>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<(f64, Bound<'py, PyDict>)> {
        let result: StepResult = self.on_batch(py, batch, kwargs, |m, b, run| m.grad(b, run))?;
        Ok((result.loss, dict_of(py, &result.grads)?))
    }

    /// One training step on a batch with the file's optimiser (at `lr` when given): updates
    /// the parameters and returns `{"loss", "energy", "relaxation_steps"}`. A step that
    /// diverges raises `DivergenceError` and leaves the parameters as they were.
    #[pyo3(signature = (batch=None, **kwargs))]
    fn step<'py>(
        &self,
        py: Python<'py>,
        batch: Option<&Bound<'py, PyDict>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let report = self.on_batch(py, batch, kwargs, |m, b, run| m.step(b, run))?;
        report_dict(py, &report)
    }

    /// Trains for `epochs` more epochs (default: the train block's), as `pcg run` does, and
    /// returns each epoch's metrics as a list of dicts.
    ///
    /// The data: `data` as `--data` takes it ("digits", "npz(\"mine.npz\")", ...; default:
    /// the train block's), or arrays `x`, `y` (and `x_test`, `y_test`; without them the test
    /// metrics are on `x`, `y`); `x` alone for a model without a target (an autoencoder).
    /// Integer `y` of one dimension are class labels. Keywords also:
    /// seed, max_batches, save (a checkpoint path written every epoch), verbose (print each
    /// epoch's line), data_dir, and those of `grad`, plus lr. Ctrl-C stops after the step
    /// under way, keeping what was learnt (then `KeyboardInterrupt`).
    #[pyo3(signature = (data=None, *, x=None, y=None, x_test=None, y_test=None, epochs=None, seed=None, max_batches=None, save=None, verbose=false, data_dir=None, **kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn fit<'py>(
        &self,
        py: Python<'py>,
        data: Option<String>,
        x: Option<&Bound<'py, PyAny>>,
        y: Option<&Bound<'py, PyAny>>,
        x_test: Option<&Bound<'py, PyAny>>,
        y_test: Option<&Bound<'py, PyAny>>,
        epochs: Option<usize>,
        seed: Option<u64>,
        max_batches: Option<usize>,
        save: Option<PathBuf>,
        verbose: bool,
        data_dir: Option<PathBuf>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let run = kwargs_run(kwargs)?;
        let loaded = arrays_dataset(py, "fit(x, y)", data.as_deref(), [x, y, x_test, y_test])?;
        let mut busy = self.busy()?;
        let epochs = epochs.unwrap_or_else(|| busy.0.train().map_or(1, |t| t.epochs));
        let total = busy.0.epochs_done() + epochs;
        let stop = AtomicBool::new(false);
        let interrupt: Mutex<Option<PyErr>> = Mutex::new(None);
        let printed: Mutex<Option<PyErr>> = Mutex::new(None);
        let history = {
            let (stop, interrupt, printed) = (&stop, &interrupt, &printed);
            busy.compute(py, move |m| {
                let data = data_choice(loaded, data.as_deref(), data_dir.as_deref());
                let fit = Fit {
                    epochs,
                    seed,
                    max_batches,
                    save,
                    stop: Some(stop),
                };
                let mut on_batch = || {
                    // Ctrl-C raises Python's flag; training stops after this step.
                    Python::attach(|py| {
                        if let Err(e) = py.check_signals() {
                            if let Ok(mut slot) = interrupt.lock() {
                                *slot = Some(e);
                            }
                            stop.store(true, Ordering::SeqCst);
                        }
                    })
                };
                let mut on_epoch = |metrics: &EpochMetrics| {
                    if verbose {
                        let line = metrics.line(total);
                        Python::attach(|py| {
                            let printed_line = py
                                .import("builtins")
                                .and_then(|b| b.call_method1("print", (line,)));
                            if let Err(e) = printed_line {
                                if let Ok(mut slot) = printed.lock() {
                                    *slot = Some(e);
                                }
                            }
                        });
                    }
                };
                m.fit(data, &run, &fit, &mut on_batch, &mut on_epoch)
            })
        };
        if let Some(e) = interrupt.into_inner().ok().flatten() {
            return Err(e);
        }
        let history = history?;
        if let Some(e) = printed.into_inner().ok().flatten() {
            return Err(e);
        }
        let list = PyList::empty(py);
        for m in &history {
            list.append(metrics_dict(py, m)?)?;
        }
        Ok(list)
    }

    /// Test loss and accuracy over a data set's test split, as `pcg eval` prints them:
    /// `{"test_loss", "test_acc", "examples"}` (`test_acc` None where the model has no
    /// prediction shaped like its target). The data as for `fit`.
    #[pyo3(signature = (data=None, *, x_test=None, y_test=None, backend=None, data_dir=None))]
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        data: Option<String>,
        x_test: Option<&Bound<'py, PyAny>>,
        y_test: Option<&Bound<'py, PyAny>>,
        backend: Option<String>,
        data_dir: Option<PathBuf>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let backend = backend_of(backend)?;
        let arrays = [x_test, y_test, x_test, y_test];
        let loaded = arrays_dataset(py, "evaluate(x_test, y_test)", data.as_deref(), arrays)?;
        let mut busy = self.busy()?;
        let (loss, acc, examples) = busy.compute(py, move |m| {
            let data = data_choice(loaded, data.as_deref(), data_dir.as_deref());
            m.evaluate(data, backend)
        })?;
        let dict = PyDict::new(py);
        dict.set_item("test_loss", loss)?;
        dict.set_item("test_acc", acc)?;
        dict.set_item("examples", examples)?;
        Ok(dict)
    }

    /// Predictive coding's updates against backprop's gradients on one batch, step by step, as
    /// `pcg gradcheck` reports them: a dict with the settings, `loss`, `max_rel_err`,
    /// `energy` (per step), `stopped_at`, and for each parameter (`params`) and input
    /// (`inputs`, the messages to it) arrays `step`, `rel_err` and `cosine`.
    #[pyo3(signature = (batch=None, **kwargs))]
    fn gradcheck<'py>(
        &self,
        py: Python<'py>,
        batch: Option<&Bound<'py, PyDict>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let name = self.busy()?.0.compiled().model_name.clone();
        let report = self.on_batch(py, batch, kwargs, |m, b, run| m.gradcheck(b, run))?;
        let traces = |traces: &[pcg::gradcheck::ParamTrace]| -> PyResult<Bound<'py, PyDict>> {
            let dict = PyDict::new(py);
            for t in traces {
                let entry = PyDict::new(py);
                let steps: Vec<i64> = t.trace.iter().map(|p| p.step as i64).collect();
                let rel: Vec<f64> = t.trace.iter().map(|p| p.rel_err).collect();
                let cos: Vec<f64> = t.trace.iter().map(|p| p.cosine).collect();
                entry.set_item("step", ndarray::Array1::from(steps).into_pyarray(py))?;
                entry.set_item("rel_err", ndarray::Array1::from(rel).into_pyarray(py))?;
                entry.set_item("cosine", ndarray::Array1::from(cos).into_pyarray(py))?;
                dict.set_item(&t.name, entry)?;
            }
            Ok(dict)
        };
        let dict = PyDict::new(py);
        dict.set_item("model", name)?;
        dict.set_item("mode", report.programs.mode.name())?;
        dict.set_item("steps", report.steps)?;
        dict.set_item("rate", report.programs.rate)?;
        dict.set_item("depth", report.programs.graph.depth)?;
        dict.set_item("loss", report.loss)?;
        dict.set_item("max_rel_err", report.max_rel_err())?;
        dict.set_item("stopped_at", report.stopped_at)?;
        let energy = ndarray::Array1::from(report.energy.clone());
        dict.set_item("energy", energy.into_pyarray(py))?;
        dict.set_item("params", traces(&report.params)?)?;
        dict.set_item("inputs", traces(&report.inputs)?)?;
        Ok(dict)
    }

    /// The model at a stage of the compiler, as `pcg ir --stage STAGE --format FORMAT`
    /// prints it: stage "ast" | "ir" | "grad" | "pc" | "plan" | "clif", format "text" |
    /// "dot". The relaxation's keywords (mode, steps, ...) change the PC and JIT stages.
    #[pyo3(signature = (stage="ir", format="text", **kwargs))]
    fn ir(
        &self,
        py: Python<'_>,
        stage: &str,
        format: &str,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let stage: Stage = choice("stage", stage)?;
        let format: Format = choice("format", format)?;
        let run = kwargs_run(kwargs)?;
        let mut busy = self.busy()?;
        busy.compute(py, move |m| m.ir(stage, format, &run))
    }

    /// The model's predictions on inputs alone, as `pcg predict` writes them: a dict from
    /// each value the loss reads (a classifier's logits, ...) by its name to a float32 array.
    /// `inputs` maps the model's inputs to arrays whose axis 0 is the batch, of any size
    /// (entries that name no input, such as targets, are ignored). Dropout is off.
    #[pyo3(signature = (inputs, *, backend=None))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyDict>,
        backend: Option<String>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let backend = backend_of(backend)?;
        let inputs = arrays_of(py, inputs)?;
        let mut busy = self.busy()?;
        let predictions = busy.compute(py, move |m| m.predict(&inputs, backend))?;
        dict_of(py, &predictions)
    }

    /// Writes the model's forward pass with its current parameters as an ONNX file (opset 17),
    /// as `pcg export` does, for a fixed batch of `batch` examples. A model made by
    /// `from_onnx` names its initializers as the original file did.
    #[pyo3(signature = (path, *, batch=1))]
    fn export(&self, py: Python<'_>, path: PathBuf, batch: usize) -> PyResult<()> {
        if batch == 0 {
            return Err(PyValueError::new_err("batch must be at least 1"));
        }
        let mut busy = self.busy()?;
        let bytes = busy.compute(py, move |m| m.export_onnx(batch))?;
        std::fs::write(&path, bytes)
            .map_err(|e| PyOSError::new_err(format!("cannot write `{}`: {e}", path.display())))
    }

    /// Writes a checkpoint in the CLI's format (`pcg run --save`): parameters, optimiser
    /// state and epochs done, replacing `path` atomically.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let mut busy = self.busy()?;
        busy.compute(py, move |m| m.save(&path))
    }

    /// Reads a checkpoint (`save`, `pcg run --save`), or any `.npz` of the model's
    /// parameters by name (as `--params` takes).
    fn load(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let mut busy = self.busy()?;
        busy.compute(py, move |m| m.load(&path))
    }

    fn __repr__(&self) -> PyResult<String> {
        let busy = self.busy()?;
        let m = &busy.0;
        let leaves = |kind| {
            m.leaves(kind)
                .iter()
                .map(|(n, s)| format!("{n}: {s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Ok(format!(
            "<pcg.Model {} inputs=({}) targets=({}) params={}>",
            m.compiled().model_name,
            leaves(LeafKind::Input),
            leaves(LeafKind::Target),
            m.leaves(LeafKind::Param).len()
        ))
    }
}

/// The backend a `backend` keyword names (default: the JIT).
fn backend_of(backend: Option<String>) -> PyResult<Backend> {
    Ok(match backend {
        Some(b) => choice::<pcg::cli::BackendArg>("backend", &b)?.into_backend(),
        None => Backend::Jit,
    })
}

/// A data set of the caller's arrays (`[x, y, x_test, y_test]`, the test pair defaulting to
/// the training pair), or `None` when none is given; `origin` names them in messages. Arrays
/// and a `data` spec together are refused.
fn arrays_dataset(
    py: Python<'_>,
    origin: &str,
    spec: Option<&str>,
    [x, y, x_test, y_test]: [Option<&Bound<'_, PyAny>>; 4],
) -> PyResult<Option<pcg::data::Dataset>> {
    if x.is_none() && y.is_none() && x_test.is_none() && y_test.is_none() {
        return Ok(None);
    }
    if spec.is_some() {
        return Err(PyValueError::new_err(
            "give either `data` or arrays (`x`, `y`), not both",
        ));
    }
    let origin = std::path::Path::new(origin);
    let invalid = |e: pcg::data::DataError| PyValueError::new_err(e.to_string());
    let (Some(x), Some(y)) = (x, y) else {
        // Inputs alone feed a model without a target (an autoencoder's).
        if let (Some(x), None, None) = (x, y, y_test) {
            let x_test = x_test.unwrap_or(x);
            let arrays = vec![(
                "x".to_string(),
                data_array(py, "x", x)?,
                data_array(py, "x_test", x_test)?,
            )];
            return pcg::data::npz::from_named_arrays(origin, arrays, false)
                .map(Some)
                .map_err(invalid);
        }
        return Err(PyValueError::new_err(
            "arrays of examples need inputs (`x`), and targets (`y`) unless the model has none",
        ));
    };
    let (x_test, y_test) = match (x_test, y_test) {
        (Some(a), Some(b)) => (a, b),
        (None, None) => (x, y),
        _ => {
            return Err(PyValueError::new_err(
                "give both `x_test` and `y_test`, or neither",
            ))
        }
    };
    let names = ["x", "y", "x_test", "y_test"];
    let arrays = [
        data_array(py, "x", x)?,
        data_array(py, "y", y)?,
        data_array(py, "x_test", x_test)?,
        data_array(py, "y_test", y_test)?,
    ];
    pcg::data::npz::from_arrays(origin, names, arrays, false)
        .map(Some)
        .map_err(invalid)
}

/// The data a call uses: the caller's arrays, a `--data` spec, or the train block's.
fn data_choice<'a>(
    loaded: Option<pcg::data::Dataset>,
    spec: Option<&'a str>,
    dir: Option<&'a std::path::Path>,
) -> Data<'a> {
    match (loaded, spec) {
        (Some(d), _) => Data::Loaded(Box::new(d)),
        (None, Some(spec)) => Data::Spec { spec, dir },
        (None, None) => Data::File,
    }
}

fn options(
    batch: Option<usize>,
    dims: Option<BTreeMap<String, usize>>,
    model: Option<String>,
    loops: &str,
) -> PyResult<CompileOptions> {
    if batch == Some(0) {
        return Err(PyValueError::new_err("batch must be at least 1"));
    }
    let dims = dims.unwrap_or_default();
    if let Some((name, _)) = dims.iter().find(|(_, &v)| v == 0) {
        return Err(PyValueError::new_err(format!(
            "dimension `{name}` must be at least 1"
        )));
    }
    let loops = match loops {
        "auto" => pcg::sema::LoopPolicy::Auto,
        "scan" => pcg::sema::LoopPolicy::Scan,
        "unroll" => pcg::sema::LoopPolicy::Unroll,
        other => {
            return Err(PyValueError::new_err(format!(
                "loops must be \"auto\", \"scan\" or \"unroll\", not {other:?}"
            )))
        }
    };
    Ok(CompileOptions {
        model,
        batch,
        dims,
        loops,
    })
}

fn compiled(
    py: Python<'_>,
    source: ModelSource,
    options: CompileOptions,
    seed: Option<u64>,
) -> PyResult<PyModel> {
    let model = py
        .detach(move || Model::compile(source, options, seed))
        .map_err(|e| py_error(py, e))?;
    Ok(PyModel {
        inner: Mutex::new(model),
    })
}

/// Compiles the model of a `.pcg` file.
///
/// `batch` binds `B` (default: the train block's), `dims` other dimensions or consts
/// (`{"H": 64}`), `model` picks one of several models, `seed` seeds the parameters'
/// initialisation (default: the train block's), `loops` how `for` loops compile (`"auto"`,
/// `"scan"` or `"unroll"`, as `--loops`). Raises `CompileError` with the diagnostics.
#[pyfunction]
#[pyo3(signature = (path, *, batch=None, dims=None, model=None, seed=None, loops="auto"))]
fn compile(
    py: Python<'_>,
    path: PathBuf,
    batch: Option<usize>,
    dims: Option<BTreeMap<String, usize>>,
    model: Option<String>,
    seed: Option<u64>,
    loops: &str,
) -> PyResult<PyModel> {
    let options = options(batch, dims, model, loops)?;
    compiled(py, ModelSource::File(path), options, seed)
}

/// Compiles the model of `.pcg` source text, named `name` in diagnostics (imports and data
/// paths resolve relative to its directory). Keywords as for `compile`.
#[pyfunction]
#[pyo3(
    signature = (text, *, name="<source>".to_string(), batch=None, dims=None, model=None, seed=None, loops="auto"),
    text_signature = "(text, *, name='<source>', batch=None, dims=None, model=None, seed=None, loops='auto')"
)]
// One argument per keyword of the Python signature.
#[allow(clippy::too_many_arguments)]
fn compile_source(
    py: Python<'_>,
    text: String,
    name: String,
    batch: Option<usize>,
    dims: Option<BTreeMap<String, usize>>,
    model: Option<String>,
    seed: Option<u64>,
    loops: &str,
) -> PyResult<PyModel> {
    let options = options(batch, dims, model, loops)?;
    compiled(py, ModelSource::Text { name, text }, options, seed)
}

/// Imports an ONNX model (as `pcg import` does) and compiles it, its initializers' values as
/// the parameters.
///
/// `loss` is how the output is compared with the target (`"mse"` or `"cross_entropy"`),
/// `target` the target's name; the model takes its name from the file's. Raises `ValueError`
/// naming the node and what is missing when the language cannot express the model.
#[pyfunction]
#[pyo3(signature = (path, *, loss="mse", target="y"))]
fn from_onnx(py: Python<'_>, path: PathBuf, loss: &str, target: &str) -> PyResult<PyModel> {
    let loss: pcg::cli::LossArg = choice("loss", loss)?;
    let bytes = std::fs::read(&path)
        .map_err(|e| PyOSError::new_err(format!("cannot read `{}`: {e}", path.display())))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let options = pcg::onnx::Options {
        model_name: pcg::onnx::model_name(&stem),
        loss: loss.into(),
        target: target.to_string(),
        batch: None,
        source_name: path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let model = py
        .detach(move || Model::import_onnx(&bytes, &options))
        .map_err(|e| match e {
            ModelError::Invalid(m) => PyValueError::new_err(format!("{}: {m}", path.display())),
            other => py_error(py, other),
        })?;
    Ok(PyModel {
        inner: Mutex::new(model),
    })
}

#[pymodule]
fn _pcg(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_function(wrap_pyfunction!(compile_source, m)?)?;
    m.add_function(wrap_pyfunction!(from_onnx, m)?)?;
    m.add_class::<PyModel>()?;
    m.add("CompileError", py.get_type::<CompileError>())?;
    m.add("DivergenceError", py.get_type::<DivergenceError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
