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
}

impl Mode {
    /// The mode's keyword in `.pcg` files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fixed => "fixed",
            Mode::Strict => "strict",
            Mode::Exact => "exact",
        }
    }
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
        for (node, &p) in &self.precision {
            if !(p.is_finite() && p > 0.0) {
                return Err(format!(
                    "the precision of `{node}`, {p}, is not a positive number"
                ));
            }
            cfg.precision.insert(node.clone(), p);
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

#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub data: Option<DataSpec>,
    pub method: Method,
    pub inference: InferenceConfig,
    pub optimizer: OptimizerConfig,
    /// Clip each parameter's update to this L2 norm.
    pub clip: Option<f64>,
    pub batch: usize,
    pub epochs: usize,
    pub seed: u64,
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
        batch: 32,
        epochs: 1,
        seed: 0,
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
            "clip" => cfg.clip = expr(entry, diagnostics).and_then(|e| positive(e, diagnostics)),
            other => diagnostics.push(unknown_key(other, entry.key.span, KEYS, "train")),
        }
    }
    cfg
}

/// Checks what needs the compiled model: precision keys must name PC nodes.
pub fn check_against_model(
    cfg: &TrainConfig,
    def: &ast::TrainDef,
    forward: &Program,
    diagnostics: &mut Vec<Diagnostic>,
) {
    if cfg.inference.precision.is_empty() {
        return;
    }
    let names: Vec<&str> = forward
        .nodes
        .iter()
        .filter_map(|n| n.name.as_deref())
        .collect();
    for entry in &def.entries {
        let TrainValue::Block(inner, _) = &entry.value else {
            continue;
        };
        for e in inner.iter().filter(|e| e.key.name == "precision") {
            let TrainValue::Block(items, _) = &e.value else {
                continue;
            };
            for item in items {
                if !names.contains(&item.key.name.as_str()) {
                    let mut d = Diagnostic::new(
                        ErrorKind::BadTrainValue,
                        format!(
                            "precision for `{}`, which is not a named value of the model",
                            item.key.name
                        ),
                        item.key.span,
                        "no such node",
                    );
                    if let Some(s) = closest(&item.key.name, names.iter().copied()) {
                        d = d.with_help(format!("did you mean `{s}`?"));
                    }
                    diagnostics.push(d);
                }
            }
        }
    }
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
    match &e.kind {
        ExprKind::Int(i) if *i >= min => Some(*i),
        _ => {
            diagnostics.push(bad_value(
                e.span,
                format!("expected an integer of at least {min}"),
                "write a whole number, without a decimal point",
            ));
            None
        }
    }
}

fn positive(e: &ast::Expr, diagnostics: &mut Vec<Diagnostic>) -> Option<f64> {
    match number(e) {
        Some(x) if x > 0.0 && x.is_finite() => Some(x),
        _ => {
            diagnostics.push(bad_value(
                e.span,
                "expected a positive number",
                "e.g. `0.1`",
            ));
            None
        }
    }
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
    for item in entries {
        if !note_key(&mut seen, item, diagnostics) {
            continue;
        }
        match item.key.name.as_str() {
            "mode" => {
                if let Some(w) = expr(item, diagnostics).and_then(|e| {
                    word(
                        e,
                        &["fixed", "strict", "exact"],
                        "inference mode",
                        diagnostics,
                    )
                }) {
                    cfg.mode = match w.as_str() {
                        "fixed" => Mode::Fixed,
                        "strict" => Mode::Strict,
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
                let TrainValue::Block(items, span) = &item.value else {
                    diagnostics.push(bad_value(
                        item.span,
                        "`precision` takes a block",
                        "write `precision { h1 = 2.0 }`",
                    ));
                    continue;
                };
                let _ = span;
                for p in items {
                    let value = expr(p, diagnostics).and_then(|e| positive(e, diagnostics));
                    if let Some(v) = value {
                        cfg.precision.insert(p.key.name.clone(), v);
                    }
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
    if let (Some(span), Mode::Exact) = (incremental_at, cfg.mode) {
        diagnostics.push(bad_value(
            span,
            "the incremental schedule has no meaning in exact mode: its steps are the reverse sweep, with the parameters fixed",
            "use `mode = fixed` or `mode = strict` with `schedule = incremental`",
        ));
    }
}
