//! The command-line interface: `pcg check | ir | ...`. Each subcommand is a thin driver over
//! the library's stages; what it prints is part of the public interface.

use crate::diag;
use crate::ir;
use crate::sema::{self, CompileOptions, Compiled};
use crate::source::Sources;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "pcg",
    version,
    about = "Compile differentiable programs to predictive-coding networks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check files for errors; exit 0 when clean, 1 with diagnostics on stderr.
    Check {
        /// The `.pcg` files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        compile: CompileFlags,
    },
    /// Print a stage of the compiler's representation of a model.
    Ir {
        file: PathBuf,
        /// Which representation to print.
        #[arg(long, value_enum, default_value_t = Stage::Ir)]
        stage: Stage,
        /// Text or Graphviz DOT.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        compile: CompileFlags,
    },
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
    /// Bind a dimension variable, e.g. `--dim T=50` (repeatable).
    #[arg(long = "dim", value_parser = parse_dim)]
    pub dims: Vec<(String, usize)>,
}

impl CompileFlags {
    pub fn options(&self) -> CompileOptions {
        CompileOptions {
            model: self.model.clone(),
            batch: self.batch,
            dims: self.dims.iter().cloned().collect(),
        }
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

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The parsed syntax tree.
    Ast,
    /// The forward IR program.
    Ir,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Dot,
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check { files, compile } => check(&files, &compile.options()),
        Command::Ir {
            file,
            stage,
            format,
            compile,
        } => ir_dump(&file, stage, format, &compile.options()),
    }
}

fn check(files: &[PathBuf], options: &CompileOptions) -> ExitCode {
    let mut failed = false;
    for file in files {
        let (sources, result) = sema::check_file(file, options);
        if let Err(diagnostics) = result {
            diag::emit_to_stderr(&sources, &diagnostics);
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Compiles the model of `file`, printing diagnostics on failure.
pub fn compile_or_report(
    file: &Path,
    options: &CompileOptions,
) -> Result<(Sources, Compiled), ExitCode> {
    let (sources, result) = sema::compile_file(file, options);
    match result {
        Ok(c) => Ok((sources, c)),
        Err(diagnostics) => {
            diag::emit_to_stderr(&sources, &diagnostics);
            Err(ExitCode::FAILURE)
        }
    }
}

fn ir_dump(file: &Path, stage: Stage, format: Format, options: &CompileOptions) -> ExitCode {
    if stage == Stage::Ast {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read `{}`: {e}", file.display());
                return ExitCode::FAILURE;
            }
        };
        let mut sources = Sources::new();
        let id = sources.add(file.display().to_string(), text.clone());
        let (module, diagnostics) = crate::syntax::parse(id, &text);
        if !diagnostics.is_empty() {
            diag::emit_to_stderr(&sources, &diagnostics);
            return ExitCode::FAILURE;
        }
        if format == Format::Dot {
            eprintln!("error: the AST has no DOT form; use --format text");
            return ExitCode::FAILURE;
        }
        println!("{module:#?}");
        return ExitCode::SUCCESS;
    }
    let (_, compiled) = match compile_or_report(file, options) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let program = &compiled.forward;
    match format {
        Format::Text => print!("{}", ir::to_text(program)),
        Format::Dot => print!("{}", ir::to_dot(program)),
    }
    ExitCode::SUCCESS
}
