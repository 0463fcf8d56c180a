//! The formatter: a `.pcg` file in its one canonical layout (`pcg fmt`).
//!
//! The layout is computed from the syntax tree, not from the text: whatever the spacing and
//! line breaks of the input, a program comes out the same way. What the tree does not hold
//! is taken from the text: the comments, the blank lines that group items and statements
//! (one is kept where the input had one or more), the parentheses the user wrote, whether a
//! function's result was written `return`, and the literals as spelled (`1e-3` stays so).
//!
//! The rules:
//! - four spaces of indentation per block; every item, statement and train entry on its own
//!   line; no `;` or `,` separators between them (the grammar never needs one);
//! - spaces around binary operators, `=` and `->`, after `,` and `:`; none inside brackets,
//!   around `..` or after unary `-`;
//! - the declarations of a model in one run (no blank line between them) form a table: the
//!   keywords padded to the longest (`input  x`, `target y`) and the `=` of the initialisers
//!   aligned; so are the `=` of a train block's entries;
//! - a nested train block (`inference { ... }`) on one line when it fits and holds no comment,
//!   else one entry per line;
//! - lines of at most 100 columns: a call, list, index or parameter list that does not fit
//!   breaks after its opening bracket, packs its items on the following lines and ends with a
//!   trailing comma; a chain of `+ -` or `* / @` that does not fit breaks after its operators;
//! - a comment on its own line stays on its own line, before what followed it; a comment after
//!   code stays after that code on its line (those of consecutive one-line statements
//!   aligned, two spaces after the longest).
//!
//! Line breaking is Wadler's and Oppen's: an expression becomes a [`Doc`] of texts, possible
//! breaks and groups, and a group is laid out flat when it fits on the line, broken otherwise.
//! Comments are placed by position: building a piece of the layout first takes every comment
//! that lies before it in the text.
//!
//! [`format_source`] checks its own work: the output must parse to the same tree (spans aside)
//! with the same comments, or the file is left alone with an error.

use super::ast::*;
use super::lexer::{self, Comment, SpannedToken, Token};
use crate::diag::{Diagnostic, ErrorKind};
use crate::source::{FileId, Span};
use std::collections::HashMap;

/// The longest line the formatter writes, where it can choose.
pub const WIDTH: usize = 100;
const INDENT: usize = 4;
/// How deeply expressions, types, patterns and loops may nest for the formatter to lay them
/// out (its recursion follows the tree); the compiler itself accepts half this.
const MAX_DEPTH: usize = 256;

/// Formats one file. Syntax errors come back as the parser's diagnostics (a file that does
/// not parse is never rewritten).
pub fn format_source(file: FileId, source: &str) -> Result<String, Vec<Diagnostic>> {
    let parsed = super::parse_full(file, source);
    if !parsed.diagnostics.is_empty() {
        return Err(parsed.diagnostics);
    }
    if let Some(span) = too_deep(&parsed.module) {
        return Err(vec![Diagnostic::new(
            ErrorKind::NestingTooDeep,
            format!("this file nests more than {MAX_DEPTH} deep: it is not formatted"),
            span,
            "nested too deeply",
        )]);
    }
    let comments = lexer::comments(source, &parsed.tokens);
    let mut printer = Printer::new(source, &parsed.tokens, comments.clone(), &parsed.parens);
    let text = printer.module(&parsed.module);
    // The output must be the same program with the same comments.
    let again = super::parse_full(file, &text);
    let same = again.diagnostics.is_empty()
        && again.module.without_spans() == parsed.module.without_spans()
        && texts(&lexer::comments(&text, &again.tokens)) == texts(&comments);
    if !same {
        return Err(vec![Diagnostic::new(
            ErrorKind::UnexpectedToken,
            "internal formatter error: the formatted text would not be the same program",
            Span::new(file, 0, 0),
            "this file is left as it is",
        )
        .with_help("please report this file")]);
    }
    Ok(text)
}

fn texts(comments: &[Comment]) -> Vec<&str> {
    comments.iter().map(|c| c.text.as_str()).collect()
}

// ---- depth ----------------------------------------------------------------------------------

/// The span of the first construct nested deeper than [`MAX_DEPTH`], if any. Never recurses
/// past the limit itself.
fn too_deep(module: &Module) -> Option<Span> {
    fn expr(e: &Expr, d: usize) -> Option<Span> {
        if d > MAX_DEPTH {
            return Some(e.span);
        }
        let d = d + 1;
        match &e.kind {
            ExprKind::Int(_)
            | ExprKind::Float(_)
            | ExprKind::Bool(_)
            | ExprKind::Str(_)
            | ExprKind::Name(_) => None,
            ExprKind::Neg(a) => expr(a, d),
            ExprKind::Binary(_, a, b) => expr(a, d).or_else(|| expr(b, d)),
            ExprKind::Call { args, .. } => args.iter().find_map(|a| expr(&a.value, d)),
            ExprKind::Index { base, indices } => expr(base, d).or_else(|| {
                indices.iter().find_map(|i| match i {
                    IndexItem::At(x) => expr(x, d),
                    IndexItem::Range { start, end, .. } => {
                        start.iter().chain(end.iter()).find_map(|x| expr(x, d))
                    }
                })
            }),
            ExprKind::Tuple(items) | ExprKind::List(items) => items.iter().find_map(|x| expr(x, d)),
        }
    }
    fn ty(t: &TypeExpr, d: usize) -> Option<Span> {
        if d > MAX_DEPTH {
            return Some(t.span());
        }
        match t {
            TypeExpr::Tensor { dims, .. } => dims.iter().find_map(|x| expr(x, d + 1)),
            TypeExpr::Tuple { items, .. } => items.iter().find_map(|x| ty(x, d + 1)),
        }
    }
    fn pattern(p: &Pattern, d: usize) -> Option<Span> {
        if d > MAX_DEPTH {
            return Some(p.span());
        }
        match p {
            Pattern::Name(_) => None,
            Pattern::Tuple(items, _) => items.iter().find_map(|x| pattern(x, d + 1)),
        }
    }
    fn stmt(s: &Stmt, d: usize) -> Option<Span> {
        match s {
            Stmt::Decl { ty: t, init, .. } => {
                ty(t, 0).or_else(|| init.as_ref().and_then(|e| expr(e, 0)))
            }
            Stmt::Let {
                pattern: p, value, ..
            } => pattern(p, 0).or_else(|| expr(value, 0)),
            Stmt::Assign { value, .. } | Stmt::Loss { value, .. } => expr(value, 0),
            Stmt::Const(c) => expr(&c.value, 0),
            Stmt::For {
                start,
                end,
                body,
                span,
                ..
            } => {
                if d > MAX_DEPTH {
                    return Some(*span);
                }
                expr(start, 0)
                    .or_else(|| expr(end, 0))
                    .or_else(|| body.iter().find_map(|s| stmt(s, d + 1)))
            }
            Stmt::Error { .. } => None,
        }
    }
    fn entry(e: &TrainEntry, d: usize) -> Option<Span> {
        if d > MAX_DEPTH {
            return Some(e.span);
        }
        match &e.value {
            TrainValue::Expr(x) => expr(x, 0),
            TrainValue::Block(entries, _) => entries.iter().find_map(|x| entry(x, d + 1)),
        }
    }
    module.items.iter().find_map(|item| match item {
        Item::Use(_) => None,
        Item::Const(c) => expr(&c.value, 0),
        Item::Fn(f) => f
            .params
            .iter()
            .find_map(|p| p.ty.as_ref().and_then(|t| ty(t, 0)))
            .or_else(|| f.ret.as_ref().and_then(|t| ty(t, 0)))
            .or_else(|| f.body.stmts.iter().find_map(|s| stmt(s, 0)))
            .or_else(|| f.body.result.as_ref().and_then(|e| expr(e, 0))),
        Item::Model(m) => m.body.iter().find_map(|s| stmt(s, 0)),
        Item::Train(t) => t.entries.iter().find_map(|e| entry(e, 0)),
    })
}

// ---- documents ------------------------------------------------------------------------------

/// A layout to be fitted to the line width.
#[derive(Clone, Debug)]
enum Doc {
    Text(String),
    /// A space, or a line break.
    Line,
    /// Nothing, or a line break.
    SoftLine,
    /// Always a line break (after a comment on its own line).
    Hard,
    /// Text written only when the enclosing group is laid out broken (a trailing comma).
    Broken(&'static str),
    /// A comment written at the end of the current line.
    Suffix(String),
    Concat(Vec<Doc>),
    /// Lines inside are indented one level more.
    Nest(Box<Doc>),
    /// Laid out flat when it fits, broken otherwise.
    Group(Box<Doc>),
    /// Items separated by `, ` where the next one fits on the line, by `,` and a line break
    /// where it does not.
    Fill(Vec<Doc>),
}

fn text(s: impl Into<String>) -> Doc {
    Doc::Text(s.into())
}

fn concat(parts: impl IntoIterator<Item = Doc>) -> Doc {
    Doc::Concat(parts.into_iter().collect())
}

/// The width of `doc` laid out flat, or `None` if it cannot be (it holds a comment).
fn flat_width(doc: &Doc) -> Option<usize> {
    width(doc, false)
}

/// The width of `doc` laid out flat, or `None` if it holds a comment on a line of its own, or
/// (unless `suffixes`) a comment at the end of a line. A group with such a comment is broken,
/// so that the comment stays by its code; a packed item may keep one, which ends its line.
fn width(doc: &Doc, suffixes: bool) -> Option<usize> {
    Some(match doc {
        Doc::Text(t) => t.chars().count(),
        Doc::Line => 1,
        Doc::SoftLine | Doc::Broken(_) => 0,
        Doc::Suffix(_) if suffixes => 0,
        Doc::Hard | Doc::Suffix(_) => return None,
        Doc::Concat(parts) => parts
            .iter()
            .map(|d| width(d, suffixes))
            .sum::<Option<usize>>()?,
        Doc::Nest(d) | Doc::Group(d) => width(d, suffixes)?,
        Doc::Fill(items) => {
            items
                .iter()
                .map(|d| width(d, suffixes))
                .sum::<Option<usize>>()?
                + 2 * items.len().saturating_sub(1)
        }
    })
}

/// The width of what `docs` write before their first possible line break, and whether they
/// have one.
fn head_width(docs: &[Doc], flat: bool) -> (usize, bool) {
    let mut width = 0;
    for doc in docs {
        let (w, stop) = match doc {
            Doc::Text(t) => (t.chars().count(), false),
            Doc::Line if flat => (1, false),
            Doc::SoftLine if flat => (0, false),
            Doc::Line | Doc::SoftLine | Doc::Hard => (0, true),
            Doc::Broken(t) => (if flat { 0 } else { t.len() }, false),
            Doc::Suffix(_) => (0, false),
            Doc::Concat(parts) => head_width(parts, flat),
            Doc::Nest(d) | Doc::Group(d) => head_width(std::slice::from_ref(d.as_ref()), flat),
            Doc::Fill(items) if flat => (flat_width(doc).unwrap_or(0), items.is_empty()),
            Doc::Fill(items) => match items.first() {
                Some(first) => {
                    let (w, _) = head_width(std::slice::from_ref(first), flat);
                    (w, true)
                }
                None => (0, false),
            },
        };
        width += w;
        if stop {
            return (width, true);
        }
    }
    (width, false)
}

/// Lays documents out into lines.
struct Render {
    out: String,
    col: usize,
    /// Comments waiting for the end of their line: the first ends it, the others (two
    /// comments cannot share a line) follow on lines of their own.
    suffix: Vec<String>,
}

impl Render {
    fn new(indent: usize) -> Render {
        Render {
            out: " ".repeat(indent),
            col: indent,
            suffix: Vec::new(),
        }
    }

    fn text(&mut self, t: &str) {
        self.out.push_str(t);
        self.col += t.chars().count();
    }

    fn newline(&mut self, indent: usize) {
        let trimmed = self.out.trim_end_matches(' ').len();
        // A line that holds no code yet keeps its indentation for a comment that ends it.
        let blank = trimmed == 0 || self.out[..trimmed].ends_with('\n');
        let mut comments = std::mem::take(&mut self.suffix).into_iter();
        match comments.next() {
            Some(first) if blank => self.out.push_str(&first),
            Some(first) => {
                self.out.truncate(trimmed);
                self.out.push_str("  ");
                self.out.push_str(&first);
            }
            None => self.out.truncate(trimmed),
        }
        for c in comments {
            self.out.push('\n');
            self.out.push_str(&" ".repeat(indent));
            self.out.push_str(&c);
        }
        self.out.push('\n');
        self.out.push_str(&" ".repeat(indent));
        self.col = indent;
    }

    /// Lays out `doc` at `indent`; `trail` is the width of what must follow it on its line.
    fn doc(&mut self, doc: &Doc, flat: bool, indent: usize, trail: usize) {
        match doc {
            Doc::Text(t) => self.text(t),
            Doc::Line if flat => self.text(" "),
            Doc::SoftLine if flat => {}
            Doc::Line | Doc::SoftLine | Doc::Hard => self.newline(indent),
            Doc::Broken(t) => {
                if !flat {
                    self.text(t)
                }
            }
            Doc::Suffix(comment) => self.suffix.push(comment.clone()),
            Doc::Concat(parts) => {
                for (i, part) in parts.iter().enumerate() {
                    let (after, broken) = head_width(&parts[i + 1..], flat);
                    let trail = if broken { after } else { after + trail };
                    self.doc(part, flat, indent, trail);
                }
            }
            Doc::Nest(d) => self.doc(d, flat, indent + INDENT, trail),
            Doc::Group(d) => {
                let fits = flat
                    || flat_width(d)
                        .is_some_and(|w| self.suffix.is_empty() && self.col + w + trail <= WIDTH);
                self.doc(d, fits, indent, trail)
            }
            Doc::Fill(items) => {
                for (i, item) in items.iter().enumerate() {
                    if flat {
                        if i > 0 {
                            self.text(", ");
                        }
                        self.doc(item, true, indent, trail);
                        continue;
                    }
                    let item_width = width(item, true);
                    if i > 0 {
                        let here = self.suffix.is_empty()
                            && item_width.is_some_and(|w| self.col + w + ", ,".len() <= WIDTH);
                        if here {
                            self.text(", ");
                            self.doc(item, true, indent, 1);
                            continue;
                        }
                        self.text(",");
                        self.newline(indent);
                    }
                    let fits = item_width.is_some_and(|w| self.col + w + ",".len() <= WIDTH);
                    self.doc(item, fits, indent, 1);
                }
            }
        }
    }
}

/// Lays out `doc` starting at column `indent`: its lines (the first indented too), and the
/// comments left waiting at its end.
fn layout(doc: &Doc, indent: usize) -> (String, Vec<String>) {
    let mut r = Render::new(indent);
    r.doc(doc, false, indent, 0);
    let trimmed = r.out.trim_end_matches(' ').len();
    r.out.truncate(trimmed);
    (r.out, r.suffix)
}

// ---- the printer ----------------------------------------------------------------------------

/// Binding strength of an expression: how tightly it holds its operands.
fn precedence(e: &Expr) -> u8 {
    match &e.kind {
        ExprKind::Binary(BinOp::Add | BinOp::Sub, ..) => 1,
        ExprKind::Binary(..) => 2,
        ExprKind::Neg(_) => 3,
        ExprKind::Index { .. } => 4,
        _ => 5,
    }
}

/// One item, statement or entry of a block, ready to be aligned with its neighbours.
enum Built {
    /// `input x: [B, 64] = init`, with the keyword and the `=` to align.
    Decl {
        keyword: &'static str,
        head: Doc,
        init: Option<Doc>,
    },
    /// `key = value` of a train block.
    Entry { key: String, value: Doc },
    /// Anything else, as one layout.
    Doc(Doc),
    /// A construct with a block, already laid out (lines indented).
    Lines(String),
}

/// A line of a block's output.
struct OutLine {
    text: String,
    comment: Option<String>,
    blank_before: bool,
    /// A one-line element whose comment may be aligned with its neighbours'.
    single: bool,
}

/// Something in a block: an item, a statement, a train entry or a function's result.
#[derive(Clone, Copy)]
enum Element<'a> {
    Item(&'a Item),
    Stmt(&'a Stmt),
    Entry(&'a TrainEntry),
    Result(&'a Expr),
}

impl Element<'_> {
    fn span(&self) -> Span {
        match self {
            Element::Item(Item::Use(u)) => u.span,
            Element::Item(Item::Const(c)) => c.span,
            Element::Item(Item::Fn(f)) => f.span,
            Element::Item(Item::Model(m)) => m.span,
            Element::Item(Item::Train(t)) => t.span,
            Element::Stmt(s) => stmt_span(s),
            Element::Entry(e) => e.span,
            Element::Result(e) => e.span,
        }
    }
}

fn stmt_span(s: &Stmt) -> Span {
    match s {
        Stmt::Decl { span, .. }
        | Stmt::Let { span, .. }
        | Stmt::Assign { span, .. }
        | Stmt::For { span, .. }
        | Stmt::Loss { span, .. }
        | Stmt::Error { span, .. } => *span,
        Stmt::Const(c) => c.span,
    }
}

/// An item of a bracketed list: where it starts in the text, and how to build its layout
/// (called in order, so that it takes the comments before it).
type ListItem<'a, 's> = (usize, Box<dyn Fn(&mut Printer<'s>) -> Doc + 'a>);

struct Printer<'s> {
    source: &'s str,
    tokens: &'s [SpannedToken],
    comments: Vec<Comment>,
    /// The first comment not yet placed.
    next: usize,
    /// How many pairs of parentheses enclose the expression of each byte range.
    parens: HashMap<(usize, usize), usize>,
}

impl<'s> Printer<'s> {
    fn new(
        source: &'s str,
        tokens: &'s [SpannedToken],
        comments: Vec<Comment>,
        parens: &[(usize, usize)],
    ) -> Self {
        let mut counts = HashMap::new();
        for &range in parens {
            *counts.entry(range).or_insert(0) += 1;
        }
        Printer {
            source,
            tokens,
            comments,
            next: 0,
            parens: counts,
        }
    }

    // ---- comments and blank lines -----------------------------------------------------------

    /// Whether the comment has no code before it on its line.
    fn own_line(&self, c: &Comment) -> bool {
        let before = &self.source[..c.start];
        let line_start = before.rfind('\n').map_or(0, |n| n + 1);
        before[line_start..].trim().is_empty()
    }

    /// Whether a blank line separates `pos` from the code or comment before it.
    fn blank_before(&self, pos: usize) -> bool {
        let before = &self.source[..pos];
        let gap = before.len() - before.trim_end().len();
        before[before.len() - gap..].matches('\n').count() >= 2
    }

    /// Takes the comments that start before `pos`: (those after code on their line, those on
    /// their own line).
    fn take_before(&mut self, pos: usize) -> Vec<(Comment, bool)> {
        let mut out = Vec::new();
        while let Some(c) = self.comments.get(self.next) {
            if c.start >= pos {
                break;
            }
            let own = self.own_line(c);
            out.push((c.clone(), own));
            self.next += 1;
        }
        out
    }

    /// The comments before `pos`, placed around a possible line break `sep`: those that
    /// followed code stay on the line before it, those on their own line go after it (and so
    /// does any comment after one of those, to keep their order).
    fn at_break(&mut self, pos: usize, sep: Doc) -> Doc {
        let taken = self.take_before(pos);
        if taken.is_empty() {
            return sep;
        }
        let mut before = Vec::new();
        let mut after = Vec::new();
        for (c, own) in taken {
            if own || !after.is_empty() {
                after.push(text(c.text));
                after.push(Doc::Hard);
            } else {
                before.push(Doc::Suffix(c.text));
            }
        }
        before.push(sep);
        before.extend(after);
        concat(before)
    }

    /// The comments before `pos` where no line break belongs: each at the end of its line.
    fn at_space(&mut self, pos: usize, sep: &str) -> Doc {
        let taken = self.take_before(pos);
        let mut parts: Vec<Doc> = taken
            .into_iter()
            .map(|(c, _)| Doc::Suffix(c.text))
            .collect();
        parts.push(text(sep));
        concat(parts)
    }

    // ---- tokens -----------------------------------------------------------------------------

    fn token_index(&self, pos: usize) -> usize {
        self.tokens.partition_point(|t| t.0 < pos)
    }

    /// Where the expression starts, with the parentheses around it.
    fn outer_start(&self, e: &Expr) -> usize {
        let layers = self.paren_layers(e);
        let i = self.token_index(e.span.start as usize);
        i.checked_sub(layers)
            .and_then(|j| self.tokens.get(j))
            .map_or(e.span.start as usize, |t| t.0)
    }

    /// Where the comments that go before the expression end: its start, or for a negation
    /// without parentheses its operand's, so that a comment after the sign moves before it
    /// (and stays there when formatted again).
    fn lead_end(&self, e: &Expr) -> usize {
        match &e.kind {
            ExprKind::Neg(a) if self.paren_layers(e) == 0 => self.lead_end(a),
            _ => self.outer_start(e),
        }
    }

    fn paren_layers(&self, e: &Expr) -> usize {
        self.parens
            .get(&(e.span.start as usize, e.span.end as usize))
            .copied()
            .unwrap_or(0)
    }

    /// The source text of a span (literals are written as they were spelled).
    fn slice(&self, span: Span) -> &'s str {
        self.source.get(span.range()).unwrap_or("")
    }

    /// Whether the function result `e` was written after `return`.
    fn has_return(&self, e: &Expr) -> bool {
        let i = self.token_index(self.outer_start(e));
        i > 0 && self.tokens[i - 1].1 == Token::Return
    }

    // ---- blocks -----------------------------------------------------------------------------

    fn module(&mut self, module: &Module) -> String {
        let elements: Vec<Element> = module.items.iter().map(Element::Item).collect();
        let (opener, lines) = self.block(&elements, self.source.len(), 0);
        let mut out = String::new();
        for c in opener {
            out.push_str(&c);
            out.push('\n');
        }
        out.push_str(&lines);
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }

    /// Lays out the elements of a block (closed at byte `close`) at `indent`: the comments that
    /// belong on the opening line, and the lines of the block (no final newline).
    fn block(
        &mut self,
        elements: &[Element],
        close: usize,
        indent: usize,
    ) -> (Vec<String>, String) {
        let mut opener = Vec::new();
        // Pieces in order: an element, or a comment on a line of its own.
        let mut pieces: Vec<Result<usize, (String, bool)>> = Vec::new();
        let mut trailing: Vec<Option<String>> = vec![None; elements.len()];
        let mut built = Vec::with_capacity(elements.len());
        let mut blank = Vec::with_capacity(elements.len());
        for (i, e) in elements.iter().enumerate() {
            let start = self.element_start(e);
            let taken = self.take_before(start);
            self.place_comments(taken, &mut trailing, &mut opener, &mut pieces);
            blank.push(self.blank_before(start));
            built.push(self.element(e, indent));
            pieces.push(Ok(i));
        }
        let taken = self.take_before(close);
        self.place_comments(taken, &mut trailing, &mut opener, &mut pieces);

        let aligned = align(elements, &built, &blank);
        let mut built: Vec<Option<Built>> = built.into_iter().map(Some).collect();
        let mut lines: Vec<OutLine> = Vec::new();
        for piece in pieces {
            let first = lines.is_empty();
            match piece {
                Err((text, blank)) => lines.push(OutLine {
                    text: format!("{}{text}", " ".repeat(indent)),
                    comment: None,
                    blank_before: blank && !first,
                    single: false,
                }),
                Ok(i) => {
                    let b = built[i].take().expect("each element is laid out once");
                    let (text, mut comments) = match b {
                        Built::Lines(text) => (text, Vec::new()),
                        b => layout(&aligned_doc(b, &aligned[i]), indent),
                    };
                    comments.extend(trailing[i].take());
                    let mut comments = comments.into_iter();
                    lines.push(OutLine {
                        single: !text.contains('\n'),
                        text,
                        comment: comments.next(),
                        blank_before: blank[i] && !first,
                    });
                    // Two comments cannot share a line: the others follow the element.
                    for c in comments {
                        lines.push(OutLine {
                            text: format!("{}{c}", " ".repeat(indent)),
                            comment: None,
                            blank_before: false,
                            single: false,
                        });
                    }
                }
            }
        }
        (opener, join_lines(lines))
    }

    /// Places the comments met between elements: one after code on its line goes at the end
    /// of that line (the previous element's, or the block's opening line); one on its own
    /// line is a line of the block.
    fn place_comments(
        &self,
        taken: Vec<(Comment, bool)>,
        trailing: &mut [Option<String>],
        opener: &mut Vec<String>,
        pieces: &mut Vec<Result<usize, (String, bool)>>,
    ) {
        for (c, own) in taken {
            let blank = self.blank_before(c.start);
            match pieces.last() {
                _ if own => pieces.push(Err((c.text, blank))),
                Some(Ok(i)) if trailing[*i].is_none() => trailing[*i] = Some(c.text),
                None => opener.push(c.text),
                Some(_) => pieces.push(Err((c.text, blank))),
            }
        }
    }

    fn element_start(&self, e: &Element) -> usize {
        match e {
            Element::Result(x) => {
                let start = self.lead_end(x);
                if self.has_return(x) {
                    self.tokens[self.token_index(start) - 1].0
                } else {
                    start
                }
            }
            other => other.span().start as usize,
        }
    }

    /// Builds the layout of one element; comments inside it are taken on the way.
    fn element(&mut self, e: &Element, indent: usize) -> Built {
        let end = e.span().end as usize;
        let built = match e {
            Element::Item(item) => self.item(item, indent),
            Element::Stmt(s) => self.stmt(s, indent),
            Element::Entry(entry) => self.entry(entry, indent),
            Element::Result(x) => {
                let keyword = if self.has_return(x) { "return " } else { "" };
                let doc = self.sub(x, 0);
                Built::Doc(concat([text(keyword), doc]))
            }
        };
        // Comments left inside the element's span stay on its last line.
        let rest = self.at_space(end, "");
        match built {
            Built::Doc(d) => Built::Doc(concat([d, rest])),
            Built::Entry { key, value } => Built::Entry {
                key,
                value: concat([value, rest]),
            },
            Built::Decl {
                keyword,
                head,
                init: Some(init),
            } => Built::Decl {
                keyword,
                head,
                init: Some(concat([init, rest])),
            },
            Built::Decl {
                keyword,
                head,
                init: None,
            } => Built::Decl {
                keyword,
                head: concat([head, rest]),
                init: None,
            },
            lines => lines,
        }
    }

    /// `header {` the block's lines `}`.
    fn braced(&mut self, header: Doc, elements: &[Element], close: usize, indent: usize) -> Built {
        let (head, suffix) = layout(&concat([header, text(" {")]), indent);
        let (opener, body) = self.block(elements, close, indent + INDENT);
        let mut out = head;
        let mut comments = suffix.into_iter().chain(opener);
        let first = comments.next();
        if first.is_none() && body.is_empty() {
            out.push('}');
            return Built::Lines(out);
        }
        if let Some(c) = first {
            out.push_str("  ");
            out.push_str(&c);
        }
        // Two comments cannot share a line: the others open the block.
        let inner = " ".repeat(indent + INDENT);
        for c in comments {
            out.push('\n');
            out.push_str(&inner);
            out.push_str(&c);
        }
        if !body.is_empty() {
            out.push('\n');
            out.push_str(&body);
        }
        out.push('\n');
        out.push_str(&" ".repeat(indent));
        out.push('}');
        Built::Lines(out)
    }

    fn item(&mut self, item: &Item, indent: usize) -> Built {
        match item {
            Item::Use(u) => {
                let target = match &u.target {
                    UseTarget::Module(id) => id.name.clone(),
                    UseTarget::File(_) => {
                        let i = self.token_index(u.span.start as usize) + 1;
                        let t = &self.tokens[i.min(self.tokens.len() - 1)];
                        self.source[t.0..t.2].to_string()
                    }
                };
                Built::Doc(text(format!("use {target}")))
            }
            Item::Const(c) => Built::Doc(self.const_def(c)),
            Item::Fn(f) => {
                let mut header = vec![text(format!("fn {}", f.name.name))];
                let params: Vec<ListItem<'_, 's>> = f
                    .params
                    .iter()
                    .map(|p| {
                        let f: Box<dyn Fn(&mut Self) -> Doc + '_> =
                            Box::new(move |me: &mut Self| {
                                let mut parts = vec![text(p.name.name.clone())];
                                if let Some(t) = &p.ty {
                                    parts.push(me.at_space(t.span().start as usize, ": "));
                                    parts.push(me.ty(t));
                                }
                                concat(parts)
                            });
                        (p.name.span.start as usize, f)
                    })
                    .collect();
                let close = match (&f.ret, f.params.last()) {
                    (Some(t), _) => self.token_before(t.span().start as usize, 2),
                    (None, _) => self.token_before(f.body.span.start as usize, 1),
                };
                header.push(self.list("(", ")", params, close, false));
                if let Some(t) = &f.ret {
                    header.push(self.at_space(t.span().start as usize, " -> "));
                    header.push(self.ty(t));
                }
                let mut elements: Vec<Element> = f.body.stmts.iter().map(Element::Stmt).collect();
                if let Some(r) = &f.body.result {
                    elements.push(Element::Result(r));
                }
                header.push(self.at_space(f.body.span.start as usize, ""));
                self.braced(
                    concat(header),
                    &elements,
                    f.body.span.end as usize - 1,
                    indent,
                )
            }
            Item::Model(m) => {
                let elements: Vec<Element> = m.body.iter().map(Element::Stmt).collect();
                let header = text(format!("model {}", m.name.name));
                self.braced(header, &elements, m.span.end as usize - 1, indent)
            }
            Item::Train(t) => {
                let elements: Vec<Element> = t.entries.iter().map(Element::Entry).collect();
                let header = text(format!("train {}", t.model.name));
                self.braced(header, &elements, t.span.end as usize - 1, indent)
            }
        }
    }

    /// The start of the token `back` tokens before the one at `pos` (a closing bracket before
    /// `->` or `{`).
    fn token_before(&self, pos: usize, back: usize) -> usize {
        let i = self.token_index(pos);
        i.checked_sub(back)
            .and_then(|j| self.tokens.get(j))
            .map_or(pos, |t| t.0)
    }

    fn const_def(&mut self, c: &ConstDef) -> Doc {
        let value = self.value_after_eq(&c.value);
        concat([text(format!("const {}", c.name.name)), value])
    }

    /// ` = value`, with the comments before the value.
    fn value_after_eq(&mut self, value: &Expr) -> Doc {
        let start = self.lead_end(value);
        let eq = self.at_space(start, " = ");
        concat([eq, self.sub(value, 0)])
    }

    fn stmt(&mut self, s: &Stmt, indent: usize) -> Built {
        match s {
            Stmt::Decl {
                kind,
                name,
                ty,
                init,
                ..
            } => {
                let keyword = match kind {
                    DeclKind::Input => "input",
                    DeclKind::Target => "target",
                    DeclKind::Param => "param",
                    DeclKind::Frozen => "frozen",
                };
                let colon = self.at_space(ty.span().start as usize, ": ");
                let head = concat([text(name.name.clone()), colon, self.ty(ty)]);
                let init = init.as_ref().map(|e| {
                    let start = self.lead_end(e);
                    let comments = self.at_space(start, "");
                    concat([comments, self.sub(e, 0)])
                });
                Built::Decl {
                    keyword,
                    head,
                    init,
                }
            }
            Stmt::Let { pattern, value, .. } => {
                let p = self.pattern(pattern);
                let value = self.value_after_eq(value);
                Built::Doc(concat([text("let "), p, value]))
            }
            Stmt::Assign { name, value, .. } => {
                let value = self.value_after_eq(value);
                Built::Doc(concat([text(name.name.clone()), value]))
            }
            Stmt::Const(c) => Built::Doc(self.const_def(c)),
            Stmt::For {
                var,
                start,
                end,
                body,
                span,
            } => {
                let from = self.at_space(self.lead_end(start), " in ");
                let lo = self.sub(start, 0);
                let to = self.at_space(self.lead_end(end), "..");
                let hi = self.sub(end, 0);
                let header = concat([text(format!("for {}", var.name)), from, lo, to, hi]);
                let elements: Vec<Element> = body.iter().map(Element::Stmt).collect();
                self.braced(header, &elements, span.end as usize - 1, indent)
            }
            Stmt::Loss { value, .. } => {
                let start = self.lead_end(value);
                let sep = self.at_space(start, " ");
                Built::Doc(concat([text("loss"), sep, self.sub(value, 0)]))
            }
            // A file with errors is never formatted.
            Stmt::Error { span, .. } => Built::Doc(text(self.slice(*span).to_string())),
        }
    }

    fn entry(&mut self, entry: &TrainEntry, indent: usize) -> Built {
        match &entry.value {
            TrainValue::Expr(e) => {
                let start = self.lead_end(e);
                let comments = self.at_space(start, "");
                Built::Entry {
                    key: entry.key.name.clone(),
                    value: concat([comments, self.sub(e, 0)]),
                }
            }
            TrainValue::Block(entries, span) => {
                let close = span.end as usize - 1;
                let has_comment = self
                    .comments
                    .get(self.next)
                    .is_some_and(|c| c.start < span.end as usize);
                if !has_comment {
                    if let Some(line) = self.inline_block(&entry.key.name, entries, indent) {
                        // Nothing inside was taken: no comment lies there.
                        return Built::Lines(line);
                    }
                }
                let elements: Vec<Element> = entries.iter().map(Element::Entry).collect();
                let header = text(entry.key.name.clone());
                self.braced(header, &elements, close, indent)
            }
        }
    }

    /// `key { a = 1, b = 2 }` on one line, if it fits (and the block holds no comment).
    fn inline_block(&mut self, key: &str, entries: &[TrainEntry], indent: usize) -> Option<String> {
        let mut parts = Vec::new();
        for e in entries {
            match &e.value {
                TrainValue::Expr(x) => {
                    let doc = self.sub(x, 0);
                    let (value, suffix) = layout(&doc, 0);
                    if !suffix.is_empty() || value.contains('\n') {
                        return None;
                    }
                    parts.push(format!("{} = {value}", e.key.name));
                }
                TrainValue::Block(inner, _) => {
                    let line = self.inline_block(&e.key.name, inner, 0)?;
                    parts.push(line);
                }
            }
        }
        let line = if parts.is_empty() {
            format!("{key} {{}}")
        } else {
            format!("{key} {{ {} }}", parts.join(", "))
        };
        (indent + line.chars().count() <= WIDTH).then(|| format!("{}{line}", " ".repeat(indent)))
    }

    // ---- expressions ------------------------------------------------------------------------

    /// `e` with the parentheses it was written with, and those its place needs.
    fn sub(&mut self, e: &Expr, min_precedence: u8) -> Doc {
        let doc = self.expr(e);
        if self.paren_layers(e) > 0 || precedence(e) < min_precedence {
            concat([text("("), doc, text(")")])
        } else {
            doc
        }
    }

    fn expr(&mut self, e: &Expr) -> Doc {
        match &e.kind {
            ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Str(_) => {
                text(self.slice(e.span).to_string())
            }
            ExprKind::Bool(b) => text(b.to_string()),
            ExprKind::Name(id) => text(id.name.clone()),
            ExprKind::Neg(a) => {
                let sep = self.at_space(self.outer_start(a), "-");
                concat([sep, self.sub(a, 3)])
            }
            ExprKind::Binary(..) => {
                let level = precedence(e);
                // The chain of operators of this level, left to right.
                let mut rights: Vec<(BinOp, &Expr)> = Vec::new();
                let mut left = e;
                while let ExprKind::Binary(op, a, b) = &left.kind {
                    rights.push((*op, b));
                    let chained = precedence(a) == level && self.paren_layers(a) == 0;
                    left = a;
                    if !chained {
                        break;
                    }
                }
                rights.reverse();
                let first = self.sub(left, level);
                let mut rest = Vec::new();
                for (op, b) in rights {
                    rest.push(text(format!(" {}", op.symbol())));
                    let start = self.lead_end(b);
                    rest.push(self.at_break(start, Doc::Line));
                    rest.push(self.sub(b, level + 1));
                }
                Doc::Group(Box::new(concat([first, Doc::Nest(Box::new(concat(rest)))])))
            }
            ExprKind::Call { callee, args } => {
                let items = args
                    .iter()
                    .map(|a| {
                        let start = a
                            .name
                            .as_ref()
                            .map_or_else(|| self.lead_end(&a.value), |n| n.span.start as usize);
                        let f: Box<dyn Fn(&mut Self) -> Doc + '_> =
                            Box::new(move |me: &mut Self| {
                                let value_start = me.lead_end(&a.value);
                                match &a.name {
                                    Some(n) => {
                                        let eq = me.at_space(value_start, " = ");
                                        concat([text(n.name.clone()), eq, me.sub(&a.value, 0)])
                                    }
                                    None => me.sub(&a.value, 0),
                                }
                            });
                        (start, f)
                    })
                    .collect();
                let list = self.list("(", ")", items, e.span.end as usize - 1, false);
                concat([text(callee.name.clone()), list])
            }
            ExprKind::Index { base, indices } => {
                let b = self.sub(base, 4);
                let items = indices
                    .iter()
                    .map(|item| {
                        let start = match item {
                            IndexItem::At(x) => self.lead_end(x),
                            IndexItem::Range { span, .. } => span.start as usize,
                        };
                        let f: Box<dyn Fn(&mut Self) -> Doc + '_> =
                            Box::new(move |me: &mut Self| match item {
                                IndexItem::At(x) => me.sub(x, 0),
                                IndexItem::Range { start, end, .. } => {
                                    let mut parts = Vec::new();
                                    if let Some(s) = start {
                                        parts.push(me.sub(s, 0));
                                    }
                                    parts.push(text(".."));
                                    if let Some(x) = end {
                                        let at = me.lead_end(x);
                                        parts.push(me.at_space(at, ""));
                                        parts.push(me.sub(x, 0));
                                    }
                                    concat(parts)
                                }
                            });
                        (start, f)
                    })
                    .collect();
                let list = self.list("[", "]", items, e.span.end as usize - 1, false);
                concat([b, list])
            }
            ExprKind::Tuple(items) => {
                let one = items.len() == 1;
                let items = self.expr_items(items);
                self.list("(", ")", items, e.span.end as usize - 1, one)
            }
            ExprKind::List(items) => {
                let items = self.expr_items(items);
                self.list("[", "]", items, e.span.end as usize - 1, false)
            }
        }
    }

    fn expr_items<'e>(&self, items: &'e [Expr]) -> Vec<ListItem<'e, 's>> {
        items
            .iter()
            .map(|x| {
                let f: Box<dyn Fn(&mut Self) -> Doc + '_> =
                    Box::new(move |me: &mut Self| me.sub(x, 0));
                (self.lead_end(x), f)
            })
            .collect()
    }

    /// `open` items `close`: flat when it fits, else broken after `open` with the items packed
    /// on the following lines and a trailing comma. Each item is built (taking its comments)
    /// in order; `close_at` is the byte of the closing bracket. A one-element tuple keeps its
    /// comma always (`(a,)`).
    fn list(
        &mut self,
        open: &str,
        close: &str,
        items: Vec<ListItem<'_, 's>>,
        close_at: usize,
        one_tuple: bool,
    ) -> Doc {
        if items.is_empty() {
            let inside = self.at_break(close_at, Doc::SoftLine);
            return Doc::Group(Box::new(concat([text(open), inside, text(close)])));
        }
        let mut docs: Vec<Doc> = Vec::with_capacity(items.len());
        // Comments after the opening bracket, before the first item, in their order.
        let mut first = Vec::new();
        for (start, build) in items {
            let taken = self.take_before(start);
            let mut lead = Vec::new();
            for (c, own) in taken {
                if own || !lead.is_empty() {
                    lead.push(text(c.text));
                    lead.push(Doc::Hard);
                } else if let Some(prev) = docs.last_mut() {
                    let p = std::mem::replace(prev, Doc::SoftLine);
                    *prev = concat([p, Doc::Suffix(c.text)]);
                } else {
                    first.push(Doc::Suffix(c.text));
                }
            }
            lead.push(build(self));
            docs.push(concat(lead));
        }
        let comma = if one_tuple {
            text(",")
        } else {
            Doc::Broken(",")
        };
        let end = self.at_break(close_at, Doc::SoftLine);
        first.push(Doc::SoftLine);
        Doc::Group(Box::new(concat([
            text(open),
            Doc::Nest(Box::new(concat([concat(first), Doc::Fill(docs), comma]))),
            end,
            text(close),
        ])))
    }

    fn ty(&mut self, t: &TypeExpr) -> Doc {
        let close = t.span().end as usize - 1;
        match t {
            TypeExpr::Tensor { dims, .. } => {
                let items = self.expr_items(dims);
                self.list("[", "]", items, close, false)
            }
            TypeExpr::Tuple { items, .. } => {
                let items = items
                    .iter()
                    .map(|x| {
                        let f: Box<dyn Fn(&mut Self) -> Doc + '_> =
                            Box::new(move |me: &mut Self| me.ty(x));
                        (x.span().start as usize, f)
                    })
                    .collect();
                self.list("(", ")", items, close, false)
            }
        }
    }

    fn pattern(&mut self, p: &Pattern) -> Doc {
        match p {
            Pattern::Name(id) => text(id.name.clone()),
            Pattern::Tuple(items, span) => {
                let items = items
                    .iter()
                    .map(|x| {
                        let f: Box<dyn Fn(&mut Self) -> Doc + '_> =
                            Box::new(move |me: &mut Self| me.pattern(x));
                        (x.span().start as usize, f)
                    })
                    .collect();
                self.list("(", ")", items, span.end as usize - 1, false)
            }
        }
    }
}

/// The padding that lines a block's declarations and train entries up, per element.
#[derive(Clone, Default)]
struct Alignment {
    /// Width the declaration keyword or the entry key is padded to.
    key: usize,
    /// Width `keyword name: type` is padded to before ` = `.
    head: usize,
}

/// Runs of declarations, and of train entries, not parted by a blank line share their padding.
fn align(elements: &[Element], built: &[Built], blank: &[bool]) -> Vec<Alignment> {
    let mut out = vec![Alignment::default(); built.len()];
    let mut i = 0;
    while i < built.len() {
        let is_decl = matches!(built[i], Built::Decl { .. });
        let is_entry = matches!(elements[i], Element::Entry(_));
        if !is_decl && !is_entry {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < built.len()
            && (is_decl && matches!(built[j], Built::Decl { .. })
                || is_entry && matches!(elements[j], Element::Entry(_)))
            && !blank[j]
        {
            j += 1;
        }
        let run = i..j;
        if is_decl {
            let key = run
                .clone()
                .filter_map(|k| match &built[k] {
                    Built::Decl { keyword, .. } => Some(keyword.len()),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            let head = run
                .clone()
                .filter_map(|k| match &built[k] {
                    Built::Decl {
                        head,
                        init: Some(_),
                        ..
                    } => flat_width(head).map(|w| key + 1 + w),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            for k in run {
                out[k] = Alignment { key, head };
            }
        } else {
            let key = run
                .clone()
                .filter_map(|k| match &built[k] {
                    Built::Entry { key, .. } => Some(key.chars().count()),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            for k in run {
                out[k] = Alignment { key, head: 0 };
            }
        }
        i = j;
    }
    out
}

fn aligned_doc(built: Built, alignment: &Alignment) -> Doc {
    match built {
        Built::Decl {
            keyword,
            head,
            init,
        } => {
            let pad = alignment.key.saturating_sub(keyword.len());
            let lead = format!("{keyword}{} ", " ".repeat(pad));
            let mut parts = vec![text(lead.clone())];
            let width = flat_width(&head).map(|w| lead.len() + w);
            parts.push(head);
            if let Some(init) = init {
                let pad = width.map_or(0, |w| alignment.head.saturating_sub(w));
                parts.push(text(format!("{} = ", " ".repeat(pad))));
                parts.push(init);
            }
            concat(parts)
        }
        Built::Entry { key, value } => {
            let pad = alignment.key.saturating_sub(key.chars().count());
            concat([text(format!("{key}{} = ", " ".repeat(pad))), value])
        }
        Built::Doc(d) => d,
        Built::Lines(text) => Doc::Text(text),
    }
}

/// The block's lines, comments after code aligned across consecutive one-line elements.
fn join_lines(mut lines: Vec<OutLine>) -> String {
    let mut i = 0;
    while i < lines.len() {
        if !(lines[i].single && lines[i].comment.is_some()) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < lines.len()
            && lines[j].single
            && lines[j].comment.is_some()
            && !lines[j].blank_before
        {
            j += 1;
        }
        let column = lines[i..j]
            .iter()
            .map(|l| l.text.chars().count())
            .max()
            .unwrap_or(0);
        for line in &mut lines[i..j] {
            let pad = column - line.text.chars().count();
            line.text.push_str(&" ".repeat(pad));
        }
        i = j;
    }
    let mut out = String::new();
    for (k, line) in lines.iter().enumerate() {
        if k > 0 {
            out.push('\n');
            if line.blank_before {
                out.push('\n');
            }
        }
        out.push_str(&line.text);
        if let Some(c) = &line.comment {
            out.push_str("  ");
            out.push_str(c);
        }
    }
    out
}
