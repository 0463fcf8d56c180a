//! Semantic analysis: from parsed files to a verified forward IR program.
//!
//! This stage owns everything between the AST and the IR: loading `use`d modules (the
//! embedded stdlib and the user's own files), collecting the global definitions of all loaded
//! files, binding dimension variables (`B` from the train block's `batch` or a CLI flag),
//! inlining functions, `for` loops as structured loops (or unrolled), static shape checking and lowering to IR
//! (`lower`), and checking the `train` block (`train`). Errors are collected as diagnostics and
//! analysis carries on past them where it can, so one run reports as much as possible.

mod builtins;
mod loops;
mod lower;
pub mod symbols;
pub mod train;
mod value;

pub use builtins::signature as builtin_signature;
/// The names of every builtin function.
pub use builtins::NAMES as BUILTINS;
pub use train::{
    DataSpec, Dtype, EnergyReduction, InferenceConfig, InferenceOverrides, LrSchedule, LrTuning,
    Method, Mode, NodeGranularity, OptimizerConfig, Schedule, StateOptimizer, Target, TrainConfig,
};

use crate::diag::{Diagnostic, ErrorKind};
use crate::ir::{self, Program};
use crate::source::{FileId, Sources, Span};
use crate::syntax::{self, ast};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The stdlib modules, written in `.pcg` and embedded in the binary.
pub const STDLIB: &[(&str, &str)] = &[
    ("nn", include_str!("../../stdlib/nn.pcg")),
    ("conv", include_str!("../../stdlib/conv.pcg")),
    ("rnn", include_str!("../../stdlib/rnn.pcg")),
    ("lstm", include_str!("../../stdlib/lstm.pcg")),
    ("transformer", include_str!("../../stdlib/transformer.pcg")),
];

/// Choices that come from the command line rather than the file.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Which model to compile when the file defines several.
    pub model: Option<String>,
    /// Overrides the train block's batch size (binds `B`).
    pub batch: Option<usize>,
    /// Extra dimension bindings (`--dim T=50`).
    pub dims: BTreeMap<String, usize>,
    /// How `for` loops are compiled (`--loops`).
    pub loops: LoopPolicy,
}

/// How `for` loops are compiled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoopPolicy {
    /// A loop is a scan, unless it is small (unrolled, at most [`AUTO_UNROLL_NODES`] nodes),
    /// or its body needs the index as a number (a shape, a slice bound).
    #[default]
    Auto,
    /// Every loop that can be a scan is one, however short.
    Scan,
    /// Every loop is unrolled into straight-line code, one copy of its body per iteration.
    Unroll,
}

/// A loop whose unrolled form has at most this many nodes (iterations × the body's nodes)
/// unrolls under [`LoopPolicy::Auto`]. Measured by `scripts/scale.sh` on a 2-vCPU Xeon
/// (AVX-512): unrolled steps were up to 2x faster than the scan's (lstm_shakespeare, 50 × 47
/// nodes: BP 9.1 against 18.5 ms, PC 185 against 235 ms; resnet_deep, 256 × 13 nodes: BP 6.0
/// against 9.2 ms) for a compile time of 0.3–1.3 s; past a few thousand nodes compile time and
/// memory grow with the iterations (the LSTM at 200 steps, 9400 nodes: 5.8 s and 465 MB
/// unrolled against 0.03 s and 82 MB as a scan), so longer loops stay scans. Since scans whose
/// rows are independent run as parts per thread, backprop's step is faster as a scan (the
/// LSTM at 50 steps: 5.4 against 6.8 ms) while the LSTM's fixed-mode PC was still faster
/// unrolled (196 against 236 ms), so the policy stays, except for loops over a sequence
/// (`loops::SEQUENCE_SCAN_TRIPS`), whose scans have since become the faster form.
pub const AUTO_UNROLL_NODES: usize = 4096;

/// How one `for` loop of the model was compiled, for `pcg ir` and `pcg check --report`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoopNote {
    /// The loop's `for` header.
    pub span: Span,
    /// Its source line (1-based), once known.
    pub line: usize,
    pub var: String,
    pub trips: usize,
    /// Kept as one scan (else unrolled).
    pub scan: bool,
    /// Why it was unrolled, or kept.
    pub why: String,
}

impl LoopNote {
    /// `loop `for t` (line 20, 50 iterations): a scan — ...`
    pub fn describe(&self) -> String {
        format!(
            "loop `for {}` (line {}, {} iteration{}): {}, {}",
            self.var,
            self.line,
            self.trips,
            if self.trips == 1 { "" } else { "s" },
            if self.scan { "a scan" } else { "unrolled" },
            self.why
        )
    }
}

/// A compiled model: its forward program and, if the file has one, its train block.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub model_name: String,
    /// The forward program: outputs `loss` (the sum of the loss terms).
    pub forward: Program,
    pub train: Option<TrainConfig>,
    /// How each `for` loop was compiled, in source order.
    pub loops: Vec<LoopNote>,
    /// The `frozen` tensors: parameters of the programs, loaded and saved with the others,
    /// that no optimiser updates.
    pub frozen: Vec<String>,
}

/// Global definitions gathered from the root file and everything it imports.
#[derive(Default)]
pub(crate) struct Globals {
    pub fns: HashMap<String, ast::FnDef>,
    pub consts: Vec<ast::ConstDef>,
    pub models: Vec<ast::ModelDef>,
    pub trains: Vec<ast::TrainDef>,
}

/// Reads, parses and analyses `path` and every model it defines (for `pcg check`).
pub fn check_file(
    path: &Path,
    options: &CompileOptions,
) -> (Sources, Result<Vec<Compiled>, Vec<Diagnostic>>) {
    let mut sources = Sources::new();
    let result =
        read_root(&mut sources, path).and_then(|root| check_all(&mut sources, root, path, options));
    (sources, result)
}

/// Reads, parses and analyses the model of `path` chosen by `options`.
pub fn compile_file(
    path: &Path,
    options: &CompileOptions,
) -> (Sources, Result<Compiled, Vec<Diagnostic>>) {
    let mut sources = Sources::new();
    let result = read_root(&mut sources, path)
        .and_then(|root| compile_root(&mut sources, root, path, options));
    (sources, result)
}

/// Analyses source text as if read from `name` (imports resolve relative to its directory).
pub fn compile_source(
    name: &str,
    text: &str,
    options: &CompileOptions,
) -> (Sources, Result<Compiled, Vec<Diagnostic>>) {
    let mut sources = Sources::new();
    let root = sources.add(name, text);
    let result = compile_root(&mut sources, root, Path::new(name), options);
    (sources, result)
}

/// Analyses every model of source text (what `pcg check` does for a file).
pub fn check_source(
    name: &str,
    text: &str,
    options: &CompileOptions,
) -> (Sources, Result<Vec<Compiled>, Vec<Diagnostic>>) {
    let mut sources = Sources::new();
    let root = sources.add(name, text);
    let result = check_all(&mut sources, root, Path::new(name), options);
    (sources, result)
}

fn read_root(sources: &mut Sources, path: &Path) -> Result<FileId, Vec<Diagnostic>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(sources.add(path.display().to_string(), text)),
        Err(e) => {
            let file = sources.add(path.display().to_string(), String::new());
            Err(vec![Diagnostic::new(
                ErrorKind::ImportFailed,
                format!("cannot read `{}`: {e}", path.display()),
                Span::new(file, 0, 0),
                "",
            )])
        }
    }
}

fn compile_root(
    sources: &mut Sources,
    root: FileId,
    path: &Path,
    options: &CompileOptions,
) -> Result<Compiled, Vec<Diagnostic>> {
    let (globals, mut diagnostics) = load(sources, root, path);
    let picked = pick_model(&globals, root, options);
    let compiled = match picked {
        Ok(model) => analyse_model(&globals, model, options, &mut diagnostics)
            .map(|c| with_lines(sources, c)),
        Err(d) => {
            diagnostics.push(d);
            None
        }
    };
    check_orphan_trains(&globals, &mut diagnostics);
    match compiled {
        Some(c) if diagnostics.is_empty() => Ok(c),
        _ => Err(diagnostics),
    }
}

fn check_all(
    sources: &mut Sources,
    root: FileId,
    path: &Path,
    options: &CompileOptions,
) -> Result<Vec<Compiled>, Vec<Diagnostic>> {
    let (globals, mut diagnostics) = load(sources, root, path);
    let mut compiled = Vec::new();
    let roots: Vec<&ast::ModelDef> = globals
        .models
        .iter()
        .filter(|m| m.span.file == root)
        .collect();
    if roots.is_empty() && options.model.is_none() {
        // A library file (only functions and constants) is fine to check on its own.
        return if diagnostics.is_empty() {
            Ok(compiled)
        } else {
            Err(diagnostics)
        };
    }
    let chosen: Vec<&ast::ModelDef> = match &options.model {
        Some(_) => match pick_model(&globals, root, options) {
            Ok(m) => vec![m],
            Err(d) => {
                diagnostics.push(d);
                vec![]
            }
        },
        None => roots,
    };
    for model in chosen {
        if let Some(c) = analyse_model(&globals, model, options, &mut diagnostics) {
            compiled.push(with_lines(sources, c));
        }
    }
    check_orphan_trains(&globals, &mut diagnostics);
    if diagnostics.is_empty() {
        Ok(compiled)
    } else {
        Err(diagnostics)
    }
}

/// Fills in the source line of each loop note.
fn with_lines(sources: &Sources, mut compiled: Compiled) -> Compiled {
    for note in &mut compiled.loops {
        let text = sources.text(note.span.file);
        let at = (note.span.start as usize).min(text.len());
        note.line = text[..at].matches('\n').count() + 1;
    }
    compiled
}

/// Parses the root file and, transitively, every module it uses. Each file is parsed once;
/// definitions of all files share one global namespace.
fn load(sources: &mut Sources, root: FileId, root_path: &Path) -> (Globals, Vec<Diagnostic>) {
    let mut globals = Globals::default();
    let mut diagnostics = Vec::new();
    // (file id, directory that its relative imports resolve against)
    let mut queue: Vec<(FileId, Option<PathBuf>)> =
        vec![(root, root_path.parent().map(Path::to_path_buf))];
    let mut loaded: HashMap<String, FileId> = HashMap::new();
    loaded.insert(format!("file:{}", canonical(root_path)), root);
    let mut defined: HashMap<String, Span> = HashMap::new();
    while let Some((file, dir)) = queue.pop() {
        let text = sources.text(file).to_string();
        let (module, errors) = syntax::parse(file, &text);
        diagnostics.extend(errors);
        for item in module.items {
            match item {
                ast::Item::Use(u) => {
                    let (key, name, text, next_dir) = match &u.target {
                        ast::UseTarget::Module(id) => {
                            let Some((_, text)) = STDLIB.iter().find(|(n, _)| *n == id.name) else {
                                let names: Vec<&str> = STDLIB.iter().map(|(n, _)| *n).collect();
                                diagnostics.push(
                                    Diagnostic::new(
                                        ErrorKind::UnknownModule,
                                        format!("there is no stdlib module `{}`", id.name),
                                        id.span,
                                        "unknown module",
                                    )
                                    .with_help(format!(
                                        "the stdlib has {}; to use a file write `use \"{}.pcg\"`",
                                        names.join(", "),
                                        id.name
                                    )),
                                );
                                continue;
                            };
                            (
                                format!("std:{}", id.name),
                                format!("<stdlib>/{}.pcg", id.name),
                                text.to_string(),
                                None,
                            )
                        }
                        ast::UseTarget::File(rel) => {
                            let path = match &dir {
                                Some(d) => d.join(rel),
                                None => PathBuf::from(rel),
                            };
                            let key = format!("file:{}", canonical(&path));
                            if loaded.contains_key(&key) {
                                continue;
                            }
                            match std::fs::read_to_string(&path) {
                                Ok(text) => (
                                    key,
                                    path.display().to_string(),
                                    text,
                                    path.parent().map(Path::to_path_buf),
                                ),
                                Err(e) => {
                                    diagnostics.push(
                                        Diagnostic::new(
                                            ErrorKind::ImportFailed,
                                            format!("cannot read `{}`: {e}", path.display()),
                                            u.span,
                                            "imported here",
                                        )
                                        .with_help(
                                            "file imports are relative to the importing file",
                                        ),
                                    );
                                    continue;
                                }
                            }
                        }
                    };
                    if loaded.contains_key(&key) {
                        continue;
                    }
                    let id = sources.add(name, text);
                    loaded.insert(key, id);
                    queue.push((id, next_dir));
                }
                ast::Item::Const(c) => {
                    if note_definition(&mut defined, &c.name, &mut diagnostics) {
                        globals.consts.push(c);
                    }
                }
                ast::Item::Fn(f) => {
                    if builtins::is_builtin(&f.name.name) {
                        diagnostics.push(
                            Diagnostic::new(
                                ErrorKind::DuplicateDefinition,
                                format!(
                                    "`{}` is a builtin function and cannot be redefined",
                                    f.name.name
                                ),
                                f.name.span,
                                "redefined here",
                            )
                            .with_help("choose another name"),
                        );
                        continue;
                    }
                    if note_definition(&mut defined, &f.name, &mut diagnostics) {
                        globals.fns.insert(f.name.name.clone(), f);
                    }
                }
                ast::Item::Model(m) => {
                    if note_definition(&mut defined, &m.name, &mut diagnostics) {
                        globals.models.push(m);
                    }
                }
                ast::Item::Train(t) => globals.trains.push(t),
            }
        }
    }
    (globals, diagnostics)
}

fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Records a global definition; reports a duplicate and returns false if the name is taken.
fn note_definition(
    defined: &mut HashMap<String, Span>,
    name: &ast::Ident,
    diagnostics: &mut Vec<Diagnostic>,
) -> bool {
    if let Some(first) = defined.get(&name.name) {
        diagnostics.push(
            Diagnostic::new(
                ErrorKind::DuplicateDefinition,
                format!("`{}` is defined twice", name.name),
                name.span,
                "defined again here",
            )
            .with_label(*first, "first defined here")
            .with_help("rename one of the definitions"),
        );
        false
    } else {
        defined.insert(name.name.clone(), name.span);
        true
    }
}

fn pick_model<'g>(
    globals: &'g Globals,
    root: FileId,
    options: &CompileOptions,
) -> Result<&'g ast::ModelDef, Diagnostic> {
    let root_span = Span::new(root, 0, 0);
    if let Some(name) = &options.model {
        return globals
            .models
            .iter()
            .find(|m| &m.name.name == name)
            .ok_or_else(|| {
                Diagnostic::new(
                    ErrorKind::UnknownModel,
                    format!("no model named `{name}`"),
                    root_span,
                    "",
                )
                .with_help(model_list(globals))
            });
    }
    // The model of the root file's train block, else the root file's only model.
    let trained: Vec<&ast::TrainDef> = globals
        .trains
        .iter()
        .filter(|t| t.span.file == root)
        .collect();
    if let [train] = trained.as_slice() {
        if let Some(m) = globals
            .models
            .iter()
            .find(|m| m.name.name == train.model.name)
        {
            return Ok(m);
        }
    }
    let roots: Vec<&ast::ModelDef> = globals
        .models
        .iter()
        .filter(|m| m.span.file == root)
        .collect();
    match roots.as_slice() {
        [one] => Ok(one),
        [] => Err(Diagnostic::new(
            ErrorKind::UnknownModel,
            "this file defines no model",
            root_span,
            "",
        )
        .with_help("a model is written `model name { ... }`")),
        _ => Err(Diagnostic::new(
            ErrorKind::UnknownModel,
            "this file defines several models; choose one with --model",
            root_span,
            "",
        )
        .with_help(model_list(globals))),
    }
}

fn model_list(globals: &Globals) -> String {
    let names: Vec<&str> = globals
        .models
        .iter()
        .map(|m| m.name.name.as_str())
        .collect();
    if names.is_empty() {
        "no model is defined".to_string()
    } else {
        format!("defined models: {}", names.join(", "))
    }
}

fn check_orphan_trains(globals: &Globals, diagnostics: &mut Vec<Diagnostic>) {
    for t in &globals.trains {
        if !globals.models.iter().any(|m| m.name.name == t.model.name) {
            diagnostics.push(
                Diagnostic::new(
                    ErrorKind::UnknownModel,
                    format!(
                        "`train` names model `{}`, which is not defined",
                        t.model.name
                    ),
                    t.model.span,
                    "unknown model",
                )
                .with_help(model_list(globals)),
            );
        }
    }
}

/// Checks the train block of `model` (if any) and lowers the model to a verified program.
fn analyse_model(
    globals: &Globals,
    model: &ast::ModelDef,
    options: &CompileOptions,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Compiled> {
    let trains: Vec<&ast::TrainDef> = globals
        .trains
        .iter()
        .filter(|t| t.model.name == model.name.name)
        .collect();
    if let [first, second, ..] = trains.as_slice() {
        diagnostics.push(
            Diagnostic::new(
                ErrorKind::DuplicateDefinition,
                format!("model `{}` has two train blocks", model.name.name),
                second.model.span,
                "second train block",
            )
            .with_label(first.model.span, "first train block"),
        );
    }
    // A train block with errors still binds `B` (to its batch size or the default), so the
    // model's own errors are reported without a cascade of unbound dimensions.
    let checked = trains.first().map(|t| {
        let before = diagnostics.len();
        let cfg = train::configure(t, diagnostics);
        (cfg, diagnostics.len() == before)
    });
    let batch = options.batch.or(checked.as_ref().map(|(t, _)| t.batch));
    let mut dims = options.dims.clone();
    if let Some(b) = batch {
        dims.entry("B".to_string()).or_insert(b);
    }
    let before = diagnostics.len();
    let (forward, loops) = lower::lower_model(globals, model, &dims, options.loops, diagnostics)?;
    if diagnostics.len() > before {
        return None;
    }
    if let Err(e) = ir::verify(&forward) {
        diagnostics.push(Diagnostic::new(
            ErrorKind::ShapeMismatch,
            format!("internal compiler error: {e}"),
            model.name.span,
            "while compiling this model",
        ));
        return None;
    }
    if let Some((t, _)) = &checked {
        train::check_against_model(t, trains[0], &forward, diagnostics);
    }
    let train = checked.and_then(|(t, sound)| sound.then_some(t));
    let frozen = model
        .body
        .iter()
        .filter_map(|stmt| match stmt {
            ast::Stmt::Decl {
                kind: ast::DeclKind::Frozen,
                name,
                ..
            } => Some(name.name.clone()),
            _ => None,
        })
        .collect();
    Some(Compiled {
        model_name: model.name.name.clone(),
        forward,
        train,
        loops,
        frozen,
    })
}
