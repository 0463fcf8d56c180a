//! What `pcg ir` and `pcg check --report` print: a model at a stage of the compiler (the
//! forward IR, the gradient program, the predictive-coding programs, the JIT's buffer plan and
//! Cranelift IR of the training step), as text or Graphviz DOT, and what training it holds in
//! memory. The CLI and the Python module print the same text from here.

use crate::ir::{self, Program};
use crate::jit::{JitOptions, JitStep};
use crate::pc;
use crate::sema::{Compiled, InferenceConfig, Method};
use crate::train::engine::{JitEngine, Programs};
use crate::train::optim::Optimizer;
use clap::ValueEnum;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The parsed syntax tree.
    Ast,
    /// The forward IR program.
    Ir,
    /// The backprop gradient program.
    Grad,
    /// The predictive-coding programs: relaxation prologue and step, and learning.
    Pc,
    /// The JIT's buffer plan of each compiled training function: buffers, sizes, peak bytes.
    Plan,
    /// The Cranelift IR of each compiled training function.
    Clif,
}

/// How `pcg ir` writes a program: text, or Graphviz DOT.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Dot,
}

impl Stage {
    /// The stage as `--stage` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Ast => "ast",
            Stage::Ir => "ir",
            Stage::Grad => "grad",
            Stage::Pc => "pc",
            Stage::Plan => "plan",
            Stage::Clif => "clif",
        }
    }
}

/// The syntax tree of a parsed module, as `pcg ir --stage ast` prints it.
pub fn ast_text(module: &crate::syntax::ast::Module) -> String {
    crate::syntax::print::module_text(module)
}

/// A compiled model at `stage` (any but `Ast`, which comes before compilation), with the
/// relaxation `inference` for the stages that have one.
pub fn stage_text(
    compiled: &Compiled,
    stage: Stage,
    format: Format,
    inference: &InferenceConfig,
) -> Result<String, String> {
    stage_text_of(compiled, stage, format, inference, None)
}

/// As [`stage_text`], with the training step of `method` (default: the train block's) for
/// the `Plan` and `Clif` stages.
pub fn stage_text_of(
    compiled: &Compiled,
    stage: Stage,
    format: Format,
    inference: &InferenceConfig,
    method: Option<Method>,
) -> Result<String, String> {
    let forward = &compiled.forward;
    if matches!(stage, Stage::Plan | Stage::Clif) {
        return jit_text(compiled, stage, inference, method);
    }
    let programs: Vec<Program> = match stage {
        Stage::Ast => return Err("the syntax tree is printed before compilation".to_string()),
        Stage::Ir | Stage::Plan | Stage::Clif => vec![forward.clone()],
        Stage::Grad => vec![crate::train::engine::gradient(forward)?],
        Stage::Pc => {
            let p = pc::transform(forward, inference).map_err(|e| e.to_string())?;
            if format == Format::Dot {
                return Ok(pc::to_dot(&p.forward.program, &p.graph));
            }
            let mut text = loop_header(compiled) + &pc::describe(&p) + "\n";
            // After the simulated programs, the one-program step that training runs when the
            // relaxation has a closed form (fixed and exact modes). Or, with a stopping
            // tolerance, the closed form's loop over coefficients.
            let trained = Programs::build(forward, Method::Pc, inference, None)?;
            let mut programs = vec![p.relax.prologue, p.relax.body, p.learn];
            programs.extend(trained.fused);
            if let Some(solved) = trained.solved_relax {
                programs.extend([solved.prologue, solved.body]);
            }
            for program in &programs {
                text.push_str(&ir::to_text(program));
            }
            return Ok(text);
        }
    };
    let header = match format {
        Format::Text => loop_header(compiled),
        Format::Dot => String::new(),
    };
    Ok(header
        + &programs
            .iter()
            .map(|p| match format {
                Format::Text => ir::to_text(p),
                Format::Dot => ir::to_dot(p),
            })
            .collect::<String>())
}

/// One comment line per `for` loop of the model: kept as a scan or unrolled, and why.
fn loop_header(compiled: &Compiled) -> String {
    compiled
        .loops
        .iter()
        .map(|note| format!("// {}\n", note.describe()))
        .collect()
}

/// What training `compiled`'s model holds in memory, with the train block's settings: the
/// parameters, one update of each, the optimiser's moments, the compiled training step's
/// arena (every buffer of the step: the batch, the relaxation's state, temporaries) and the
/// data set as loaded, against what this process may allocate. `data` is `None` for a model
/// without one, an error when it cannot be loaded (it is then not counted, and the report
/// says why).
pub fn memory_report(
    compiled: &Compiled,
    data: Option<Result<crate::memory::DataBytes, String>>,
) -> Result<String, String> {
    use crate::memory::{self, bytes_text};
    let inference = compiled
        .train
        .as_ref()
        .map(|t| t.inference.clone())
        .unwrap_or_default();
    let (step, optimizer, _) = training_step(compiled, &inference, None)?;
    let footprint = memory::footprint(&compiled.forward);
    let shapes: Vec<(String, crate::ir::Shape)> = compiled
        .forward
        .leaves(crate::ir::LeafKind::Param)
        .into_iter()
        .map(|(id, name)| (name.to_string(), compiled.forward.shape(id).clone()))
        .collect();
    let moments: u64 = optimizer
        .initial_moments(&shapes)
        .values()
        .map(|m| 4 * m.len() as u64)
        .sum();
    let arena = 4 * step.plan().arena_len as u64;
    let (data_bytes, data_text, not_counted) = match &data {
        None => (0, "none".to_string(), String::new()),
        Some(Ok(d)) => (
            d.bytes,
            format!("{} ({})", bytes_text(d.bytes), d.name),
            String::new(),
        ),
        Some(Err(why)) => (
            0,
            "unknown".to_string(),
            format!("  data set not counted: {why}\n"),
        ),
    };
    // The step's arena holds the resident parameters and moments; the updates are its own.
    let total = footprint.params + moments + arena + data_bytes;
    let available = match memory::available() {
        Some(a) => bytes_text(a),
        None => "unknown".to_string(),
    };
    Ok(format!(
        "memory model={} params={} ({} tensors) optimizer={} largest_value={} step_arena={} data={data_text} total={} available={available}\n  largest tensors: {}\n{not_counted}",
        compiled.model_name,
        bytes_text(footprint.params),
        shapes.len(),
        bytes_text(moments),
        bytes_text(footprint.largest_value),
        bytes_text(arena),
        bytes_text(total),
        footprint.largest_text()
    ))
}

/// The training step as `pcg run` compiles it from the file's train block (with the relaxation
/// `inference`, and `method` in place of the block's where given), its optimiser, and a
/// description of what it runs.
fn training_step(
    compiled: &Compiled,
    inference: &InferenceConfig,
    method: Option<Method>,
) -> Result<(JitStep, Optimizer, String), String> {
    let train = compiled.train.as_ref();
    let method = method.unwrap_or(train.map_or(Method::Pc, |t| t.method));
    let programs = Programs::build(&compiled.forward, method, inference, None)?;
    let optimizer = Optimizer::for_model(compiled, None);
    let what = match (&programs.grad, &programs.fused, &programs.pc) {
        (Some(grad), _, _) => grad.name.clone(),
        (_, Some(step), _) => format!("{} (relaxation solved in closed form)", step.name),
        (_, _, Some(pc)) => format!(
            "{} ({} steps) and {}",
            pc.relax.body.name, programs.steps, pc.learn.name
        ),
        _ => String::new(),
    };
    let engine = JitEngine::new(programs, &JitOptions::default()).map_err(|e| e.to_string())?;
    let step = engine.compile_step(&optimizer).map_err(|e| e.to_string())?;
    Ok((step, optimizer, what))
}

/// The JIT's view of the training step as `pcg run` compiles it: one function holding the
/// gradient (backprop's program, the closed-form PC step, or the relaxation loop and the
/// learning program) and the update of the file's optimiser, over resident parameters.
fn jit_text(
    compiled: &Compiled,
    stage: Stage,
    inference: &InferenceConfig,
    method: Option<Method>,
) -> Result<String, String> {
    let (step, _, what) = training_step(compiled, inference, method)?;
    let body = if stage == Stage::Plan {
        step.plan().to_string()
    } else {
        step.clif().to_string()
    };
    Ok(format!(
        "// training step: {what}, then the optimiser's update\n{body}\n"
    ))
}
