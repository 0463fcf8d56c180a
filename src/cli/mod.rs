//! The command-line interface: `pcg check | ir | ...`. Each subcommand is a thin driver over
//! the library's stages; what it prints is part of the public interface.

mod commands;
mod export;
mod import;
mod job;
mod predict;
mod reference;
mod tools;
mod training;

pub use reference::reference_markdown;

use crate::diag;
use crate::dump;
pub use crate::dump::{Format, Stage};

use crate::jit::JitOptions;

use crate::sema::{self, CompileOptions, Compiled, Dtype, InferenceConfig, Method, Mode};
use crate::source::Sources;
use crate::train::engine::{Backend, Element, Engine, Programs};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser, Debug)]
#[command(
    name = "pcg",
    version,
    about = "Compile differentiable programs to predictive-coding networks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// The most memory a command that runs a model may count on, e.g. `8G`, `512M` or a
    /// number of bytes (default: what the system has available); a model that needs more is
    /// refused before anything is allocated.
    #[arg(long, global = true, value_parser = parse_bytes)]
    pub memory_limit: Option<u64>,
}

/// `--memory-limit` as given (set once, before the command runs).
static MEMORY_LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

/// A byte count with an optional binary suffix: `8G`, `512M`, `64K`, `1T`, or plain bytes.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, scale) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("`{text}`: the suffix must be K, M, G or T")),
            };
            (&t[..i], 1u64 << shift)
        }
        _ => (t, 1),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size: write e.g. `8G`, `512M` or `1000000`"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("`{text}`: the limit must be positive"));
    }
    Ok((value * scale as f64) as u64)
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check files for errors; exit 0 when clean, 1 with diagnostics on stderr.
    Check {
        /// The `.pcg` files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also print what training each model holds in memory (parameters, their updates,
        /// the optimiser's state, the compiled training step's arena) against what is
        /// available.
        #[arg(long)]
        report: bool,
        #[command(flatten)]
        compile: CompileFlags,
    },
    /// Print a stage of the compiler's representation of a model.
    Ir {
        /// The `.pcg` file of the model.
        file: PathBuf,
        /// Which representation to print.
        #[arg(long, value_enum, default_value_t = Stage::Ir)]
        stage: Stage,
        /// Text or Graphviz DOT.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// The relaxation whose programs `--stage pc|plan|clif` print (default: the file's).
        #[command(flatten)]
        relax: RelaxFlags,
        /// The training step `--stage plan|clif` prints: backprop's or predictive coding's
        /// (default: the train block's).
        #[arg(long, value_enum)]
        method: Option<MethodArg>,
        #[command(flatten)]
        compile: CompileFlags,
    },
    /// Compute every parameter's gradient on one batch, by backprop or predictive coding.
    Grad {
        /// The `.pcg` file of the model.
        file: PathBuf,
        /// How to compute the gradient.
        #[arg(long, value_enum, default_value_t = MethodArg::Bp)]
        method: MethodArg,
        #[command(flatten)]
        backend: BackendFlags,
        #[command(flatten)]
        dtype: DtypeFlag,
        /// Where to write the gradients (`.npz`, one array per parameter); without it, a
        /// summary of each is printed.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        problem: ProblemFlags,
        #[command(flatten)]
        relax: RelaxFlags,
        #[command(flatten)]
        compile: CompileFlags,
    },
    /// Train a model on its data, by predictive coding or backprop.
    Run {
        /// The `.pcg` file of the model.
        file: PathBuf,
        #[command(flatten)]
        run: RunFlags,
        #[command(flatten)]
        relax: RelaxFlags,
        #[command(flatten)]
        compile: CompileFlags,
    },
    /// Evaluate parameters (a checkpoint) on the test split of the model's data.
    Eval {
        /// The `.pcg` file of the model.
        file: PathBuf,
        /// Parameters or a checkpoint (`.npz`).
        #[arg(long)]
        params: PathBuf,
        /// The data set, overriding the train block's.
        #[arg(long)]
        data: Option<String>,
        /// Where the Fashion-MNIST IDX files are.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        dtype: DtypeFlag,
        #[command(flatten)]
        compile: CompileFlags,
    },
    /// Time full training steps on seeded random data of the model's shapes.
    Bench {
        /// The `.pcg` file of the model.
        file: PathBuf,
        /// Learning method (default: the train block's).
        #[arg(long, value_enum)]
        method: Option<MethodArg>,
        #[command(flatten)]
        backend: BackendFlags,
        #[command(flatten)]
        dtype: DtypeFlag,
        /// Relaxation steps T (default: the inference block's).
        #[arg(long)]
        inference_steps: Option<usize>,
        /// Timed training steps (after warm-up).
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// JIT: after the timed steps, run as many again timing every kernel, and list those
        /// that take the most time.
        #[arg(long)]
        profile: bool,
        /// The optimiser the timed steps take: plain SGD at the file's learning rate (the
        /// update the peer benchmarks make), or the file's own (`file`: its momentum, Adam,
        /// clipping, schedule and per-parameter rates).
        #[arg(long, value_enum, default_value_t = BenchOptimizer::Sgd)]
        optimizer: BenchOptimizer,
        #[command(flatten)]
        relax: RelaxFlags,
        #[command(flatten)]
        compile: CompileFlags,
    },
    /// Draw learning curves from `--metrics` files of several runs into one SVG.
    Plot {
        /// `LABEL=FILE.jsonl` pairs, e.g. `pc=runs/pc.jsonl bp=runs/bp.jsonl`.
        #[arg(required = true)]
        runs: Vec<String>,
        /// The figure's title.
        #[arg(long, default_value = "training")]
        title: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Format `.pcg` files in the one canonical layout, in place.
    Fmt {
        /// Files to format; a directory stands for every `.pcg` file under it, `-` for
        /// standard input (written to standard output).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Change nothing: fail, naming each file and its first line that would change, if a
        /// file is not formatted.
        #[arg(long)]
        check: bool,
    },
    /// Translate an ONNX model into a readable `.pcg` model, with its initializers as
    /// parameters; nothing is written unless the whole model translates.
    Import {
        /// The `.onnx` file.
        model: PathBuf,
        /// Where to write the `.pcg` model (its stem names the model).
        #[arg(long)]
        out: PathBuf,
        /// Where to write the initializers' values, as `.npz` arrays named like the model's
        /// parameters (for `--params` of `grad`, `eval`, ...).
        #[arg(long)]
        params: Option<PathBuf>,
        /// Where to write a JSON map from each initializer's ONNX name to its parameter's name.
        #[arg(long)]
        names: Option<PathBuf>,
        /// The loss of the model's output against the target.
        #[arg(long, value_enum, default_value_t = LossArg::Mse)]
        loss: LossArg,
        /// The name of the target the loss compares the output with.
        #[arg(long, default_value = "y")]
        target: String,
        /// The batch size of the written train block (default: the one the ONNX inputs fix,
        /// else 32).
        #[arg(long, value_parser = at_least_one)]
        batch: Option<usize>,
    },
    /// Run a model's forward pass on inputs and write its predictions — the values its loss
    /// reads, each under its name — without a loss or a target.
    Predict {
        /// The `.pcg` file of the model.
        file: PathBuf,
        /// Parameters or a checkpoint (`.npz`), named like the model's params.
        #[arg(long)]
        params: PathBuf,
        /// The inputs, as `.npz` arrays named like the model's inputs; axis 0 of each is the
        /// batch, of any size (arrays that name no input are ignored).
        #[arg(long)]
        inputs: PathBuf,
        /// Where to write the predictions (`.npz`, one array per output of the model).
        #[arg(long)]
        out: PathBuf,
        /// The model to use when the file defines several.
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        backend: BackendFlags,
        #[command(flatten)]
        dtype: DtypeFlag,
        #[command(flatten)]
        shape: ShapeFlags,
    },
    /// Write a model's forward pass (inputs to predictions, no loss, no target) as an ONNX
    /// file (opset 17) with its parameters as initializers.
    Export {
        /// The `.pcg` file of the model.
        file: PathBuf,
        /// Parameters or a checkpoint (`.npz`), named like the model's params.
        #[arg(long)]
        params: PathBuf,
        /// Where to write the `.onnx` file.
        #[arg(long)]
        out: PathBuf,
        /// A JSON map from ONNX names to parameter names, as `pcg import --names` writes: the
        /// initializers take their ONNX names back.
        #[arg(long)]
        names: Option<PathBuf>,
        /// The batch size written into the graph's input and output shapes.
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        batch: usize,
        /// The model to use when the file defines several.
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        shape: ShapeFlags,
    },
    /// Run the language server (the Language Server Protocol on stdin and stdout), for
    /// editors: diagnostics, hover, go to definition, completion, outline, formatting.
    Lsp,
    /// Compare predictive coding's weight updates with backprop's gradients on one batch.
    Gradcheck {
        /// The `.pcg` file of the model.
        file: PathBuf,
        /// Fail (exit 1) when the worst relative error exceeds this (fixed and exact modes).
        #[arg(long, default_value_t = 1e-3)]
        tol: f64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Write an SVG plot of relative error and energy against steps.
        #[arg(long)]
        plot: Option<PathBuf>,
        #[command(flatten)]
        problem: ProblemFlags,
        #[command(flatten)]
        relax: RelaxFlags,
        #[command(flatten)]
        compile: CompileFlags,
    },
}

/// Flags of `pcg run`.
#[derive(Args, Debug, Clone, Default)]
pub struct RunFlags {
    /// Learning method (default: the train block's).
    #[arg(long, value_enum)]
    pub method: Option<MethodArg>,
    /// Epochs to train, counted from the start of training (default: the train block's).
    #[arg(long, value_parser = at_least_one)]
    pub epochs: Option<usize>,
    /// Seed for initialisation and shuffling (default: the train block's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Learning rate, overriding the optimiser's.
    #[arg(long, value_parser = positive_number, allow_hyphen_values = true)]
    pub lr: Option<f64>,
    #[command(flatten)]
    pub backend: BackendFlags,
    #[command(flatten)]
    pub dtype: DtypeFlag,
    /// The data set, overriding the train block's (e.g. `digits`, `fmnist(dir = "d")`).
    #[arg(long)]
    pub data: Option<String>,
    /// Where the Fashion-MNIST IDX files are (instead of the Debian package's directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Train on data holding NaNs or infinities instead of rejecting it.
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Append one JSON line of metrics per epoch to this file.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Write a checkpoint (parameters and optimiser state) at the end of every epoch.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Continue from a checkpoint written by `--save`.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start from these parameters (`.npz` arrays named like the model's params, as `pcg
    /// import --params` writes them) instead of the initialisers; the optimiser starts fresh.
    #[arg(long, conflicts_with = "resume")]
    pub params: Option<PathBuf>,
    /// Draw the run's loss and accuracy curves to an SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Train on at most this many batches per epoch (a quick run on a large data set).
    #[arg(long, value_parser = at_least_one)]
    pub max_batches: Option<usize>,
    /// Print only the final line.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendArg {
    /// Native code compiled with Cranelift.
    #[default]
    Jit,
    /// The reference interpreter.
    Interp,
}

impl BackendArg {
    pub fn name(self) -> &'static str {
        self.into_backend().name()
    }

    /// The backend the flag names.
    pub fn into_backend(self) -> Backend {
        match self {
            BackendArg::Jit => Backend::Jit,
            BackendArg::Interp => Backend::Interp,
        }
    }
}

/// Which backend runs the programs, and how the JIT compiles them.
#[derive(Args, Debug, Clone, Default)]
pub struct BackendFlags {
    /// Which backend runs the programs.
    #[arg(long, value_enum, default_value_t = BackendArg::Jit)]
    pub backend: BackendArg,
    /// JIT: threads that large matrix products and convolutions are shared between
    /// (default: one per core; per process under `mpirun`, the machine's cores shared
    /// between its processes).
    #[arg(long)]
    pub threads: Option<std::num::NonZeroUsize>,
    /// JIT: check every memory access of the compiled code against its buffer and stop with a
    /// diagnostic at the first one outside (a debugging aid; slower).
    #[arg(long)]
    pub bounds_checks: bool,
}

impl BackendFlags {
    pub fn name(&self) -> &'static str {
        self.backend.name()
    }

    /// The JIT's options.
    pub fn jit_options(&self) -> JitOptions {
        self.jit_options_profiled(false)
    }

    /// The JIT's options, timing every kernel when `profile` is set.
    pub fn jit_options_profiled(&self, profile: bool) -> JitOptions {
        let default = JitOptions::default();
        // The processes of a job on one machine share its cores.
        let cores = default.threads / crate::distributed::local_ranks().unwrap_or(1).max(1);
        JitOptions {
            bounds_checks: self.bounds_checks,
            threads: self.threads.map_or(cores.max(1), |n| n.get()),
            auto_threads: self.threads.is_none(),
            profile,
            ..default
        }
    }

    /// The engine that runs a model's programs on this backend, in element type `F`.
    pub fn engine<F: Element>(
        &self,
        programs: Programs,
    ) -> Result<Box<dyn Engine<F> + Send>, String> {
        self.backend
            .into_backend()
            .engine(programs, &self.jit_options())
    }
}

/// `--dtype`: the floating-point type a model computes in.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtypeArg {
    /// Single precision.
    F32,
    /// Double precision.
    F64,
}

/// The floating-point type a command computes in.
#[derive(Args, Debug, Clone, Default)]
pub struct DtypeFlag {
    /// The floating-point type of the parameters, of every value the programs compute and of
    /// the optimiser's state (default: the train block's `dtype`, else f32).
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
}

impl DtypeFlag {
    /// The flag's dtype, else the train block's.
    pub fn resolve(&self, train: Option<&sema::TrainConfig>) -> Dtype {
        match self.dtype {
            Some(DtypeArg::F32) => Dtype::F32,
            Some(DtypeArg::F64) => Dtype::F64,
            None => train.map_or(Dtype::F32, |t| t.dtype),
        }
    }
}

/// Where the parameters and the batch of a one-batch computation come from.
#[derive(Args, Debug, Clone, Default)]
pub struct ProblemFlags {
    /// Parameters as `.npz` arrays named like the model's params (default: the initialisers).
    #[arg(long)]
    pub params: Option<PathBuf>,
    /// Inputs and targets as `.npz` arrays named like the model's (default: the first batch of
    /// the train block's data, or seeded random data when there is none).
    #[arg(long)]
    pub inputs: Option<PathBuf>,
    /// Seed for initialisation and random data (default: the train block's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Use inputs holding NaNs or infinities instead of rejecting them.
    #[arg(long)]
    pub allow_nonfinite: bool,
}

/// Overrides of the train block's inference settings.
#[derive(Args, Debug, Clone, Default)]
pub struct RelaxFlags {
    /// Relaxation mode.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Relaxation steps T.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Relaxation step size η.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Heavy-ball momentum of the value units' updates, 0 <= m < 1.
    #[arg(long)]
    pub momentum: Option<f64>,
    /// How the loss drives the network: `clamp`, `nudge(BETA)` or `centered(BETA)` (also
    /// `nudge(beta=BETA)`).
    #[arg(long, value_parser = <crate::sema::Target as std::str::FromStr>::from_str, allow_hyphen_values = true)]
    pub target: Option<crate::sema::Target>,
    /// When the parameters learn: once per batch (`standard`) or after every relaxation
    /// step (`incremental`).
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Stop the relaxation once the energy changes by at most this fraction in one step
    /// (the inference block's `tol`; `steps` stays the cap).
    #[arg(long, value_name = "EPS")]
    pub relax_tol: Option<f64>,
    /// How each relaxation step moves the units (the inference block's `optimizer`): `sgd`,
    /// `nesterov` (with `--momentum`) or `adam`, also `adam(beta1=B1, beta2=B2, eps=E)`.
    #[arg(long, value_name = "OPT", value_parser = <crate::sema::StateOptimizer as std::str::FromStr>::from_str)]
    pub state_optimizer: Option<crate::sema::StateOptimizer>,
    /// Scale each node's relaxation step down to at most this norm per example (the
    /// inference block's `clip`).
    #[arg(long, value_name = "C")]
    pub state_clip: Option<f64>,
    /// How the energy weighs the batch (the inference block's `energy`).
    #[arg(long, value_enum)]
    pub energy: Option<EnergyArg>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnergyArg {
    /// ½ Σ π ‖ε‖² over the batch.
    Sum,
    /// Every relaxed node's term averaged over the batch (PCX's energy).
    Mean,
}

impl From<EnergyArg> for crate::sema::EnergyReduction {
    fn from(e: EnergyArg) -> Self {
        match e {
            EnergyArg::Sum => crate::sema::EnergyReduction::Sum,
            EnergyArg::Mean => crate::sema::EnergyReduction::Mean,
        }
    }
}

impl RelaxFlags {
    /// The flags as overrides of a train block's inference settings.
    pub fn overrides(&self) -> crate::sema::InferenceOverrides {
        crate::sema::InferenceOverrides {
            mode: self.mode.map(Mode::from),
            steps: self.steps,
            rate: self.rate,
            momentum: self.momentum,
            target: self.target,
            schedule: self.schedule.map(crate::sema::Schedule::from),
            tol: self.relax_tol,
            optimizer: self.state_optimizer,
            clip: self.state_clip,
            energy: self.energy.map(Into::into),
            ..Default::default()
        }
    }

    /// The inference configuration: the train block's, with these flags applied.
    pub(crate) fn apply(
        &self,
        base: Option<&InferenceConfig>,
    ) -> Result<InferenceConfig, Reported> {
        self.overrides().apply(base).map_err(fail)
    }
}

/// Which optimiser `pcg bench` times.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchOptimizer {
    /// Plain SGD at the file's learning rate.
    Sgd,
    /// The train block's optimiser.
    File,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodArg {
    Bp,
    Pc,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Method {
        match m {
            MethodArg::Bp => Method::Bp,
            MethodArg::Pc => Method::Pc,
        }
    }
}

/// `--loss` of `pcg import`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LossArg {
    /// ½ Σ (out − y)² / B (the stdlib's `mse`).
    #[default]
    Mse,
    /// −Σ y · log_softmax(out) / B over the last axis (the stdlib's `cross_entropy`).
    #[value(name = "cross_entropy")]
    CrossEntropy,
}

impl From<LossArg> for crate::onnx::Loss {
    fn from(loss: LossArg) -> Self {
        match loss {
            LossArg::Mse => crate::onnx::Loss::Mse,
            LossArg::CrossEntropy => crate::onnx::Loss::CrossEntropy,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    Fixed,
    Strict,
    Exact,
    Epc,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Fixed => Mode::Fixed,
            ModeArg::Strict => Mode::Strict,
            ModeArg::Exact => Mode::Exact,
            ModeArg::Epc => Mode::Epc,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleArg {
    Standard,
    Incremental,
}

impl From<ScheduleArg> for crate::sema::Schedule {
    fn from(s: ScheduleArg) -> Self {
        match s {
            ScheduleArg::Standard => crate::sema::Schedule::Standard,
            ScheduleArg::Incremental => crate::sema::Schedule::Incremental,
        }
    }
}

/// Flags shared by every command that compiles a model.
#[derive(Args, Debug, Clone, Default)]
pub struct CompileFlags {
    /// The model to use when the file defines several.
    #[arg(long)]
    pub model: Option<String>,
    /// The batch size (binds `B`), overriding the train block.
    #[arg(long)]
    pub batch: Option<usize>,
    #[command(flatten)]
    pub shape: ShapeFlags,
}

/// How a model's sizes and loops compile, besides the batch: the flags of the commands whose
/// batch size comes from elsewhere (`predict` takes it from the inputs, `export` has its own
/// default).
#[derive(Args, Debug, Clone, Default)]
pub struct ShapeFlags {
    /// Bind a dimension variable, or override a `const` of that name, e.g. `--dim T=50`
    /// (repeatable).
    #[arg(long = "dim", value_parser = parse_dim)]
    pub dims: Vec<(String, usize)>,
    /// How `for` loops compile: `auto` keeps a loop one scan unless it is short or its index
    /// sizes a shape, `scan` keeps every loop it can, `unroll` unrolls every loop
    /// (`pcg ir` says which each loop got, and why)
    #[arg(long, value_enum, default_value_t = Loops::Auto)]
    pub loops: Loops,
}

/// `--loops`: how `for` loops compile.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Loops {
    #[default]
    Auto,
    Scan,
    Unroll,
}

impl CompileFlags {
    pub fn options(&self) -> CompileOptions {
        self.shape.options(self.model.clone(), self.batch)
    }
}

impl ShapeFlags {
    /// The options that compile `model` (of the file's, when `None`) at batch size `batch`
    /// (the train block's, when `None`) with these flags.
    pub fn options(&self, model: Option<String>, batch: Option<usize>) -> CompileOptions {
        CompileOptions {
            model,
            batch,
            dims: self.dims.iter().cloned().collect(),
            loops: match self.loops {
                Loops::Auto => crate::sema::LoopPolicy::Auto,
                Loops::Scan => crate::sema::LoopPolicy::Scan,
                Loops::Unroll => crate::sema::LoopPolicy::Unroll,
            },
        }
    }
}

/// A count of at least 1 (`--epochs`, `--max-batches`).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".to_string()),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// A finite number above 0 (`--lr`), as the optimiser's `lr` must be.
fn positive_number(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        Ok(_) => Err("must be a positive number".to_string()),
        Err(_) => Err(format!("`{s}` is not a number")),
    }
}

fn parse_dim(s: &str) -> Result<(String, usize), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=N, got `{s}`"))?;
    let value: usize = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a positive integer"))?;
    if value == 0 {
        return Err("a dimension must be at least 1".to_string());
    }
    Ok((name.trim().to_string(), value))
}

/// Writes to stdout; a closed pipe (`pcg ir ... | head`) ends the output quietly instead of
/// panicking. In a job of several processes only rank 0 prints (see `job`).
pub(crate) fn emit(text: &str) {
    use std::io::Write;
    if job::QUIET.load(Ordering::Relaxed) {
        return;
    }
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// An error that has already been reported on stderr.
#[derive(Debug)]
pub(crate) struct Reported;

/// What a subcommand returns: success, or a failure already reported.
pub(crate) type CmdResult = Result<(), Reported>;

/// Reports an error on stderr.
pub(crate) fn fail(message: impl std::fmt::Display) -> Reported {
    job::error_text(format!("error: {message}\n"));
    Reported
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let _ = MEMORY_LIMIT.set(cli.memory_limit);
    let result = match cli.command {
        Command::Check {
            files,
            report,
            compile,
        } => check(&files, report, &compile.options()),
        Command::Ir {
            file,
            stage,
            format,
            relax,
            method,
            compile,
        } => ir_dump(
            &file,
            (stage, format),
            &relax,
            method.map(Into::into),
            &compile.options(),
        ),
        Command::Grad {
            file,
            method,
            backend,
            dtype,
            out,
            problem,
            relax,
            compile,
        } => commands::grad(
            &file,
            commands::GradRun {
                method,
                backend: &backend,
                dtype: &dtype,
                out: out.as_deref(),
            },
            &problem,
            &relax,
            &compile.options(),
        ),
        Command::Run {
            file,
            run,
            relax,
            compile,
        } => job::in_job(|world| training::run(&file, &run, &relax, &compile.options(), world)),
        Command::Eval {
            file,
            params,
            data,
            data_dir,
            dtype,
            compile,
        } => job::in_job(|world| {
            let data = (data.as_deref(), data_dir.as_deref());
            training::eval(&file, &params, data, &dtype, &compile.options(), world)
        }),
        Command::Plot { runs, title, out } => training::plot(&runs, &title, &out),
        Command::Fmt { files, check } => tools::fmt(&files, check),
        Command::Lsp => tools::lsp(),
        Command::Import {
            model,
            out,
            params,
            names,
            loss,
            target,
            batch,
        } => {
            let outputs = import::ImportOutputs {
                out: &out,
                params: params.as_deref(),
                names: names.as_deref(),
            };
            import::import(&model, outputs, loss, &target, batch)
        }
        Command::Predict {
            file,
            params,
            inputs,
            out,
            model,
            backend,
            dtype,
            shape,
        } => predict::predict(
            &file,
            predict::Files {
                params: &params,
                inputs: &inputs,
                out: &out,
            },
            &backend,
            &dtype,
            &shape.options(model, None),
        ),
        Command::Export {
            file,
            params,
            out,
            names,
            batch,
            model,
            shape,
        } => export::export(
            &file,
            export::Files {
                params: &params,
                out: &out,
                names: names.as_deref(),
            },
            &shape.options(model, Some(batch)),
        ),
        Command::Bench {
            file,
            method,
            backend,
            dtype,
            inference_steps,
            iters,
            profile,
            optimizer,
            relax,
            compile,
        } => {
            let relax = RelaxFlags {
                steps: inference_steps.or(relax.steps),
                ..relax
            };
            let run = training::BenchRun {
                iters,
                profile,
                optimizer,
                dtype,
            };
            job::in_job(|world| {
                training::bench(
                    &file,
                    method,
                    &backend,
                    run,
                    &relax,
                    &compile.options(),
                    world,
                )
            })
        }
        Command::Gradcheck {
            file,
            tol,
            json,
            plot,
            problem,
            relax,
            compile,
        } => commands::gradcheck(
            &file,
            tol,
            json,
            plot.as_deref(),
            &problem,
            &relax,
            &compile.options(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Stopped by SIGINT or SIGTERM, as a shell reports a command that the signal ended.
        Err(Reported) if STOP.load(Ordering::SeqCst) => ExitCode::from(130),
        Err(Reported) => ExitCode::FAILURE,
    }
}

/// Raised by the first SIGINT or SIGTERM during `pcg run`: training stops after the step under
/// way (and checkpoints, with `--save`).
static STOP: AtomicBool = AtomicBool::new(false);

/// Whether the first signal also abandons the step under way: a compiled relaxation polls
/// the request (`jit::interrupt`) and ends the step unfinished, nothing of it learnt. Not in
/// a job of several processes, whose ranks must stop after the same step.
static ABANDON_STEP: AtomicBool = AtomicBool::new(false);

/// Installs the handler that raises [`STOP`] on SIGINT or SIGTERM and ends the process at
/// once on a second one (a checkpoint being written is replaced atomically, so the previous
/// one stays intact). With `abandon_step`, the first signal also stops a long compiled
/// relaxation within two of its steps (the step is then redone on `--resume`). Returns the
/// flag for the training loop.
pub(crate) fn stop_on_signal(abandon_step: bool) -> &'static AtomicBool {
    ABANDON_STEP.store(abandon_step, Ordering::SeqCst);
    let installed = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopped");
            std::process::exit(130);
        }
        if ABANDON_STEP.load(Ordering::SeqCst) {
            crate::jit::interrupt(true);
            eprintln!(
                "\nstopping: the step under way ends or is abandoned (again to stop at once)"
            );
        } else {
            eprintln!("\nstopping after this step (again to stop at once)");
        }
    });
    if let Err(e) = installed {
        eprintln!("note: cannot catch interrupts ({e}); Ctrl-C ends the run at once");
    }
    &STOP
}

fn check(files: &[PathBuf], report: bool, options: &CompileOptions) -> CmdResult {
    let mut failed = false;
    for file in files {
        let (sources, result) = sema::check_file(file, options);
        let models = match result {
            Ok(models) => models,
            Err(diagnostics) => {
                diag::emit_to_stderr(&sources, &diagnostics);
                failed = true;
                continue;
            }
        };
        if report {
            // A model that cannot fit, alone or with its data set, is reported as `run` would
            // refuse it.
            let compiled = compile_to_run(file, options)?;
            let train = compiled.train.as_ref();
            let data = match train.and_then(|t| t.data.as_ref()) {
                None => None,
                Some(_) => match crate::model::dataset(file, None, None, train, false) {
                    Ok(data) => {
                        ensure_fits_with_data(&compiled.forward, &data)?;
                        Some(Ok(crate::memory::DataBytes::from(&data)))
                    }
                    Err(e) => Some(Err(e)),
                },
            };
            match dump::memory_report(&compiled, data) {
                Ok(text) => emit(&text),
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    failed = true;
                    continue;
                }
            }
        }
        emit(&format!("ok: {} ({})\n", file.display(), checked(&models)));
    }
    if failed {
        Err(Reported)
    } else {
        Ok(())
    }
}

/// "N parameters in K tensors", and the frozen tensors' count when there are any, from each
/// tensor's element count.
fn parameter_counts(trained: &[usize], frozen: &[usize]) -> String {
    let sum = |sizes: &[usize]| sizes.iter().sum::<usize>();
    let mut text = format!("{} parameters in {} tensors", sum(trained), trained.len());
    if !frozen.is_empty() {
        text.push_str(&format!(
            " (and {} frozen values in {} tensors)",
            sum(frozen),
            frozen.len()
        ));
    }
    text
}

/// What `pcg check` says of a clean file: each model's parameters, inputs and targets.
fn checked(models: &[Compiled]) -> String {
    use crate::ir::LeafKind;
    if models.is_empty() {
        return "no model: functions and constants only".to_string();
    }
    let described: Vec<String> = models
        .iter()
        .map(|c| {
            let forward = &c.forward;
            let (frozen, params): (Vec<_>, Vec<_>) = forward
                .leaves(LeafKind::Param)
                .into_iter()
                .partition(|(_, name)| c.frozen.iter().any(|f| f == name));
            let sizes = |tensors: &[(crate::ir::ValueId, &str)]| -> Vec<usize> {
                tensors
                    .iter()
                    .map(|&(id, _)| forward.shape(id).numel())
                    .collect()
            };
            let mut text = format!(
                "model {}: {}",
                c.model_name,
                parameter_counts(&sizes(&params), &sizes(&frozen))
            );
            for kind in [LeafKind::Input, LeafKind::Target] {
                for (id, name) in forward.leaves(kind) {
                    text.push_str(&format!(
                        ", {} {name} {}",
                        kind.keyword(),
                        forward.shape(id)
                    ));
                }
            }
            text
        })
        .collect();
    described.join("; ")
}

/// Compiles the model of `file`, printing diagnostics on failure.
pub(crate) fn compile_or_report(
    file: &Path,
    options: &CompileOptions,
) -> Result<Compiled, Reported> {
    let (sources, result) = sema::compile_file(file, options);
    result.map_err(|diagnostics| {
        diag::emit_to_stderr(&sources, &diagnostics);
        Reported
    })
}

/// Compiles a model that a command is about to run: also refuses, with a diagnostic, one that
/// cannot fit in the memory available (see `memory`).
pub(crate) fn compile_to_run(file: &Path, options: &CompileOptions) -> Result<Compiled, Reported> {
    let (sources, result) = sema::compile_file(file, options);
    let compiled = result.map_err(|diagnostics| {
        job::report_diagnostics(&sources, &diagnostics);
        Reported
    })?;
    let limit = MEMORY_LIMIT.get().copied().flatten();
    if let Err(message) = crate::memory::ensure_fits(&compiled.forward, None, limit) {
        match too_large(&sources, &compiled, &message) {
            Some(diagnostic) => job::report_diagnostics(&sources, &[diagnostic]),
            None => job::error_text(format!("error: {message}\n")),
        }
        return Err(Reported);
    }
    Ok(compiled)
}

/// Refuses, as `compile_to_run` refuses a model alone, a model that cannot fit in memory
/// with the data set it has loaded to train or evaluate on.
pub(crate) fn ensure_fits_with_data(
    forward: &crate::ir::Program,
    data: &crate::data::Dataset,
) -> Result<(), Reported> {
    let limit = MEMORY_LIMIT.get().copied().flatten();
    let bytes = crate::memory::DataBytes::from(data);
    crate::memory::ensure_fits(forward, Some(&bytes), limit).map_err(fail)
}

/// The refusal of a model too large for memory as a diagnostic labelling the declarations of
/// its largest parameters, inputs and targets in the source (`None` when none is found).
fn too_large(sources: &Sources, compiled: &Compiled, message: &str) -> Option<diag::Diagnostic> {
    use crate::syntax::ast::{Item, Stmt};
    let footprint = crate::memory::footprint(&compiled.forward);
    let mut labels = Vec::new();
    let files = (0..).take_while(|&id| sources.files.get(id).is_ok());
    for file in files {
        let (module, _) = crate::syntax::parse(file, sources.text(file));
        for item in &module.items {
            let Item::Model(model) = item else { continue };
            if model.name.name != compiled.model_name {
                continue;
            }
            for stmt in &model.body {
                let Stmt::Decl { name, span, .. } = stmt else {
                    continue;
                };
                if let Some((_, _, shape, bytes)) =
                    footprint.largest.iter().find(|t| t.1 == name.name)
                {
                    let size = crate::memory::bytes_text(*bytes);
                    labels.push((*bytes, *span, format!("{shape}: {size}")));
                }
            }
        }
    }
    // The largest gets the primary label.
    labels.sort_by_key(|l| std::cmp::Reverse(l.0));
    let (first, rest) = labels.split_first()?;
    let (headline, details) = message.split_once('\n').unwrap_or((message, ""));
    let mut d = diag::Diagnostic::new(
        diag::ErrorKind::TooLargeForMemory,
        headline,
        first.1,
        first.2.clone(),
    );
    for (_, span, text) in rest {
        d = d.with_label(*span, text.clone());
    }
    if !details.trim().is_empty() {
        d = d.with_note(details.trim().to_string());
    }
    Some(d.with_note(
        "`pcg check --report` prints what a model holds; `--memory-limit` sets the budget",
    ))
}

fn ir_dump(
    file: &Path,
    (stage, format): (Stage, Format),
    relax: &RelaxFlags,
    method: Option<Method>,
    options: &CompileOptions,
) -> CmdResult {
    if stage == Stage::Ast {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                return Err(fail(format!("cannot read `{}`: {e}", file.display())));
            }
        };
        let mut sources = Sources::new();
        let id = sources.add(file.display().to_string(), text.clone());
        let (module, diagnostics) = crate::syntax::parse(id, &text);
        if !diagnostics.is_empty() {
            diag::emit_to_stderr(&sources, &diagnostics);
            return Err(Reported);
        }
        if format == Format::Dot {
            return Err(fail("the AST has no DOT form; use --format text"));
        }
        emit(&dump::ast_text(&module));
        return Ok(());
    }
    let compiled = if matches!(stage, Stage::Plan | Stage::Clif) {
        compile_to_run(file, options)?
    } else {
        compile_or_report(file, options)?
    };
    let inference = relax.apply(compiled.train.as_ref().map(|t| &t.inference))?;
    let text = dump::stage_text_of(&compiled, stage, format, &inference, method).map_err(fail)?;
    emit(&text);
    Ok(())
}
