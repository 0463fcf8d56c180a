//! The `train` block: which data, which learning method (predictive coding or backprop), the
//! inference (relaxation) settings, the optimiser and the loop sizes. Every key and value is
//! checked here; an unknown key or a bad value is a diagnostic with the valid choices.

pub use crate::data::DataSpec;
use crate::data::{SpecArg, SpecValue};
use crate::diag::{closest, Diagnostic, ErrorKind};
use crate::ir::Program;
use crate::source::Span;
use crate::syntax::ast::{self, ExprKind, TrainValue};
use std::collections::BTreeMap;

/// How the model's weights learn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Predictive coding: relaxation of value units, then local weight updates.
    Pc,
    /// Backpropagation of the loss gradient.
    Bp,
}

/// The floating-point type a model computes in: its parameters, the values of every program
/// (forward, gradient, relaxation, learning) and the optimiser's state. The train block's key
/// is `dtype`, not `precision`, which names predictive coding's inverse variances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dtype {
    /// Single precision: the default, and what training runs in.
    #[default]
    F32,
    /// Double precision: for checking an update to the last digits.
    F64,
}

impl Dtype {
    /// Every dtype, as the train block and `--dtype` spell them.
    pub const NAMES: &'static [&'static str] = &["f32", "f64"];

    /// The dtype as the train block and `--dtype` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "f32" => Ok(Dtype::F32),
            "f64" => Ok(Dtype::F64),
            other => Err(format!(
                "`{other}` is not a dtype: choose one of {}",
                Dtype::NAMES.join(", ")
            )),
        }
    }
}

/// How the loss drives a predictive-coding network (see `docs/book/src/language.md`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// The outputs' errors are clamped to −∂L/∂μ.
    Clamp,
    /// The loss term scaled by β (β ≠ 0; β < 0 nudges away from the target) and the update
    /// divided by β.
    Nudge(f64),
    /// Two relaxations, with the loss term scaled by +β and by −β; the update is their
    /// difference over 2β (the mean of the two nudged updates).
    Centered(f64),
}

impl Target {
    /// The relaxations a step runs: the suffix of each one's state names and the scale of its
    /// loss term.
    pub fn phases(self) -> Vec<(&'static str, f64)> {
        match self {
            Target::Clamp => vec![("", 1.0)],
            Target::Nudge(beta) => vec![("", beta)],
            Target::Centered(beta) => vec![(".plus", beta), (".minus", -beta)],
        }
    }

    /// The target as the `.pcg` file writes it.
    pub fn describe(self) -> String {
        match self {
            Target::Clamp => "clamp".to_string(),
            Target::Nudge(beta) => format!("nudge(beta = {})", crate::ir::fmt_f64(beta)),
            Target::Centered(beta) => {
                format!("centered(beta = {})", crate::ir::fmt_f64(beta))
            }
        }
    }
}

/// `clamp`, `nudge(0.1)`, `centered(0.1)` or with `beta = 0.1`, as the inference block's
/// `target`.
impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Target, String> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if compact == "clamp" {
            return Ok(Target::Clamp);
        }
        let usage =
            || format!("`{text}` is not a target: write `clamp`, `nudge(0.1)` or `centered(0.1)`");
        let (make, rest): (fn(f64) -> Target, &str) =
            if let Some(r) = compact.strip_prefix("nudge(") {
                (Target::Nudge, r)
            } else if let Some(r) = compact.strip_prefix("centered(") {
                (Target::Centered, r)
            } else {
                return Err(usage());
            };
        let inner = rest.strip_suffix(')').ok_or_else(usage)?;
        let number = inner.strip_prefix("beta=").unwrap_or(inner);
        match number.parse::<f64>() {
            Ok(beta) if beta != 0.0 && beta.is_finite() => Ok(make(beta)),
            Ok(_) => Err("`beta` must be a non-zero number".to_string()),
            Err(_) => Err(usage()),
        }
    }
}

/// The relaxation schedule of predictive coding (see `docs/book/src/language.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Predictions and Jacobians frozen at the feedforward pass (the fixed-prediction
    /// assumption); converges to backprop's gradients.
    Fixed,
    /// Predictions and Jacobians recomputed from the current values every step.
    Strict,
    /// Fixed predictions with step size 1: backprop's gradients after as many steps as the
    /// graph is deep.
    Exact,
    /// Error-based PC (ePC): the strict energy relaxed through its errors, each value being
    /// its prediction plus its error, so that every step sees the whole graph's response.
    Epc,
}

impl Mode {
    /// The mode's keyword in `.pcg` files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fixed => "fixed",
            Mode::Strict => "strict",
            Mode::Exact => "exact",
            Mode::Epc => "epc",
        }
    }

    /// Whether predictions follow the relaxed state (strict and ePC), rather than being
    /// frozen at the feedforward pass (fixed and exact).
    pub fn moves_predictions(self) -> bool {
        matches!(self, Mode::Strict | Mode::Epc)
    }
}

/// How a relaxation step moves each unit along its descent direction d (the negated
/// gradient of the energy with respect to the unit), with step size η.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StateOptimizer {
    /// u ← m u + d, then the unit moves by η u (heavy-ball momentum m, the inference block's
    /// `momentum`; m = 0 is the plain step).
    Sgd,
    /// u ← m u + d, then the unit moves by η (d + m u): Nesterov's momentum as PyTorch and
    /// optax write it.
    Nesterov,
    /// Adam on the units: m ← β₁ m + (1 − β₁) d, s ← β₂ s + (1 − β₂) d², and the unit moves
    /// by η m̂ / (√ŝ + ε) with the bias-corrected moments m̂ = m / (1 − β₁ᵗ), ŝ = s / (1 − β₂ᵗ)
    /// at relaxation step t = 1, 2, ...
    Adam { beta1: f64, beta2: f64, eps: f64 },
}

impl StateOptimizer {
    /// The optimiser as an inference block writes it.
    pub fn describe(self, momentum: f64) -> String {
        let f = crate::ir::fmt_f64;
        match self {
            StateOptimizer::Sgd => format!("sgd(momentum = {})", f(momentum)),
            StateOptimizer::Nesterov => format!("nesterov(momentum = {})", f(momentum)),
            StateOptimizer::Adam { beta1, beta2, eps } => format!(
                "adam(beta1 = {}, beta2 = {}, eps = {})",
                f(beta1),
                f(beta2),
                f(eps)
            ),
        }
    }
}

impl std::str::FromStr for StateOptimizer {
    type Err = String;

    /// `sgd`, `nesterov` (their momentum given apart) or `adam`, with Adam's settings
    /// optionally in brackets: `adam(beta1 = 0.9, beta2 = 0.999, eps = 1e-8)`.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage =
            "expected `sgd`, `nesterov` or `adam`, or `adam(beta1 = B1, beta2 = B2, eps = E)`";
        let s = s.trim();
        let (name, args) = match s.split_once('(') {
            Some((name, rest)) => {
                let args = rest.strip_suffix(')').ok_or_else(|| usage.to_string())?;
                (name.trim(), Some(args))
            }
            None => (s, None),
        };
        match (name, args) {
            ("sgd", None) => Ok(StateOptimizer::Sgd),
            ("nesterov", None) => Ok(StateOptimizer::Nesterov),
            ("adam", args) => {
                let (mut beta1, mut beta2, mut eps) = (0.9, 0.999, 1e-8);
                for pair in args.unwrap_or("").split(',').filter(|p| !p.trim().is_empty()) {
                    let (key, value) = pair.split_once('=').ok_or_else(|| usage.to_string())?;
                    let value: f64 = value
                        .trim()
                        .parse()
                        .map_err(|_| format!("`{}` is not a number", value.trim()))?;
                    let fraction = (0.0..1.0).contains(&value);
                    match key.trim() {
                        "beta1" if fraction => beta1 = value,
                        "beta2" if fraction => beta2 = value,
                        "eps" if value > 0.0 && value.is_finite() => eps = value,
                        "beta1" | "beta2" => {
                            return Err(format!("`{}` must be from 0 up to (not including) 1", key.trim()))
                        }
                        "eps" => return Err("`eps` must be a positive number".to_string()),
                        other => return Err(format!("adam has no setting `{other}`: {usage}")),
                    }
                }
                Ok(StateOptimizer::Adam { beta1, beta2, eps })
            }
            _ => Err(format!("`{s}` is not a state optimiser: {usage} (the momentum of sgd and nesterov is given apart)")),
        }
    }
}

/// How the energy weighs the batch (see `docs/book/src/pc.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnergyReduction {
    /// F = ½ Σ π ‖ε‖² over the whole batch, the loss averaging its own terms: the loss's
    /// gradients are backprop's.
    Sum,
    /// Every relaxed node's term averaged over the batch (its precision divided by the batch
    /// size), as PCX defines the energy: state steps and weight updates do not change with
    /// the batch size.
    Mean,
}

/// When a predictive-coding step updates the parameters (see `docs/book/src/language.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Once, from the relaxed state, after the last relaxation step.
    Standard,
    /// After every relaxation step, from the local errors of that step (incremental PC): an
    /// optimiser step per relaxation step.
    Incremental,
}

impl Schedule {
    /// The schedule's keyword in `.pcg` files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Standard => "standard",
            Schedule::Incremental => "incremental",
        }
    }
}

/// Which IR values become predictive-coding nodes with value and error units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeGranularity {
    /// Values bound by `let` (and values read by the loss).
    Named,
    /// Every primitive operation.
    All,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InferenceConfig {
    pub mode: Mode,
    pub steps: usize,
    pub rate: f64,
    /// Precision (inverse variance) per named node; 1 where not given.
    pub precision: BTreeMap<String, f64>,
    pub nodes: NodeGranularity,
    /// Heavy-ball momentum m of the value units' updates (0: plain steps).
    pub momentum: f64,
    /// How each step moves the units (with `momentum` for `Sgd` and `Nesterov`).
    pub optimizer: StateOptimizer,
    /// Each node's step of a relaxation step is scaled down to at most this Euclidean norm per
    /// example (its rows along the batch axis); `None`: not clipped.
    pub clip: Option<f64>,
    /// A step size per named node, replacing `rate` for those nodes.
    pub rates: BTreeMap<String, f64>,
    pub energy: EnergyReduction,
    pub target: Target,
    pub schedule: Schedule,
    /// Stop the relaxation once the energy's relative change over one step is at most this
    /// (0 < ε < 1), with `steps` as the cap; `None`: always run `steps`.
    pub tol: Option<f64>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            mode: Mode::Fixed,
            steps: 20,
            rate: 0.1,
            precision: BTreeMap::new(),
            nodes: NodeGranularity::Named,
            momentum: 0.0,
            optimizer: StateOptimizer::Sgd,
            clip: None,
            rates: BTreeMap::new(),
            energy: EnergyReduction::Sum,
            target: Target::Clamp,
            schedule: Schedule::Standard,
            tol: None,
        }
    }
}

/// Changes to a train block's inference settings made outside the file (the command line's
/// `--mode`, `--steps`, ... and the Python module's keyword arguments): each one given
/// replaces the file's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InferenceOverrides {
    pub mode: Option<Mode>,
    pub steps: Option<usize>,
    pub rate: Option<f64>,
    pub momentum: Option<f64>,
    pub target: Option<Target>,
    pub schedule: Option<Schedule>,
    pub tol: Option<f64>,
    /// Precisions by named node, replacing the file's for the nodes named.
    pub precision: BTreeMap<String, f64>,
    pub nodes: Option<NodeGranularity>,
    pub optimizer: Option<StateOptimizer>,
    pub clip: Option<f64>,
    pub energy: Option<EnergyReduction>,
    /// Step sizes by named node, replacing the file's for the nodes named.
    pub rates: BTreeMap<String, f64>,
}

impl InferenceOverrides {
    /// The inference configuration: `base` (the train block's, or the defaults) with these
    /// overrides applied. A step count of zero or a step size that is not a positive number is
    /// an error (the other settings are checked by the PC transform).
    pub fn apply(&self, base: Option<&InferenceConfig>) -> Result<InferenceConfig, String> {
        let mut cfg = base.cloned().unwrap_or_default();
        if let Some(m) = self.mode {
            cfg.mode = m;
        }
        if let Some(t) = self.steps {
            if t == 0 {
                return Err("the relaxation needs at least one step (steps >= 1)".to_string());
            }
            cfg.steps = t;
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(format!("the relaxation rate {r} is not a positive number"));
            }
            cfg.rate = r;
        }
        if let Some(m) = self.momentum {
            cfg.momentum = m;
        }
        if let Some(t) = self.target {
            cfg.target = t;
        }
        if let Some(s) = self.schedule {
            cfg.schedule = s;
        }
        if let Some(t) = self.tol {
            cfg.tol = Some(t);
        }
        for (what, given, into) in [
            ("precision", &self.precision, &mut cfg.precision),
            ("rate", &self.rates, &mut cfg.rates),
        ] {
            for (node, &p) in given {
                if !(p.is_finite() && p > 0.0) {
                    return Err(format!(
                        "the {what} of `{node}`, {p}, is not a positive number"
                    ));
                }
                into.insert(node.clone(), p);
            }
        }
        if let Some(o) = self.optimizer {
            cfg.optimizer = o;
        }
        if let Some(c) = self.clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!("the state clip {c} is not a positive number"));
            }
            cfg.clip = Some(c);
        }
        if let Some(e) = self.energy {
            cfg.energy = e;
        }
        if let Some(n) = self.nodes {
            cfg.nodes = n;
        }
        Ok(cfg)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum OptimizerConfig {
    Sgd {
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    },
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

/// How the learning rate changes over training: a factor of the optimiser's `lr` at optimiser
/// step t = 1, 2, ... (see the language reference, `docs/book/src/language.md`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// Linear warm-up from 0 over `warmup` steps, then a half-cosine from 1 down to `end`
    /// at step `steps`, and `end` after it (`cosine` is this with no warm-up; PCX's tuned
    /// configurations use it).
    WarmupCosine { warmup: u64, steps: u64, end: f64 },
    /// Linear warm-up from 0 over `steps` steps, then 1.
    Warmup { steps: u64 },
    /// `factor` to the power ⌊(t − 1) / every⌋: multiplied by `factor` every `every` steps.
    Step { every: u64, factor: f64 },
}

impl LrSchedule {
    /// The factor of the learning rate at optimiser step `t` (1-based).
    pub fn factor(self, t: u64) -> f64 {
        match self {
            LrSchedule::Warmup { steps } => (t as f64 / steps.max(1) as f64).min(1.0),
            LrSchedule::Step { every, factor } => {
                factor.powi(((t.max(1) - 1) / every.max(1)).min(i32::MAX as u64) as i32)
            }
            LrSchedule::WarmupCosine { warmup, steps, end } => {
                if t < warmup {
                    t as f64 / warmup as f64
                } else if t >= steps {
                    end
                } else {
                    let span = (steps - warmup).max(1) as f64;
                    let done = (t - warmup) as f64 / span;
                    end + (1.0 - end) * 0.5 * (1.0 + (std::f64::consts::PI * done).cos())
                }
            }
        }
    }
}

/// How the optimiser's learning rate is shaped: over time (`lr_schedule`) and per parameter
/// (`lr_scale`, `freeze`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LrTuning {
    pub schedule: Option<LrSchedule>,
    /// The learning rate's factor per parameter (1 where not given).
    pub scales: BTreeMap<String, f64>,
    /// Parameters that do not learn (no update, no optimiser state).
    pub frozen: Vec<String>,
}

impl LrTuning {
    /// The learning rate's factor for a parameter: 0 when it is frozen.
    pub fn scale(&self, param: &str) -> f64 {
        if self.frozen.iter().any(|f| f == param) {
            0.0
        } else {
            self.scales.get(param).copied().unwrap_or(1.0)
        }
    }
}

impl OptimizerConfig {
    /// The optimiser as a train block writes it: `sgd(lr = 0.05, momentum = 0.9)`.
    pub fn describe(&self) -> String {
        let f = crate::ir::fmt_f64;
        match *self {
            OptimizerConfig::Sgd {
                lr,
                momentum,
                weight_decay,
            } => format!(
                "sgd(lr = {}, momentum = {}, weight_decay = {})",
                f(lr),
                f(momentum),
                f(weight_decay)
            ),
            OptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => format!(
                "adam(lr = {}, beta1 = {}, beta2 = {}, eps = {}, weight_decay = {})",
                f(lr),
                f(beta1),
                f(beta2),
                f(eps),
                f(weight_decay)
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub data: Option<DataSpec>,
    pub method: Method,
    pub inference: InferenceConfig,
    pub optimizer: OptimizerConfig,
    /// Clip each parameter's update to this L2 norm.
    pub clip: Option<f64>,
    /// The learning rate's schedule and per-parameter factors.
    pub tuning: LrTuning,
    /// The data set's inputs mapped from [0, 1] to this range (`input_range = [-1, 1]`).
    pub input_range: Option<(f64, f64)>,
    pub batch: usize,
    pub epochs: usize,
    pub seed: u64,
    /// The floating-point type training computes in (`dtype = f64`).
    pub dtype: Dtype,
    /// Span of the `train` block, for diagnostics raised later (e.g. by the data loader).
    pub span: Span,
}

const KEYS: &[&str] = &[
    "data",
    "method",
    "inference",
    "optimizer",
    "batch",
    "epochs",
    "seed",
    "clip",
    "lr_schedule",
    "lr_scale",
    "freeze",
    "input_range",
    "dtype",
];
const INFERENCE_KEYS: &[&str] = &[
    "mode",
    "steps",
    "rate",
    "precision",
    "nodes",
    "momentum",
    "target",
    "schedule",
    "tol",
    "optimizer",
    "clip",
    "rates",
    "energy",
];

/// Checks a train block, reporting every problem; returns the configuration if it is sound.
pub fn check(def: &ast::TrainDef, diagnostics: &mut Vec<Diagnostic>) -> Option<TrainConfig> {
    let before = diagnostics.len();
    let cfg = configure(def, diagnostics);
    (diagnostics.len() == before).then_some(cfg)
}

/// Checks a train block, reporting every problem, and returns the configuration with the
/// default in place of each bad entry (so the model can still be analysed with a batch size).
pub(crate) fn configure(def: &ast::TrainDef, diagnostics: &mut Vec<Diagnostic>) -> TrainConfig {
    let mut cfg = TrainConfig {
        data: None,
        method: Method::Pc,
        inference: InferenceConfig::default(),
        optimizer: OptimizerConfig::Sgd {
            lr: 0.01,
            momentum: 0.0,
            weight_decay: 0.0,
        },
        clip: None,
        tuning: LrTuning::default(),
        input_range: None,
        batch: 32,
        epochs: 1,
        seed: 0,
        dtype: Dtype::F32,
        span: def.span,
    };
    let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
    for entry in &def.entries {
        if !note_key(&mut seen, entry, diagnostics) {
            continue;
        }
        match entry.key.name.as_str() {
            "data" => cfg.data = expr(entry, diagnostics).and_then(|e| data(e, diagnostics)),
            "method" => {
                if let Some(w) = expr(entry, diagnostics)
                    .and_then(|e| word(e, &["pc", "bp"], "method", diagnostics))
                {
                    cfg.method = if w == "pc" { Method::Pc } else { Method::Bp };
                }
            }
            "inference" => inference(entry, &mut cfg.inference, diagnostics),
            "optimizer" => {
                if let Some(o) = expr(entry, diagnostics).and_then(|e| optimizer(e, diagnostics)) {
                    cfg.optimizer = o;
                }
            }
            "batch" => {
                if let Some(v) = expr(entry, diagnostics).and_then(|e| integer(e, 1, diagnostics)) {
                    cfg.batch = v as usize;
                }
            }
            "epochs" => {
                if let Some(v) = expr(entry, diagnostics).and_then(|e| integer(e, 1, diagnostics)) {
                    cfg.epochs = v as usize;
                }
            }
            "seed" => {
                if let Some(v) = expr(entry, diagnostics).and_then(|e| integer(e, 0, diagnostics)) {
                    cfg.seed = v as u64;
                }
            }
            "dtype" => {
                if let Some(w) = expr(entry, diagnostics)
                    .and_then(|e| word(e, Dtype::NAMES, "dtype", diagnostics))
                {
                    cfg.dtype = w.parse().unwrap_or_default();
                }
            }
            "clip" => cfg.clip = expr(entry, diagnostics).and_then(|e| positive(e, diagnostics)),
            "lr_schedule" => {
                cfg.tuning.schedule =
                    expr(entry, diagnostics).and_then(|e| lr_schedule(e, diagnostics))
            }
            "lr_scale" => {
                let TrainValue::Block(items, _) = &entry.value else {
                    diagnostics.push(bad_value(
                        entry.span,
                        "`lr_scale` takes a block",
                        "write `lr_scale { w1 = 0.1, head = 10 }`",
                    ));
                    continue;
                };
                let mut seen = BTreeMap::new();
                for item in items {
                    if !note_key(&mut seen, item, diagnostics) {
                        continue;
                    }
                    let value = expr(item, diagnostics).and_then(|e| non_negative(e, diagnostics));
                    if let Some(v) = value {
                        cfg.tuning.scales.insert(item.key.name.clone(), v);
                    }
                }
            }
            "input_range" => {
                cfg.input_range = expr(entry, diagnostics).and_then(|e| range(e, diagnostics))
            }
            "freeze" => {
                if let Some(names) =
                    expr(entry, diagnostics).and_then(|e| name_list(e, diagnostics))
                {
                    cfg.tuning.frozen = names;
                }
            }
            other => diagnostics.push(unknown_key(other, entry.key.span, KEYS, "train")),
        }
    }
    cfg
}

/// Checks what needs the compiled model: precision keys must name values the model computes
/// (not its inputs, targets or parameters, which have no error units). Runs on a train block
/// with other errors too, so that one `check` reports them all.
pub fn check_against_model(
    cfg: &TrainConfig,
    def: &ast::TrainDef,
    forward: &Program,
    diagnostics: &mut Vec<Diagnostic>,
) {
    check_param_names(cfg, def, forward, diagnostics);
    let per_node = [
        (
            "precision",
            &cfg.inference.precision,
            "precisions weight the errors",
        ),
        (
            "rates",
            &cfg.inference.rates,
            "rates scale the steps of the units",
        ),
    ];
    if per_node.iter().all(|(_, given, _)| given.is_empty()) {
        return;
    }
    let names: Vec<&str> = forward
        .nodes
        .iter()
        .filter(|n| !matches!(n.op, crate::ir::Op::Leaf(_)))
        .filter_map(|n| n.name.as_deref())
        .collect();
    for entry in &def.entries {
        let TrainValue::Block(inner, _) = &entry.value else {
            continue;
        };
        for (key, given, role) in per_node {
            for e in inner.iter().filter(|e| e.key.name == key) {
                let TrainValue::Block(items, _) = &e.value else {
                    continue;
                };
                // A bad value has been reported already; a leaf's name gets its own hint.
                for item in items {
                    let valid = given.contains_key(&item.key.name);
                    if valid && !names.contains(&item.key.name.as_str()) {
                        let what = if key == "rates" { "rate" } else { key };
                        let mut d = Diagnostic::new(
                            ErrorKind::BadTrainValue,
                            format!(
                                "{what} for `{}`, which is not a named value of the model",
                                item.key.name
                            ),
                            item.key.span,
                            "no such node",
                        );
                        if let Some(kind) = leaf_kind(forward, &item.key.name) {
                            d = d.with_help(format!(
                                "`{}` is {kind}, which has no error unit: {role} of the values the model computes (its `let` names)",
                                item.key.name
                            ));
                        } else if let Some(s) = closest(&item.key.name, names.iter().copied()) {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        }
                        diagnostics.push(d);
                    }
                }
            }
        }
    }
}

/// The names `lr_scale` and `freeze` give must be the model's parameters.
fn check_param_names(
    cfg: &TrainConfig,
    def: &ast::TrainDef,
    forward: &Program,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let params: Vec<&str> = forward
        .leaves(crate::ir::LeafKind::Param)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let mut check = |name: &str, span: Span, key: &str| {
        if params.contains(&name) {
            return;
        }
        let mut d = bad_value(
            span,
            format!("`{key}` names `{name}`, which is not a parameter of the model"),
            format!("the parameters: {}", params.join(", ")),
        );
        if let Some(s) = closest(name, params.iter().copied()) {
            d = d.with_note(format!("did you mean `{s}`?"));
        }
        diagnostics.push(d);
    };
    for entry in &def.entries {
        match (entry.key.name.as_str(), &entry.value) {
            ("lr_scale", TrainValue::Block(items, _)) => {
                for item in items {
                    if cfg.tuning.scales.contains_key(&item.key.name) {
                        check(&item.key.name, item.key.span, "lr_scale");
                    }
                }
            }
            ("freeze", TrainValue::Expr(e)) => {
                if let ExprKind::List(items) = &e.kind {
                    for item in items {
                        if let ExprKind::Name(id) = &item.kind {
                            check(&id.name, id.span, "freeze");
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// "a parameter", "an input" or "a target" when `name` is one of the model's leaves.
fn leaf_kind(forward: &Program, name: &str) -> Option<&'static str> {
    use crate::ir::{LeafKind, Op};
    forward.nodes.iter().find_map(|n| match n.op {
        Op::Leaf(kind) if n.name.as_deref() == Some(name) => Some(match kind {
            LeafKind::Param => "a parameter",
            LeafKind::Input => "an input",
            _ => "a target",
        }),
        _ => None,
    })
}

fn note_key<'a>(
    seen: &mut BTreeMap<&'a str, Span>,
    entry: &'a ast::TrainEntry,
    diagnostics: &mut Vec<Diagnostic>,
) -> bool {
    if let Some(first) = seen.get(entry.key.name.as_str()) {
        diagnostics.push(
            Diagnostic::new(
                ErrorKind::DuplicateDefinition,
                format!("`{}` is set twice", entry.key.name),
                entry.key.span,
                "set again here",
            )
            .with_label(*first, "first set here"),
        );
        return false;
    }
    seen.insert(&entry.key.name, entry.key.span);
    true
}

fn unknown_key(key: &str, span: Span, valid: &[&str], block: &str) -> Diagnostic {
    let mut d = Diagnostic::new(
        ErrorKind::UnknownTrainKey,
        format!("unknown key `{key}` in the {block} block"),
        span,
        "unknown key",
    );
    if let Some(s) = closest(key, valid.iter().copied()) {
        d = d.with_help(format!("did you mean `{s}`?"));
    }
    d.with_note(format!("valid keys: {}", valid.join(", ")))
}

fn bad_value(span: Span, message: impl Into<String>, help: impl Into<String>) -> Diagnostic {
    Diagnostic::new(ErrorKind::BadTrainValue, message, span, "bad value").with_help(help)
}

fn expr<'a>(
    entry: &'a ast::TrainEntry,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<&'a ast::Expr> {
    match &entry.value {
        TrainValue::Expr(e) => Some(e),
        TrainValue::Block(_, span) => {
            diagnostics.push(bad_value(
                *span,
                format!("`{}` takes a value, not a block", entry.key.name),
                format!("write `{} = ...`", entry.key.name),
            ));
            None
        }
    }
}

fn number(e: &ast::Expr) -> Option<f64> {
    match &e.kind {
        ExprKind::Int(i) => Some(*i as f64),
        ExprKind::Float(x) => Some(*x),
        ExprKind::Neg(inner) => number(inner).map(|x| -x),
        _ => None,
    }
}

fn integer(e: &ast::Expr, min: i64, diagnostics: &mut Vec<Diagnostic>) -> Option<i64> {
    let (message, help) = match (&e.kind, number(e)) {
        (ExprKind::Int(i), _) if *i >= min => return Some(*i),
        (_, Some(x)) if x.fract() == 0.0 && x >= min as f64 => (
            format!("expected an integer of at least {min}, got {x:?}"),
            "write a whole number, without a decimal point".to_string(),
        ),
        (_, Some(x)) if x.fract() == 0.0 => (
            format!("expected an integer of at least {min}, got {x}"),
            format!("write a whole number from {min} up"),
        ),
        (_, Some(x)) => (
            format!("expected an integer of at least {min}, got {x}"),
            "write a whole number, without a decimal point".to_string(),
        ),
        _ => (
            format!("expected an integer of at least {min}"),
            "write a whole number, e.g. `32`".to_string(),
        ),
    };
    diagnostics.push(bad_value(e.span, message, help));
    None
}

fn positive(e: &ast::Expr, diagnostics: &mut Vec<Diagnostic>) -> Option<f64> {
    match number(e) {
        Some(x) if x > 0.0 && x.is_finite() => Some(x),
        got => {
            let message = match got {
                Some(x) => format!("expected a positive number, got {x}"),
                None => "expected a positive number".to_string(),
            };
            diagnostics.push(bad_value(e.span, message, "e.g. `0.1`"));
            None
        }
    }
}

/// A number >= 0 (a learning rate's factor; 0 freezes).
fn non_negative(e: &ast::Expr, diagnostics: &mut Vec<Diagnostic>) -> Option<f64> {
    match number(e) {
        Some(x) if x >= 0.0 && x.is_finite() => Some(x),
        _ => {
            diagnostics.push(bad_value(
                e.span,
                "expected a number from 0 up (0 freezes the parameter)",
                "e.g. `w1 = 0.1`",
            ));
            None
        }
    }
}

/// `[low, high]`, two numbers with low < high.
fn range(e: &ast::Expr, diagnostics: &mut Vec<Diagnostic>) -> Option<(f64, f64)> {
    if let ExprKind::List(items) = &e.kind {
        if let [low, high] = items.as_slice() {
            if let (Some(l), Some(h)) = (number(low), number(high)) {
                if l < h && l.is_finite() && h.is_finite() {
                    return Some((l, h));
                }
            }
        }
    }
    diagnostics.push(bad_value(
        e.span,
        "expected a range `[low, high]` of two numbers with low < high",
        "e.g. `input_range = [-1, 1]` for pixels in [-1, 1]",
    ));
    None
}

/// `[a, b, c]`: a list of names (the parameters to freeze).
fn name_list(e: &ast::Expr, diagnostics: &mut Vec<Diagnostic>) -> Option<Vec<String>> {
    let ExprKind::List(items) = &e.kind else {
        diagnostics.push(bad_value(
            e.span,
            "expected a list of parameter names",
            "e.g. `freeze = [w1, b1]`",
        ));
        return None;
    };
    let mut names = Vec::new();
    for item in items {
        match &item.kind {
            ExprKind::Name(id) => names.push(id.name.clone()),
            _ => {
                diagnostics.push(bad_value(
                    item.span,
                    "expected a parameter name",
                    "e.g. `freeze = [w1, b1]`",
                ));
                return None;
            }
        }
    }
    Some(names)
}

/// `constant`, `warmup(steps)`, `cosine(steps, end = 0)`, `warmup_cosine(warmup, steps,
/// end = 0)` or `step(every, factor = 0.1)`; step counts are whole numbers of optimiser
/// steps.
fn lr_schedule(e: &ast::Expr, diagnostics: &mut Vec<Diagnostic>) -> Option<LrSchedule> {
    let hint = "write `constant`, `warmup(steps = 100)`, `cosine(steps = 1000)`, `warmup_cosine(warmup = 100, steps = 1000, end = 0)` or `step(every = 500, factor = 0.5)`";
    let name = match &e.kind {
        ExprKind::Name(id) if id.name == "constant" => return None,
        ExprKind::Call { callee, .. } => callee.name.as_str(),
        _ => {
            diagnostics.push(bad_value(
                e.span,
                format!("`{}` is not a learning-rate schedule", describe(e)),
                hint,
            ));
            return None;
        }
    };
    let allowed: &[&str] = match name {
        "warmup" => &["steps"],
        "cosine" => &["steps", "end"],
        "warmup_cosine" => &["warmup", "steps", "end"],
        "step" => &["every", "factor"],
        _ => {
            diagnostics.push(bad_value(
                e.span,
                format!("`{name}` is not a learning-rate schedule"),
                hint,
            ));
            return None;
        }
    };
    let args = call_args(e, allowed, allowed.len(), diagnostics)?;
    let before = diagnostics.len();
    let count = |key: &str, diagnostics: &mut Vec<Diagnostic>| -> u64 {
        match args.get(key) {
            Some(v) => integer(v, 1, diagnostics).map_or(1, |i| i as u64),
            None => {
                diagnostics.push(bad_value(
                    e.span,
                    format!("`{name}` needs its `{key}`"),
                    hint,
                ));
                1
            }
        }
    };
    let fraction = |key: &str, default: f64, diagnostics: &mut Vec<Diagnostic>| -> f64 {
        match args.get(key).map(|v| (number(v), v.span)) {
            None => default,
            Some((Some(x), _)) if (0.0..=1.0).contains(&x) => x,
            Some((_, span)) => {
                diagnostics.push(bad_value(
                    span,
                    format!("`{key}` is a fraction of the learning rate, from 0 to 1"),
                    hint,
                ));
                default
            }
        }
    };
    let schedule = match name {
        "warmup" => LrSchedule::Warmup {
            steps: count("steps", diagnostics),
        },
        "step" => LrSchedule::Step {
            every: count("every", diagnostics),
            factor: fraction("factor", 0.1, diagnostics),
        },
        _ => {
            let warmup = if name == "warmup_cosine" {
                count("warmup", diagnostics)
            } else {
                0
            };
            let steps = count("steps", diagnostics);
            if steps <= warmup {
                diagnostics.push(bad_value(
                    e.span,
                    format!("the cosine ends at step {steps}, not after its warm-up of {warmup}"),
                    hint,
                ));
            }
            LrSchedule::WarmupCosine {
                warmup,
                steps,
                end: fraction("end", 0.0, diagnostics),
            }
        }
    };
    (diagnostics.len() == before).then_some(schedule)
}

/// A number in (0, 1): a relative tolerance.
fn tolerance(e: &ast::Expr, diagnostics: &mut Vec<Diagnostic>) -> Option<f64> {
    match number(e) {
        Some(x) if x > 0.0 && x < 1.0 => Some(x),
        _ => {
            diagnostics.push(bad_value(
                e.span,
                "expected a relative change between 0 and 1 (not including either)",
                "e.g. `tol = 1e-6`",
            ));
            None
        }
    }
}

/// A number in [0, 1): a momentum.
fn fraction(e: &ast::Expr, diagnostics: &mut Vec<Diagnostic>) -> Option<f64> {
    match number(e) {
        Some(x) if (0.0..1.0).contains(&x) => Some(x),
        _ => {
            diagnostics.push(bad_value(
                e.span,
                "expected a number from 0 up to (not including) 1",
                "e.g. `momentum = 0.9`",
            ));
            None
        }
    }
}

fn word(
    e: &ast::Expr,
    choices: &[&str],
    what: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<String> {
    if let ExprKind::Name(id) = &e.kind {
        if choices.contains(&id.name.as_str()) {
            return Some(id.name.clone());
        }
    }
    let mut d = bad_value(
        e.span,
        format!("`{}` is not a valid {what}", describe(e)),
        format!("choose one of: {}", choices.join(", ")),
    );
    if let ExprKind::Name(id) = &e.kind {
        if let Some(s) = closest(&id.name, choices.iter().copied()) {
            d = d.with_note(format!("did you mean `{s}`?"));
        }
    }
    diagnostics.push(d);
    None
}

fn describe(e: &ast::Expr) -> String {
    match &e.kind {
        ExprKind::Name(id) => id.name.clone(),
        ExprKind::Int(i) => i.to_string(),
        ExprKind::Float(x) => x.to_string(),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Call { callee, .. } => format!("{}(...)", callee.name),
        _ => "this expression".to_string(),
    }
}

/// Keyword arguments of a call in a train value, checked against the allowed names. The first
/// `positional` parameters may also be given by position.
fn call_args<'a>(
    e: &'a ast::Expr,
    allowed: &[&str],
    positional: usize,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<BTreeMap<String, &'a ast::Expr>> {
    let ExprKind::Call { callee, args } = &e.kind else {
        return Some(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (i, a) in args.iter().enumerate() {
        let key = match &a.name {
            Some(n) => n.name.clone(),
            None if i < positional => allowed[i].to_string(),
            None => {
                diagnostics.push(bad_value(
                    a.value.span,
                    format!("`{}` takes named arguments here", callee.name),
                    format!("valid arguments: {}", allowed.join(", ")),
                ));
                ok = false;
                continue;
            }
        };
        if !allowed.contains(&key.as_str()) {
            let span = a.name.as_ref().map_or(a.value.span, |n| n.span);
            diagnostics.push(unknown_key(
                &key,
                span,
                allowed,
                &format!("`{}`", callee.name),
            ));
            ok = false;
            continue;
        }
        out.insert(key, &a.value);
    }
    ok.then_some(out)
}

/// The data set of a `data = ...` entry, read by the data module's own spec parser.
fn data(e: &ast::Expr, diagnostics: &mut Vec<Diagnostic>) -> Option<DataSpec> {
    let (name, args): (&str, &[ast::Arg]) = match &e.kind {
        ExprKind::Name(id) => (id.name.as_str(), &[]),
        ExprKind::Call { callee, args } => (callee.name.as_str(), args.as_slice()),
        _ => {
            diagnostics.push(bad_value(
                e.span,
                "expected a data set",
                "e.g. `digits`, `fmnist`, `shakespeare(seq = 50)`, `npz(\"f.npz\")`",
            ));
            return None;
        }
    };
    let mut spec_args = Vec::new();
    for a in args {
        let value = match &a.value.kind {
            ExprKind::Int(i) => SpecValue::Int(*i),
            ExprKind::Float(x) => SpecValue::Float(*x),
            ExprKind::Str(s) => SpecValue::Str(s.clone()),
            _ => {
                diagnostics.push(bad_value(
                    a.value.span,
                    "data set arguments are numbers or strings",
                    "e.g. `shakespeare(seq = 50)`",
                ));
                return None;
            }
        };
        spec_args.push(SpecArg {
            name: a.name.as_ref().map(|n| n.name.clone()),
            value,
        });
    }
    match DataSpec::from_call(name, &spec_args) {
        Ok(spec) => Some(spec),
        Err(err) => {
            diagnostics.push(bad_value(e.span, err.to_string(), "data sets: digits, mnist5k, fmnist, shakespeare(seq = N), npz(\"file.npz\"), csv(\"file.csv\")"));
            None
        }
    }
}

/// `clamp`, `nudge(beta = β)` or `centered(beta = β)`, β a non-zero number (negative:
/// nudging away).
fn target(e: &ast::Expr, diagnostics: &mut Vec<Diagnostic>) -> Option<Target> {
    let hint =
        "write `target = clamp`, `target = nudge(beta = 0.1)` or `target = centered(beta = 0.1)`";
    match &e.kind {
        ExprKind::Name(id) if id.name == "clamp" => Some(Target::Clamp),
        ExprKind::Call { callee, .. } if callee.name == "nudge" || callee.name == "centered" => {
            let args = call_args(e, &["beta"], 1, diagnostics)?;
            let Some(v) = args.get("beta") else {
                diagnostics.push(bad_value(
                    e.span,
                    format!("`{}` needs its `beta`", callee.name),
                    hint,
                ));
                return None;
            };
            match number(v) {
                Some(beta) if beta != 0.0 && beta.is_finite() => Some(if callee.name == "nudge" {
                    Target::Nudge(beta)
                } else {
                    Target::Centered(beta)
                }),
                _ => {
                    diagnostics.push(bad_value(
                        v.span,
                        "`beta` must be a non-zero number",
                        "e.g. `nudge(beta = 0.1)`, or `nudge(beta = -0.1)` to nudge away",
                    ));
                    None
                }
            }
        }
        _ => {
            diagnostics.push(bad_value(
                e.span,
                format!("`{}` is not a valid target", describe(e)),
                hint,
            ));
            None
        }
    }
}

fn optimizer(e: &ast::Expr, diagnostics: &mut Vec<Diagnostic>) -> Option<OptimizerConfig> {
    let name = match &e.kind {
        ExprKind::Name(id) => id.name.as_str(),
        ExprKind::Call { callee, .. } => callee.name.as_str(),
        _ => "",
    };
    let get = |args: &BTreeMap<String, &ast::Expr>,
               key: &str,
               default: f64,
               diagnostics: &mut Vec<Diagnostic>,
               nonneg: bool|
     -> Option<f64> {
        match args.get(key) {
            None => Some(default),
            Some(v) => match number(v) {
                Some(x) if x.is_finite() && (x > 0.0 || (nonneg && x == 0.0)) => Some(x),
                _ => {
                    diagnostics.push(bad_value(
                        v.span,
                        format!(
                            "`{key}` must be a {} number",
                            if nonneg { "non-negative" } else { "positive" }
                        ),
                        "e.g. `sgd(lr = 0.01, momentum = 0.9)`",
                    ));
                    None
                }
            },
        }
    };
    match name {
        "sgd" => {
            let args = call_args(e, &["lr", "momentum", "weight_decay"], 1, diagnostics)?;
            let lr = get(&args, "lr", 0.01, diagnostics, false)?;
            let momentum = get(&args, "momentum", 0.0, diagnostics, true)?;
            if momentum >= 1.0 {
                diagnostics.push(bad_value(
                    e.span,
                    "momentum must be below 1",
                    "e.g. `momentum = 0.9`",
                ));
                return None;
            }
            let weight_decay = get(&args, "weight_decay", 0.0, diagnostics, true)?;
            Some(OptimizerConfig::Sgd {
                lr,
                momentum,
                weight_decay,
            })
        }
        "adam" => {
            let args = call_args(
                e,
                &["lr", "beta1", "beta2", "eps", "weight_decay"],
                1,
                diagnostics,
            )?;
            let lr = get(&args, "lr", 1e-3, diagnostics, false)?;
            let beta1 = get(&args, "beta1", 0.9, diagnostics, true)?;
            let beta2 = get(&args, "beta2", 0.999, diagnostics, true)?;
            let eps = get(&args, "eps", 1e-8, diagnostics, false)?;
            let weight_decay = get(&args, "weight_decay", 0.0, diagnostics, true)?;
            if beta1 >= 1.0 || beta2 >= 1.0 {
                diagnostics.push(bad_value(
                    e.span,
                    "beta1 and beta2 must be below 1",
                    "e.g. `adam(lr = 1e-3, beta1 = 0.9, beta2 = 0.999)`",
                ));
                return None;
            }
            Some(OptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            })
        }
        _ => {
            word(e, &["sgd", "adam"], "optimizer", diagnostics);
            None
        }
    }
}

/// A block of positive numbers by named node: `precision { h1 = 2.0 }`, `rates { h1 = 0.05 }`.
fn per_node(
    item: &ast::TrainEntry,
    key: &str,
    example: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Vec<(String, f64)>> {
    let TrainValue::Block(items, _) = &item.value else {
        diagnostics.push(bad_value(
            item.span,
            format!("`{key}` takes a block"),
            format!("write `{key} {{ h1 = {example} }}`"),
        ));
        return None;
    };
    Some(
        items
            .iter()
            .filter_map(|p| {
                let value = expr(p, diagnostics).and_then(|e| positive(e, diagnostics))?;
                Some((p.key.name.clone(), value))
            })
            .collect(),
    )
}

/// The inference block's `optimizer`: `sgd`, `sgd(momentum = m)`, `nesterov(momentum = m)` or
/// `adam(beta1 = .., beta2 = .., eps = ..)`, with the momentum it gives (if any).
fn state_optimizer(
    e: &ast::Expr,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<(StateOptimizer, Option<f64>)> {
    let choices = ["sgd", "nesterov", "adam"];
    let (name, is_call) = match &e.kind {
        ExprKind::Name(id) => (id.name.as_str(), false),
        ExprKind::Call { callee, .. } => (callee.name.as_str(), true),
        _ => ("", false),
    };
    let hint = "e.g. `optimizer = nesterov(momentum = 0.9)` or `optimizer = adam(beta1 = 0.9, beta2 = 0.999, eps = 1e-8)`";
    let fraction_of = |args: &BTreeMap<String, &ast::Expr>,
                       key: &str,
                       diagnostics: &mut Vec<Diagnostic>|
     -> Option<Option<f64>> {
        match args.get(key) {
            None => Some(None),
            Some(v) => match number(v) {
                Some(x) if (0.0..1.0).contains(&x) => Some(Some(x)),
                _ => {
                    diagnostics.push(bad_value(
                        v.span,
                        format!("`{key}` must be a number from 0 up to (not including) 1"),
                        hint,
                    ));
                    None
                }
            },
        }
    };
    match name {
        "sgd" | "nesterov" => {
            let momentum = if is_call {
                let args = call_args(e, &["momentum"], 1, diagnostics)?;
                fraction_of(&args, "momentum", diagnostics)?
            } else {
                None
            };
            let optimizer = if name == "sgd" {
                StateOptimizer::Sgd
            } else {
                StateOptimizer::Nesterov
            };
            Some((optimizer, momentum))
        }
        "adam" => {
            let (mut beta1, mut beta2, mut eps) = (0.9, 0.999, 1e-8);
            if is_call {
                let args = call_args(e, &["beta1", "beta2", "eps"], 1, diagnostics)?;
                beta1 = fraction_of(&args, "beta1", diagnostics)?.unwrap_or(beta1);
                beta2 = fraction_of(&args, "beta2", diagnostics)?.unwrap_or(beta2);
                if let Some(v) = args.get("eps") {
                    eps = positive(v, diagnostics)?;
                }
            }
            Some((StateOptimizer::Adam { beta1, beta2, eps }, None))
        }
        _ => {
            word(e, &choices, "state optimiser", diagnostics);
            None
        }
    }
}

fn inference(
    entry: &ast::TrainEntry,
    cfg: &mut InferenceConfig,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let TrainValue::Block(entries, _) = &entry.value else {
        if let TrainValue::Expr(e) = &entry.value {
            diagnostics.push(bad_value(
                e.span,
                "`inference` takes a block",
                "write `inference { mode = fixed, steps = 20, rate = 0.1 }`",
            ));
        }
        return;
    };
    let mut seen = BTreeMap::new();
    let mut incremental_at = None;
    let mut tol_at = None;
    let mut momentum_at = None;
    for item in entries {
        if !note_key(&mut seen, item, diagnostics) {
            continue;
        }
        match item.key.name.as_str() {
            "mode" => {
                if let Some(w) = expr(item, diagnostics).and_then(|e| {
                    word(
                        e,
                        &["fixed", "strict", "exact", "epc"],
                        "inference mode",
                        diagnostics,
                    )
                }) {
                    cfg.mode = match w.as_str() {
                        "fixed" => Mode::Fixed,
                        "strict" => Mode::Strict,
                        "epc" => Mode::Epc,
                        _ => Mode::Exact,
                    };
                }
            }
            "steps" => {
                if let Some(v) = expr(item, diagnostics).and_then(|e| integer(e, 1, diagnostics)) {
                    cfg.steps = v as usize;
                }
            }
            "rate" => {
                if let Some(v) = expr(item, diagnostics).and_then(|e| positive(e, diagnostics)) {
                    cfg.rate = v;
                }
            }
            "momentum" => {
                if let Some(v) = expr(item, diagnostics).and_then(|e| fraction(e, diagnostics)) {
                    cfg.momentum = v;
                    if v > 0.0 {
                        momentum_at = Some(item.span);
                    }
                }
            }
            "target" => {
                if let Some(t) = expr(item, diagnostics).and_then(|e| target(e, diagnostics)) {
                    cfg.target = t;
                }
            }
            "schedule" => {
                if let Some(w) = expr(item, diagnostics)
                    .and_then(|e| word(e, &["standard", "incremental"], "schedule", diagnostics))
                {
                    cfg.schedule = if w == "incremental" {
                        incremental_at = Some(item.span);
                        Schedule::Incremental
                    } else {
                        Schedule::Standard
                    };
                }
            }
            "tol" => {
                if let Some(v) = expr(item, diagnostics).and_then(|e| tolerance(e, diagnostics)) {
                    cfg.tol = Some(v);
                    tol_at = Some(item.span);
                }
            }
            "nodes" => {
                if let Some(w) = expr(item, diagnostics)
                    .and_then(|e| word(e, &["named", "all"], "node granularity", diagnostics))
                {
                    cfg.nodes = if w == "all" {
                        NodeGranularity::All
                    } else {
                        NodeGranularity::Named
                    };
                }
            }
            "precision" => {
                if let Some(given) = per_node(item, "precision", "2.0", diagnostics) {
                    cfg.precision.extend(given);
                }
            }
            "rates" => {
                if let Some(given) = per_node(item, "rates", "0.05", diagnostics) {
                    cfg.rates.extend(given);
                }
            }
            "optimizer" => {
                if let Some((optimizer, momentum)) =
                    expr(item, diagnostics).and_then(|e| state_optimizer(e, diagnostics))
                {
                    cfg.optimizer = optimizer;
                    if let Some(m) = momentum {
                        if momentum_at.is_some() && m != cfg.momentum {
                            diagnostics.push(bad_value(
                                item.span,
                                "the momentum is given twice, with two values",
                                "give it once, in the optimizer: `optimizer = nesterov(momentum = 0.9)`",
                            ));
                        }
                        cfg.momentum = m;
                        if m > 0.0 {
                            momentum_at = Some(item.span);
                        }
                    }
                    if matches!(optimizer, StateOptimizer::Adam { .. }) {
                        momentum_at = Some(item.span);
                    }
                }
            }
            "clip" => {
                if let Some(v) = expr(item, diagnostics).and_then(|e| positive(e, diagnostics)) {
                    cfg.clip = Some(v);
                }
            }
            "energy" => {
                if let Some(w) = expr(item, diagnostics)
                    .and_then(|e| word(e, &["sum", "mean"], "energy reduction", diagnostics))
                {
                    cfg.energy = if w == "mean" {
                        EnergyReduction::Mean
                    } else {
                        EnergyReduction::Sum
                    };
                }
            }
            other => diagnostics.push(unknown_key(
                other,
                item.key.span,
                INFERENCE_KEYS,
                "inference",
            )),
        }
    }
    if let (Some(span), Mode::Exact) = (tol_at, cfg.mode) {
        diagnostics.push(bad_value(
            span,
            "`tol` has no meaning in exact mode: its relaxation is exact after as many steps as the graph is deep",
            "use `mode = fixed` or `mode = strict` with `tol`",
        ));
    }
    if let (Some(span), Mode::Exact) = (momentum_at, cfg.mode) {
        diagnostics.push(bad_value(
            span,
            "a state optimiser with momentum has no meaning in exact mode: its steps are the reverse sweep",
            "use `mode = fixed`, `strict` or `epc` with it",
        ));
    }
    if let (Some(span), Mode::Exact) = (incremental_at, cfg.mode) {
        diagnostics.push(bad_value(
            span,
            "the incremental schedule has no meaning in exact mode: its steps are the reverse sweep, with the parameters fixed",
            "use `mode = fixed` or `mode = strict` with `schedule = incremental`",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::LrSchedule;

    #[test]
    fn schedules_give_their_factors() {
        let warm = LrSchedule::WarmupCosine {
            warmup: 10,
            steps: 110,
            end: 0.1,
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(warm.factor(1), 0.1));
        assert!(close(warm.factor(5), 0.5));
        assert!(close(warm.factor(10), 1.0));
        // Half way down the cosine: the mean of 1 and the end.
        assert!(close(warm.factor(60), 0.55));
        assert!(close(warm.factor(110), 0.1));
        assert!(close(warm.factor(1000), 0.1));
        let cosine = LrSchedule::WarmupCosine {
            warmup: 0,
            steps: 4,
            end: 0.0,
        };
        assert!(close(cosine.factor(2), 0.5));
        let warmup = LrSchedule::Warmup { steps: 4 };
        assert!(close(warmup.factor(2), 0.5) && close(warmup.factor(9), 1.0));
        let step = LrSchedule::Step {
            every: 3,
            factor: 0.5,
        };
        let factors: Vec<f64> = (1..=7).map(|t| step.factor(t)).collect();
        assert_eq!(factors, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]);
    }
}
