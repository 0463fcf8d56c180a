//! `Model`: a compiled model with its parameters and its training state, for programs that
//! embed pcg (the Python module). It runs the same stages as the CLI's commands — `grad`,
//! a training step, `run`'s epochs, `eval`, `gradcheck`, `ir`, checkpoints — but keeps the
//! parameters, the optimiser's moments and the compiled engines between calls, so that a
//! caller taking one step at a time pays for compilation once.
//!
//! The helpers that decide where a command's data and batch come from (`dataset`,
//! `default_batch`, `test_remainder`) live here too; the CLI uses them.

use crate::data::{self, DataSpec, Dataset};
use crate::diag::{self, Diagnostic};
use crate::gradcheck::{self, Report};
use crate::interp::Bindings;
use crate::ir::{LeafKind, Program};
use crate::jit::JitOptions;
use crate::npz::{self, Arrays};
use crate::sema::{
    self, CompileOptions, Compiled, InferenceConfig, InferenceOverrides, Method, TrainConfig,
};
use crate::source::Sources;
use crate::train::engine::{eval_program, Backend, Engine, EngineError, Programs, StepResult};
use crate::train::optim::{learning_rate, Optimizer};
use crate::train::run::{self, EpochMetrics, Event, Position, Remainder, Settings, TrainError};
use crate::train::{batch, init};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// Where a model's text comes from.
#[derive(Clone, Debug)]
pub enum ModelSource {
    /// A `.pcg` file (imports and the train block's data paths resolve next to it).
    File(PathBuf),
    /// Source text, named `name` (imports and data paths resolve relative to `name`'s
    /// directory).
    Text { name: String, text: String },
}

impl ModelSource {
    /// Compiles the source's model with `options`.
    pub fn compile(
        &self,
        options: &CompileOptions,
    ) -> (Sources, Result<Compiled, Vec<Diagnostic>>) {
        match self {
            ModelSource::File(path) => sema::compile_file(path, options),
            ModelSource::Text { name, text } => sema::compile_source(name, text, options),
        }
    }

    /// The path the model is known by: the file, or the text's name.
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::File(path) => path,
            ModelSource::Text { name, .. } => Path::new(name),
        }
    }

    /// The root source text.
    pub fn text(&self) -> Result<String, String> {
        match self {
            ModelSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display())),
            ModelSource::Text { text, .. } => Ok(text.clone()),
        }
    }
}

/// Why a call on a model failed.
#[derive(Debug)]
pub enum ModelError {
    /// The source does not compile: the rendered diagnostics (what `pcg check` prints) and
    /// their error codes.
    Compile {
        rendered: String,
        codes: Vec<String>,
    },
    /// An argument, an array or a data set that does not fit the model.
    Invalid(String),
    /// The model needs more memory than there is.
    TooLarge(String),
    /// A value stopped being finite: `what` (a PC node, a parameter, the loss) at
    /// `relaxation_step`, in `epoch` and `batch` when training.
    Diverged {
        message: String,
        what: String,
        relaxation_step: Option<usize>,
        epoch: Option<usize>,
        batch: Option<usize>,
    },
    /// Training stopped at the caller's request (the parameters keep what it had learnt).
    Interrupted(String),
    /// A file could not be read or written.
    Io(String),
    /// Anything else the backends report.
    Failed(String),
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelError::Compile { rendered, .. } => f.write_str(rendered.trim_end()),
            ModelError::Invalid(m)
            | ModelError::TooLarge(m)
            | ModelError::Interrupted(m)
            | ModelError::Io(m)
            | ModelError::Failed(m) => f.write_str(m),
            ModelError::Diverged { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for ModelError {}

/// What a divergence names, as `DivergenceError.what` gives it: the node or parameter to
/// blame ("the value of node `h`", "the energy (node `h` has grown ...)" → "h", "parameter `w`
/// after the update" → "w"), the quantity ("the loss" → "loss"), or else the engine's words.
fn subject(what: &str) -> String {
    for marker in ["node `", "parameter `"] {
        if let Some((_, rest)) = what.split_once(marker) {
            if let Some((name, _)) = rest.split_once('`') {
                return name.to_string();
            }
        }
    }
    what.strip_prefix("the ").unwrap_or(what).to_string()
}

impl From<EngineError> for ModelError {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::Diverged {
                what,
                relaxation_step,
            } => ModelError::Diverged {
                message: e.to_string(),
                what: subject(what),
                relaxation_step: *relaxation_step,
                epoch: None,
                batch: None,
            },
            EngineError::Eval(m) => ModelError::Failed(m.clone()),
            EngineError::Interrupted => ModelError::Interrupted(e.to_string()),
        }
    }
}

impl From<TrainError> for ModelError {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Data(m) => ModelError::Invalid(m),
            TrainError::Checkpoint(m) => ModelError::Io(m),
            TrainError::Step {
                epoch,
                batch,
                error:
                    ref error @ EngineError::Diverged {
                        ref what,
                        relaxation_step,
                    },
                ..
            } => ModelError::Diverged {
                message: if epoch == 0 {
                    format!("evaluation batch {}: {error}", batch + 1)
                } else {
                    e.to_string()
                },
                what: subject(what),
                relaxation_step,
                epoch: (epoch > 0).then_some(epoch),
                batch: Some(batch),
            },
            other @ TrainError::Step { .. } => ModelError::Failed(other.to_string()),
            other @ TrainError::Interrupted { .. } => ModelError::Interrupted(other.to_string()),
        }
    }
}

/// How a computation runs: the method (the train block's when `None`), the backend, the
/// relaxation's settings changed from the train block's, and the learning rate (the
/// optimiser's when `None`).
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub method: Option<Method>,
    pub backend: Backend,
    pub relax: InferenceOverrides,
    pub lr: Option<f64>,
}

/// Which data set a call uses.
pub enum Data<'a> {
    /// The train block's.
    File,
    /// A data-set spec as `--data` takes it (`digits`, `npz("mine.npz")`), paths relative to
    /// the working directory; `dir` is where the Fashion-MNIST files are.
    Spec {
        spec: &'a str,
        dir: Option<&'a Path>,
    },
    /// The caller's arrays.
    Loaded(Box<Dataset>),
}

/// What `fit` does besides training.
pub struct Fit<'a> {
    /// Epochs to train, on from where training stands.
    pub epochs: usize,
    /// Seed of the shuffling (the train block's when `None`).
    pub seed: Option<u64>,
    /// Train on at most this many batches per epoch.
    pub max_batches: Option<usize>,
    /// Write a checkpoint here at the end of every epoch.
    pub save: Option<PathBuf>,
    /// Raised from outside to stop after the step under way.
    pub stop: Option<&'a AtomicBool>,
}

/// The settings an engine was built for.
#[derive(Clone, Debug, PartialEq)]
struct EngineKey {
    method: Method,
    backend: Backend,
    inference: InferenceConfig,
    /// Relaxation steps given by the caller (in exact mode they replace the graph's depth).
    steps: Option<usize>,
}

/// The engine that takes training steps, with the parameters and the optimiser resident.
struct Trainer {
    key: EngineKey,
    optimizer: crate::sema::OptimizerConfig,
    engine: Box<dyn Engine + Send>,
}

/// A compiled model, its parameters and its training state.
pub struct Model {
    source: ModelSource,
    options: CompileOptions,
    compiled: Compiled,
    seed: u64,
    params: Arrays,
    optimizer: Optimizer,
    position: Position,
    /// The batch used when a call gives none (made at the first such call).
    default_batch: Option<Arrays>,
    /// The engine of the last training steps, holding the current parameters while it lives.
    trainer: Option<Trainer>,
    /// Engines for gradients and evaluation, by their settings.
    engines: Vec<(EngineKey, Box<dyn Engine + Send>)>,
    /// For a model imported from ONNX: each parameter's initializer name, by its `.pcg` name
    /// (what `export_onnx` names the initializers).
    onnx_names: BTreeMap<String, String>,
}

/// Engines kept for gradients and evaluation; the oldest is dropped beyond this.
const CACHED_ENGINES: usize = 8;

impl Model {
    /// Compiles `source` (with `options`) and initialises its parameters from `seed` (the
    /// train block's when `None`). A model that cannot fit in memory is refused.
    pub fn compile(
        source: ModelSource,
        options: CompileOptions,
        seed: Option<u64>,
    ) -> Result<Model, ModelError> {
        let (sources, result) = source.compile(&options);
        let compiled = result.map_err(|diagnostics| compile_error(&sources, &diagnostics))?;
        crate::memory::ensure_fits(&compiled.forward, None, None).map_err(ModelError::TooLarge)?;
        let seed = seed
            .or(compiled.train.as_ref().map(|t| t.seed))
            .unwrap_or(0);
        let params = init::init_params(&compiled.forward, seed);
        let optimizer = Optimizer::for_model(&compiled, None);
        Ok(Model {
            source,
            options,
            compiled,
            seed,
            params,
            optimizer,
            position: Position::default(),
            default_batch: None,
            trainer: None,
            engines: Vec::new(),
            onnx_names: BTreeMap::new(),
        })
    }

    /// Imports the ONNX model in `bytes` (see [`crate::onnx::import`]) and compiles it with
    /// its initializers' values as the parameters; `export_onnx` gives the initializers their
    /// ONNX names back. The model's source is the imported text, named `<model>.pcg`.
    pub fn import_onnx(bytes: &[u8], options: &crate::onnx::Options) -> Result<Model, ModelError> {
        let imported =
            crate::onnx::import(bytes, options).map_err(|e| ModelError::Invalid(e.to_string()))?;
        let source = ModelSource::Text {
            name: format!("{}.pcg", options.model_name),
            text: imported.text,
        };
        let mut model = Model::compile(source, CompileOptions::default(), None)?;
        let params = imported
            .params
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        model.set_params(params)?;
        model.onnx_names = imported
            .params
            .into_iter()
            .map(|p| (p.name, p.onnx_name))
            .collect();
        Ok(model)
    }

    /// The compiled model.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// Where the model came from.
    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// The train block's settings, if the file has one.
    pub fn train(&self) -> Option<&TrainConfig> {
        self.compiled.train.as_ref()
    }

    /// The leaves of one kind, with their shapes, in declaration order.
    pub fn leaves(&self, kind: LeafKind) -> Vec<(String, Vec<usize>)> {
        let forward = &self.compiled.forward;
        forward
            .leaves(kind)
            .into_iter()
            .map(|(id, name)| (name.to_string(), forward.shape(id).dims().to_vec()))
            .collect()
    }

    /// Epochs of training done (`fit` goes on from here).
    pub fn epochs_done(&self) -> usize {
        self.position.epochs
    }

    /// The optimiser's steps so far.
    pub fn optimizer_steps(&mut self) -> u64 {
        self.sync_mut();
        self.optimizer.steps()
    }

    /// The current parameters.
    pub fn params(&mut self) -> &Arrays {
        self.sync_mut();
        &self.params
    }

    /// Replaces the parameters named in `arrays` (each must be a parameter of the model, with
    /// its declared shape); the others keep their values, the optimiser its state.
    pub fn set_params(&mut self, arrays: Arrays) -> Result<(), ModelError> {
        let known = self.leaves(LeafKind::Param);
        for (name, array) in &arrays {
            match known.iter().find(|(n, _)| n == name) {
                None => {
                    let names: Vec<&str> = known.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(ModelError::Invalid(format!(
                        "the model has no parameter `{name}` (its parameters: {})",
                        names.join(", ")
                    )));
                }
                Some((_, shape)) if array.shape() != shape.as_slice() => {
                    return Err(ModelError::Invalid(format!(
                        "parameter `{name}`: the array has shape {:?}, but the model declares {:?}",
                        array.shape(),
                        shape
                    )));
                }
                Some(_) => {}
            }
        }
        self.end_training();
        self.params.extend(arrays);
        Ok(())
    }

    /// Takes the parameters and the optimiser back from the training engine, if one holds
    /// them (it stays usable).
    fn sync_mut(&mut self) {
        if let Some(trainer) = &mut self.trainer {
            let (params, optimizer) = trainer.engine.trained();
            self.params = params;
            self.optimizer = optimizer;
        }
    }

    /// Ends the training engine's hold on the parameters: they and the optimiser's state come
    /// home, and the next step starts a new engine from them.
    fn end_training(&mut self) {
        self.sync_mut();
        self.trainer = None;
    }

    /// The inference settings of `run`. A precision must name a named value of the model.
    fn inference(&self, run: &Run) -> Result<InferenceConfig, ModelError> {
        let forward = &self.compiled.forward;
        let names: Vec<&str> = forward
            .nodes
            .iter()
            .filter_map(|n| n.name.as_deref())
            .collect();
        for node in run.relax.precision.keys() {
            if !names.contains(&node.as_str()) {
                let hint = diag::closest(node, names.iter().copied())
                    .map_or(String::new(), |s| format!(" (did you mean `{s}`?)"));
                return Err(ModelError::Invalid(format!(
                    "precision for `{node}`, which is not a named value of the model{hint}"
                )));
            }
        }
        run.relax
            .apply(self.train().map(|t| &t.inference))
            .map_err(ModelError::Invalid)
    }

    fn method(&self, run: &Run) -> Method {
        run.method
            .unwrap_or_else(|| self.train().map_or(Method::Pc, |t| t.method))
    }

    /// The programs of `key`.
    fn programs(&self, key: &EngineKey) -> Result<Programs, ModelError> {
        Programs::build(
            &self.compiled.forward,
            key.method,
            &key.inference,
            key.steps,
        )
        .map_err(ModelError::Invalid)
    }

    fn key(&self, run: &Run) -> Result<EngineKey, ModelError> {
        Ok(EngineKey {
            method: self.method(run),
            backend: run.backend,
            inference: self.inference(run)?,
            steps: run.relax.steps,
        })
    }

    /// A new engine running the programs of `key`.
    fn new_engine(&self, key: &EngineKey) -> Result<Box<dyn Engine + Send>, ModelError> {
        key.backend
            .engine(self.programs(key)?, &JitOptions::default())
            .map_err(ModelError::Failed)
    }

    /// The cached engine for `key`, built at its first use.
    fn engine(&mut self, key: EngineKey) -> Result<&mut (dyn Engine + Send), ModelError> {
        let at = match self.engines.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                let engine = self.new_engine(&key)?;
                if self.engines.len() >= CACHED_ENGINES {
                    self.engines.remove(0);
                }
                self.engines.push((key, engine));
                self.engines.len() - 1
            }
        };
        Ok(self.engines[at].1.as_mut())
    }

    /// `batch` checked against the model's inputs and targets, or the default batch: the
    /// first batch of the train block's data (seeded random data when it has none or it
    /// cannot be loaded; then `warning` says why).
    fn batch(&mut self, given: Option<Arrays>) -> Result<(Arrays, Option<String>), ModelError> {
        if let Some(arrays) = given {
            check_batch(&self.compiled.forward, &arrays)?;
            return Ok((arrays, None));
        }
        if let Some(b) = &self.default_batch {
            return Ok((b.clone(), None));
        }
        let (b, warning) = default_batch(self.source.path(), &self.compiled, self.seed, false);
        self.default_batch = Some(b.clone());
        Ok((b, warning))
    }

    /// The loss and every parameter's gradient on one batch (the default batch when `None`):
    /// ∂L/∂θ by backprop, −Δθ by predictive coding — what `pcg grad` writes. Also says why the
    /// default batch is random data, when it is.
    pub fn grad(
        &mut self,
        given: Option<Arrays>,
        run: &Run,
    ) -> Result<(StepResult, Option<String>), ModelError> {
        let (batch, warning) = self.batch(given)?;
        let key = self.key(run)?;
        self.sync_mut();
        let params = self.params.clone();
        let engine = self.engine(key)?;
        let result = engine.gradients(&params, &batch)?;
        Ok((result, warning))
    }

    /// One training step on a batch with the train block's optimiser (at `run.lr` when
    /// given): the gradient and the update. A step that diverges leaves the parameters as
    /// they were.
    pub fn step(
        &mut self,
        given: Option<Arrays>,
        run: &Run,
    ) -> Result<(crate::train::engine::StepReport, Option<String>), ModelError> {
        let (batch, warning) = self.batch(given)?;
        let key = self.key(run)?;
        let optimizer = crate::train::optim::with_lr(self.optimizer.config().clone(), run.lr);
        let current = self
            .trainer
            .as_ref()
            .is_some_and(|t| t.key == key && t.optimizer == optimizer);
        if !current {
            self.end_training();
            let mut engine = self.new_engine(&key)?;
            let state = self.optimizer.clone().with_config(optimizer.clone());
            engine.start(self.params.clone(), state)?;
            self.trainer = Some(Trainer {
                key,
                optimizer,
                engine,
            });
        }
        let Some(trainer) = &mut self.trainer else {
            return Err(ModelError::Failed("no training engine".to_string()));
        };
        let report = trainer.engine.train_step(&batch)?;
        Ok((report, warning))
    }

    /// Trains for `fit.epochs` more epochs on a data set, as `pcg run` does (the same
    /// shuffling, metrics and checks); `on_batch` is called after every step (it may raise
    /// `fit.stop`), `on_epoch` with each epoch's metrics as it ends. The parameters and the
    /// optimiser keep what training learnt, also when it stops early.
    pub fn fit(
        &mut self,
        data: Data,
        run: &Run,
        fit: &Fit,
        on_batch: &mut dyn FnMut(),
        on_epoch: &mut dyn FnMut(&EpochMetrics),
    ) -> Result<Vec<EpochMetrics>, ModelError> {
        let dataset = self.dataset(data, false)?;
        let key = self.key(run)?;
        self.end_training();
        let mut engine = self.new_engine(&key)?;
        let optimizer = self.optimizer.clone();
        let config = crate::train::optim::with_lr(optimizer.config().clone(), run.lr);
        let optimizer = optimizer.with_config(config.clone());
        let hint = match key.method {
            Method::Pc => format!(
                "inference rate {} now, learning rate {} now",
                key.inference.rate,
                learning_rate(&config)
            ),
            Method::Bp => format!("learning rate {} now", learning_rate(&config)),
        };
        let test_remainder = test_remainder(
            &self.source,
            &self.options,
            &self.compiled.forward,
            &key.inference,
            dataset.test.len(),
        );
        let settings = Settings {
            epochs: self.position.epochs + fit.epochs,
            seed: fit.seed.unwrap_or(self.seed),
            optimizer: config,
            clip: optimizer.clip(),
            save: fit.save.clone(),
            hint,
            max_batches: fit.max_batches,
            test_remainder,
            stop: fit.stop,
        };
        let mut on = |event: Event| match event {
            Event::Batch { .. } => on_batch(),
            Event::Epoch(m) => on_epoch(m),
        };
        let outcome = run::train(
            engine.as_mut(),
            &self.compiled.forward,
            &dataset,
            &settings,
            self.params.clone(),
            optimizer,
            self.position,
            &mut on,
        );
        match outcome {
            Ok(outcome) => {
                let (params, optimizer) = engine.trained();
                self.params = params;
                self.optimizer = optimizer;
                self.position = Position {
                    epochs: settings.epochs,
                    ..Position::default()
                };
                Ok(outcome.history)
            }
            Err(e @ TrainError::Interrupted { position, .. }) => {
                let (params, optimizer) = engine.trained();
                self.params = params;
                self.optimizer = optimizer;
                self.position = position;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Mean test loss per example, accuracy (where the model has a prediction) and the
    /// number of examples, over a data set's test split — what `pcg eval` prints.
    pub fn evaluate(
        &mut self,
        data: Data,
        backend: Backend,
    ) -> Result<(f64, Option<f64>, usize), ModelError> {
        let dataset = self.dataset(data, false)?;
        let inference = self.inference(&Run::default())?;
        let remainder = test_remainder(
            &self.source,
            &self.options,
            &self.compiled.forward,
            &inference,
            dataset.test.len(),
        );
        self.sync_mut();
        let params = self.params.clone();
        let forward = self.compiled.forward.clone();
        let key = EngineKey {
            method: Method::Bp,
            backend,
            inference,
            steps: None,
        };
        let engine = self.engine(key)?;
        let (loss, acc) =
            run::evaluate(engine, &forward, &dataset.test, &params, remainder.as_ref())?;
        Ok((loss, acc, dataset.test.len()))
    }

    /// Predictive coding's updates against backprop's gradients on one batch, step by step
    /// (what `pcg gradcheck` prints).
    pub fn gradcheck(
        &mut self,
        given: Option<Arrays>,
        run: &Run,
    ) -> Result<(Report, Option<String>), ModelError> {
        let (batch, warning) = self.batch(given)?;
        let inference = self.inference(run)?;
        self.sync_mut();
        let leaves: Bindings<f64> = self
            .params
            .iter()
            .chain(batch.iter())
            .map(|(k, v)| (k.clone(), v.mapv(f64::from)))
            .collect();
        let report = gradcheck::run(&self.compiled.forward, &inference, run.relax.steps, &leaves)
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        Ok((report, warning))
    }

    /// The model at a stage of the compiler, as `pcg ir --stage` prints it.
    pub fn ir(
        &self,
        stage: crate::dump::Stage,
        format: crate::dump::Format,
        run: &Run,
    ) -> Result<String, ModelError> {
        use crate::dump::{Format, Stage};
        if stage == Stage::Ast {
            if format == Format::Dot {
                return Err(ModelError::Invalid(
                    "the AST has no DOT form; use format=\"text\"".to_string(),
                ));
            }
            let text = self.source.text().map_err(ModelError::Io)?;
            let mut sources = Sources::new();
            let id = sources.add(self.source.path().display().to_string(), text.clone());
            let (module, diagnostics) = crate::syntax::parse(id, &text);
            if !diagnostics.is_empty() {
                return Err(compile_error(&sources, &diagnostics));
            }
            return Ok(crate::dump::ast_text(&module));
        }
        let inference = self.inference(run)?;
        crate::dump::stage_text(&self.compiled, stage, format, &inference)
            .map_err(ModelError::Invalid)
    }

    /// The forward program compiled for a batch of `batch` examples: the model's own when its
    /// inputs have that batch size, else compiled again with `B` bound to it.
    fn forward_at(&self, batch: usize) -> Result<Program, ModelError> {
        let forward = &self.compiled.forward;
        let declared = forward
            .leaves(LeafKind::Input)
            .first()
            .and_then(|&(id, _)| forward.shape(id).dims().first().copied());
        if declared == Some(batch) {
            return Ok(forward.clone());
        }
        let options = CompileOptions {
            batch: Some(batch),
            ..self.options.clone()
        };
        let (sources, result) = self.source.compile(&options);
        let compiled = result.map_err(|diagnostics| compile_error(&sources, &diagnostics))?;
        Ok(compiled.forward)
    }

    /// The model's predictions on `inputs` (arrays named like its inputs, any batch size; others
    /// are ignored), on `backend`: the values its loss reads, by name, as `pcg predict`
    /// writes them (see [`crate::predict`]).
    pub fn predict(&mut self, inputs: &Arrays, backend: Backend) -> Result<Arrays, ModelError> {
        let origin = Path::new("the inputs");
        let batch = crate::predict::batch_of(&self.compiled.forward, inputs, origin)
            .map_err(ModelError::Invalid)?;
        let program = crate::predict::prediction_program(&self.forward_at(batch)?)
            .map_err(ModelError::Invalid)?;
        self.sync_mut();
        let origins = crate::predict::Origins {
            params: Path::new("the parameters"),
            inputs: origin,
        };
        crate::predict::run(
            &program,
            (&self.params, inputs),
            origins,
            backend,
            &JitOptions::default(),
        )
        .map_err(ModelError::Invalid)
    }

    /// The model's forward pass with its current parameters as the bytes of an ONNX file
    /// (see [`crate::onnx::export`]), compiled for a batch of `batch` examples; a model
    /// imported from ONNX names its initializers as the original did.
    pub fn export_onnx(&mut self, batch: usize) -> Result<Vec<u8>, ModelError> {
        let program = crate::predict::prediction_program(&self.forward_at(batch)?)
            .map_err(ModelError::Invalid)?;
        self.sync_mut();
        let model = crate::onnx::export(&program, &self.params, &self.onnx_names)
            .map_err(ModelError::Invalid)?;
        Ok(crate::onnx::encode(&model))
    }

    /// Writes a checkpoint as `pcg run --save` does: the parameters, the optimiser's state and
    /// the epochs done.
    pub fn save(&mut self, path: &Path) -> Result<(), ModelError> {
        self.sync_mut();
        run::save_checkpoint(path, &self.params, &self.optimizer, self.position)?;
        Ok(())
    }

    /// Reads a checkpoint written by `save` or `pcg run --save` (parameters, optimiser state,
    /// position), or any `.npz` holding the model's parameters by name, as `--params` takes.
    pub fn load(&mut self, path: &Path) -> Result<(), ModelError> {
        let arrays = npz::read(path).map_err(|e| ModelError::Io(e.to_string()))?;
        let forward = &self.compiled.forward;
        if arrays.contains_key(run::EPOCHS_DONE) {
            let mut optimizer = Optimizer::for_model(&self.compiled, None);
            let (params, position) = run::load_checkpoint(path, forward, &mut optimizer)?;
            self.trainer = None;
            self.params = params;
            self.optimizer = optimizer;
            self.position = position;
            return Ok(());
        }
        let names: Vec<&str> = forward
            .leaves(LeafKind::Param)
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        let params: Arrays = arrays
            .into_iter()
            .filter(|(k, _)| names.contains(&k.as_str()))
            .collect();
        batch::check_arrays(forward, &[LeafKind::Param], &params, path)
            .map_err(ModelError::Invalid)?;
        self.trainer = None;
        self.params = params;
        Ok(())
    }

    /// The data set to train or evaluate on; refused, as a model too large is, when the model
    /// and the data set together cannot fit in memory.
    fn dataset(&self, data: Data, allow_nonfinite: bool) -> Result<Dataset, ModelError> {
        let dataset = match data {
            Data::Loaded(d) => Ok(*d),
            Data::File => dataset(
                self.source.path(),
                None,
                None,
                self.train(),
                allow_nonfinite,
            ),
            Data::Spec { spec, dir } => dataset(
                self.source.path(),
                Some(spec),
                dir,
                self.train(),
                allow_nonfinite,
            ),
        }
        .map_err(ModelError::Invalid)?;
        let bytes = crate::memory::DataBytes::from(&dataset);
        crate::memory::ensure_fits(&self.compiled.forward, Some(&bytes), None)
            .map_err(ModelError::TooLarge)?;
        Ok(dataset)
    }
}

/// The diagnostics of a failed compilation, rendered as `pcg check` prints them.
fn compile_error(sources: &Sources, diagnostics: &[Diagnostic]) -> ModelError {
    ModelError::Compile {
        rendered: diag::render(sources, diagnostics),
        codes: diagnostics
            .iter()
            .map(|d| d.kind.code().to_string())
            .collect(),
    }
}

/// Checks that a batch holds every input and target of the model with its declared shape,
/// nothing else, and only finite numbers.
fn check_batch(forward: &Program, arrays: &Arrays) -> Result<(), ModelError> {
    let origin = Path::new("the batch");
    let leaves: Vec<&str> = [LeafKind::Input, LeafKind::Target]
        .iter()
        .flat_map(|&k| forward.leaves(k))
        .map(|(_, name)| name)
        .collect();
    if let Some(extra) = arrays.keys().find(|k| !leaves.contains(&k.as_str())) {
        return Err(ModelError::Invalid(format!(
            "the batch has an array `{extra}`, which is not an input or a target of the model (those are: {})",
            leaves.join(", ")
        )));
    }
    batch::check_arrays(
        forward,
        &[LeafKind::Input, LeafKind::Target],
        arrays,
        origin,
    )
    .map_err(ModelError::Invalid)?;
    batch::check_finite(arrays, origin).map_err(ModelError::Invalid)
}

/// The data set named by `flag` (relative to the working directory) or by the train block of
/// the model at `file` (relative to the model's directory); `dir` is where the Fashion-MNIST
/// IDX files are when the spec does not say.
pub fn dataset(
    file: &Path,
    flag: Option<&str>,
    dir: Option<&Path>,
    train: Option<&TrainConfig>,
    allow_nonfinite: bool,
) -> Result<Dataset, String> {
    let mut spec = match flag {
        Some(text) => text.parse::<DataSpec>().map_err(|e| e.to_string())?,
        None => train
            .and_then(|t| t.data.clone())
            .ok_or("the model has no data: add `data = digits` (or another data set) to its train block, or pass --data")?
            .relative_to(file.parent().unwrap_or(Path::new("."))),
    };
    if let (DataSpec::Fmnist { dir: None }, Some(d)) = (&spec, dir) {
        spec = DataSpec::Fmnist {
            dir: Some(d.to_path_buf()),
        };
    }
    let mut dataset = data::load(&spec, allow_nonfinite).map_err(|e| e.to_string())?;
    if let Some((low, high)) = train.and_then(|t| t.input_range) {
        dataset
            .rescale_inputs(low as f32, high as f32)
            .map_err(|e| e.to_string())?;
    }
    Ok(dataset)
}

/// The batch a one-batch computation uses when it is given none: the first batch of the train
/// block's data, or seeded random data of the model's shapes when there is none or it cannot
/// be loaded (then with the reason, to warn of).
pub fn default_batch(
    file: &Path,
    compiled: &Compiled,
    seed: u64,
    allow_nonfinite: bool,
) -> (Arrays, Option<String>) {
    let forward = &compiled.forward;
    let train = compiled.train.as_ref();
    match train.and_then(|t| t.data.as_ref()) {
        Some(_) => {
            let first = dataset(file, None, None, train, allow_nonfinite)
                .and_then(|set| batch::first_batch(forward, &set));
            match first {
                Ok(b) => (b, None),
                Err(e) => (
                    batch::random_batch(forward, seed),
                    Some(format!("using seeded random data: {e}")),
                ),
            }
        }
        None => (batch::random_batch(forward, seed), None),
    }
}

/// The model compiled for the test examples that do not fill a batch, so that evaluation
/// covers the whole split: `None` when the batches divide it, or (with a note on stderr) when
/// the model does not compile at that batch size.
pub fn test_remainder(
    source: &ModelSource,
    options: &CompileOptions,
    forward: &Program,
    inference: &InferenceConfig,
    examples: usize,
) -> Option<Remainder> {
    let b = batch::batch_size(&batch::data_leaves(forward).ok()?);
    let rest = examples % b;
    if rest == 0 {
        return None;
    }
    let options = CompileOptions {
        batch: Some(rest),
        ..options.clone()
    };
    match source.compile(&options).1 {
        Ok(compiled) => Some(Remainder {
            eval: eval_program(&compiled.forward, inference),
        }),
        Err(_) => {
            eprintln!(
                "note: the last {rest} test examples are not evaluated: the model does not compile for a batch of {rest}"
            );
            None
        }
    }
}
