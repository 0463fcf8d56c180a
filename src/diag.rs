//! Compile diagnostics: what went wrong, where, and what to do about it.
//!
//! Every stage of the front end reports problems as `Diagnostic` values with spans; nothing
//! in the front end panics on user input. Each diagnostic has a stable code taken from
//! `ErrorKind` (documented in the book's reference, `docs/book/src/language.md`), a primary
//! label at the offending span, secondary labels where another place explains it (both
//! operands of a shape mismatch) and help notes. `render` turns them into codespan-reporting's terminal output.

use crate::source::{Sources, Span};
use codespan_reporting::diagnostic as cs;
use codespan_reporting::term;
use codespan_reporting::term::termcolor::{BufferedStandardStream, ColorChoice, WriteColor};

/// The kinds of compile errors; each has a stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A character that starts no token, or a malformed number.
    InvalidToken,
    /// The parser met a token that cannot come next.
    UnexpectedToken,
    /// The file ended in the middle of a construct.
    UnexpectedEof,
    /// A name that is not bound at its use.
    UnknownName,
    /// A call of a function that is neither a builtin nor defined.
    UnknownFunction,
    /// `use` of a module that the stdlib does not have.
    UnknownModule,
    /// A file named by `use "..."` that cannot be read.
    ImportFailed,
    /// Two definitions of one name in one scope.
    DuplicateDefinition,
    /// A call with the wrong number of arguments or an unknown named argument.
    WrongArity,
    /// A function that calls itself, directly or through others.
    Recursion,
    /// Operands of `@` whose inner dimensions differ.
    MatmulShapeMismatch,
    /// Operands of an elementwise operator that do not broadcast.
    BroadcastMismatch,
    /// Any other shape rule broken (reshape sizes, concat, conv2d, ...).
    ShapeMismatch,
    /// A value of the wrong kind (a tuple where a tensor is needed, a tensor where a
    /// compile-time integer is needed).
    TypeMismatch,
    /// An argument that does not match a function's shape annotation.
    SignatureMismatch,
    /// A dimension variable that nothing binds.
    UnboundDimension,
    /// An index or slice outside its axis.
    IndexOutOfRange,
    /// A `for` bound that is not a compile-time integer.
    NonConstantLoopBound,
    /// A parameter initialiser that does not exist or has bad arguments.
    BadInitialiser,
    /// A model without any `loss` statement.
    MissingLoss,
    /// A `train` block for a model that is not defined, or a file without a model.
    UnknownModel,
    /// A key that a `train` block does not have.
    UnknownTrainKey,
    /// A `train` value of the wrong kind or out of range.
    BadTrainValue,
    /// A declaration that is not allowed where it appears (`param` inside a function).
    MisplacedStatement,
    /// Expressions, loops or inlined calls nested deeper than the compiler allows.
    NestingTooDeep,
    /// An argument outside what an operation accepts (a negative axis, a zero stride).
    BadArgument,
    /// A model that cannot fit in the memory available to a command that runs it.
    TooLargeForMemory,
}

impl ErrorKind {
    /// The stable code shown in brackets, e.g. `E0201`.
    pub fn code(self) -> &'static str {
        use ErrorKind::*;
        match self {
            InvalidToken => "E0001",
            UnexpectedToken => "E0002",
            UnexpectedEof => "E0003",
            UnknownName => "E0101",
            UnknownFunction => "E0102",
            UnknownModule => "E0103",
            ImportFailed => "E0104",
            DuplicateDefinition => "E0105",
            WrongArity => "E0106",
            Recursion => "E0107",
            MisplacedStatement => "E0108",
            NestingTooDeep => "E0109",
            MatmulShapeMismatch => "E0201",
            BroadcastMismatch => "E0202",
            ShapeMismatch => "E0203",
            TypeMismatch => "E0204",
            SignatureMismatch => "E0205",
            UnboundDimension => "E0206",
            IndexOutOfRange => "E0207",
            NonConstantLoopBound => "E0208",
            BadArgument => "E0209",
            BadInitialiser => "E0301",
            MissingLoss => "E0302",
            UnknownModel => "E0303",
            UnknownTrainKey => "E0401",
            BadTrainValue => "E0402",
            TooLargeForMemory => "E0501",
        }
    }
}

/// A label on a span of source.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub span: Span,
    pub message: String,
    pub primary: bool,
}

/// One error, ready to render.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub kind: ErrorKind,
    pub message: String,
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// An error with a primary label at `span`.
    pub fn new(
        kind: ErrorKind,
        message: impl Into<String>,
        span: Span,
        label: impl Into<String>,
    ) -> Self {
        Diagnostic {
            kind,
            message: message.into(),
            labels: vec![Label {
                span,
                message: label.into(),
                primary: true,
            }],
            notes: Vec::new(),
        }
    }

    /// Adds a secondary label.
    pub fn with_label(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: false,
        });
        self
    }

    /// Adds a `help:` note.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.notes.push(format!("help: {}", help.into()));
        self
    }

    /// Adds a `note:` line.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(format!("note: {}", note.into()));
        self
    }

    /// The span of the primary label.
    pub fn primary_span(&self) -> Option<Span> {
        self.labels.iter().find(|l| l.primary).map(|l| l.span)
    }

    fn to_codespan(&self) -> cs::Diagnostic<usize> {
        let labels = self
            .labels
            .iter()
            .map(|l| {
                let label = if l.primary {
                    cs::Label::primary(l.span.file, l.span.range())
                } else {
                    cs::Label::secondary(l.span.file, l.span.range())
                };
                label.with_message(l.message.clone())
            })
            .collect();
        cs::Diagnostic::error()
            .with_code(self.kind.code())
            .with_message(self.message.clone())
            .with_labels(labels)
            .with_notes(self.notes.clone())
    }
}

/// Renders diagnostics as plain text (no colour), as the snapshot tests see them.
pub fn render(sources: &Sources, diagnostics: &[Diagnostic]) -> String {
    let mut buffer = term::termcolor::NoColor::new(Vec::new());
    emit(sources, diagnostics, &mut buffer);
    String::from_utf8_lossy(&buffer.into_inner()).into_owned()
}

/// Writes diagnostics to stderr, coloured when stderr is a terminal.
pub fn emit_to_stderr(sources: &Sources, diagnostics: &[Diagnostic]) {
    let choice = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let mut stream = BufferedStandardStream::stderr(choice);
    emit(sources, diagnostics, &mut stream);
    let _ = std::io::Write::flush(&mut stream);
}

/// At most this many diagnostics are shown; a hostile or badly broken file gets a count of
/// the rest instead of megabytes of errors.
const MAX_SHOWN: usize = 50;

fn emit(sources: &Sources, diagnostics: &[Diagnostic], out: &mut dyn WriteColor) {
    let config = term::Config::default();
    if diagnostics.len() > MAX_SHOWN {
        emit(sources, &diagnostics[..MAX_SHOWN], out);
        let rest = diagnostics.len() - MAX_SHOWN;
        let _ = writeln!(out, "error: {rest} more errors not shown");
        return;
    }
    for d in diagnostics {
        let mut shown = d.to_codespan();
        // A label in an empty file (one that could not be read) would frame nothing.
        shown
            .labels
            .retain(|l| !sources.text(l.file_id).is_empty() || !l.range.is_empty());
        // A span that falls outside its file (which would be a compiler bug) must not hide
        // the message: fall back to rendering it without labels.
        if term::emit_to_write_style(out, &config, &sources.files, &shown).is_err() {
            let mut bare = d.to_codespan();
            bare.labels.clear();
            let _ = term::emit_to_write_style(out, &config, &sources.files, &bare);
        }
    }
}

/// Drops the diagnostics after index `start` that repeat an earlier one after it: the same
/// kind at the same place (a loop's body lowered once per iteration reports its error once).
pub fn dedup_since(diagnostics: &mut Vec<Diagnostic>, start: usize) {
    let mut seen = std::collections::HashSet::new();
    let mut k = 0;
    diagnostics.retain(|d| {
        k += 1;
        k <= start || seen.insert((d.kind, d.labels.first().map(|l| l.span)))
    });
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a likely
/// typo (for "did you mean" hints).
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .filter(|c| *c != name)
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
