//! What the language server knows about one document, computed from its text alone: the
//! compiler's diagnostics, what each name is (kind, shape, op, predictive-coding role), where
//! it is defined, what may be typed at a position, and the document's outline.
//!
//! Everything here works on byte offsets into the document; `lsp` converts to and from the
//! protocol's positions. The compiler runs as `pcg check` runs it, with its notes on names
//! recorded (`sema::symbols`). Shapes are shown with their dimension names: the model is
//! compiled once more with each named dimension (`B` and each integer `const`) doubled, and a
//! dimension that follows one of them is written with its name (`[B, 4 * H]`). Nothing here may
//! panic on any text: a half-typed file is the normal case.

use crate::diag::Diagnostic;
use crate::pc::{self, Role};
use crate::sema::symbols::{self, SymbolIndex, ValueNote};
use crate::sema::{self, CompileOptions, Compiled};
use crate::source::{FileId, Sources, Span};
use crate::syntax::ast::{self, DeclKind, ExprKind, Item, Stmt, TrainValue};
use crate::syntax::lexer::{SpannedToken, Token};
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Where a definition lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// The document itself.
    Document,
    /// A file the document imports with `use "..."`.
    File(PathBuf),
    /// A module of the embedded stdlib (`nn`, `conv`, ...).
    Stdlib(String),
}

/// A span in a file of the analysis, with the text it indexes into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub place: Place,
    pub text: String,
    pub range: std::ops::Range<usize>,
}

/// The kind of a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionKind {
    Variable,
    Constant,
    Function,
    Keyword,
    Module,
    Property,
    Value,
}

/// Something that may be typed at a position.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub label: String,
    pub kind: CompletionKind,
    pub detail: String,
    /// What to insert, if not the label.
    pub insert: Option<String>,
    /// A line to insert at a byte offset along with it (the `use` of a stdlib module).
    pub also: Option<(usize, String)>,
}

/// The kind of an outline entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymbolKind {
    Module,
    Constant,
    Function,
    Model,
    Train,
    Input,
    Target,
    Param,
    Variable,
    Key,
}

/// An entry of the document's outline.
#[derive(Clone, Debug, PartialEq)]
pub struct Symbol {
    pub name: String,
    pub detail: String,
    pub kind: SymbolKind,
    /// The whole construct.
    pub range: std::ops::Range<usize>,
    /// Its name.
    pub selection: std::ops::Range<usize>,
    pub children: Vec<Symbol>,
}

/// One analysis of a document's text.
pub struct Analysis {
    path: PathBuf,
    text: String,
    /// Every file the compiler read: the document is file 0, then its imports.
    sources: Sources,
    /// Everything the compiler reported, in any file.
    pub diagnostics: Vec<Diagnostic>,
    module: ast::Module,
    tokens: Vec<SpannedToken>,
    index: SymbolIndex,
    compiled: Vec<Compiled>,
    /// The symbolic form of each noted shape, computed on the first hover.
    dim_names: OnceCell<DimNames>,
}

/// The document's file id in `Analysis::sources`.
const DOCUMENT: FileId = 0;

/// Analyses `text` as the content of the file at `path` (imports resolve next to it).
pub fn analyse(path: &Path, text: &str) -> Analysis {
    let name = path.display().to_string();
    let ((sources, result), index) =
        symbols::record(|| sema::check_source(&name, text, &CompileOptions::default()));
    let (compiled, diagnostics) = match result {
        Ok(c) => (c, Vec::new()),
        Err(d) => (Vec::new(), d),
    };
    let parsed = crate::syntax::parse_full(DOCUMENT, text);
    Analysis {
        path: path.to_path_buf(),
        text: text.to_string(),
        sources,
        diagnostics,
        module: parsed.module,
        tokens: parsed.tokens,
        index,
        compiled,
        dim_names: OnceCell::new(),
    }
}

impl Analysis {
    /// The document's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The place and text of a file of the analysis.
    pub fn location(&self, span: Span) -> Location {
        let name = self.sources.name(span.file);
        let place = if span.file == DOCUMENT {
            Place::Document
        } else if let Some(module) = name
            .strip_prefix("<stdlib>/")
            .and_then(|n| n.strip_suffix(".pcg"))
        {
            Place::Stdlib(module.to_string())
        } else {
            Place::File(PathBuf::from(name))
        };
        Location {
            place,
            text: self.sources.text(span.file).to_string(),
            range: span.range(),
        }
    }

    /// The call in the document that led to the `i`-th diagnostic, when that one lies in
    /// another file (inside a function of an import or of the stdlib).
    pub fn call_site(&self, i: usize) -> Option<Span> {
        self.index
            .call_errors
            .iter()
            .find(|(callee, reported)| callee.file == DOCUMENT && reported.contains(&i))
            .map(|(callee, _)| *callee)
    }

    /// The identifier token at `offset` (touching it at either end).
    fn ident_at(&self, offset: usize) -> Option<(String, Span)> {
        let i = self.tokens.partition_point(|t| t.2 < offset);
        self.tokens[i..]
            .iter()
            .take(2)
            .filter(|t| t.0 <= offset && offset <= t.2)
            .find_map(|(s, tok, e)| match tok {
                Token::Ident(name) => Some((name.clone(), Span::new(DOCUMENT, *s, *e))),
                _ => None,
            })
    }

    // ---- definitions --------------------------------------------------------------------

    /// Where the name at `offset` is defined.
    pub fn definition(&self, offset: usize) -> Option<Location> {
        if let Some(target) = self.use_target_at(offset) {
            return Some(target);
        }
        let (name, span) = self.ident_at(offset)?;
        if let Some(&(_, def)) = self.index.calls.iter().find(|(c, _)| *c == span) {
            return Some(self.location(def));
        }
        if let Some(&(_, binding)) = self.index.uses.iter().find(|(u, _)| *u == span) {
            return Some(self.location(binding));
        }
        // What analysis did not reach (a function no model calls, a file with errors): the
        // definitions of the document and of the files it uses, by name.
        self.global_definition(&name)
    }

    /// `use nn` or `use "file.pcg"` at `offset`: the module's file.
    fn use_target_at(&self, offset: usize) -> Option<Location> {
        self.module.items.iter().find_map(|item| {
            let Item::Use(u) = item else { return None };
            if !(u.span.start as usize <= offset && offset <= u.span.end as usize) {
                return None;
            }
            let file = (0..)
                .take_while(|&f| self.sources.files.get(f).is_ok())
                .find(|&f| {
                    let name = self.sources.name(f);
                    match &u.target {
                        ast::UseTarget::Module(id) => name == format!("<stdlib>/{}.pcg", id.name),
                        ast::UseTarget::File(rel) => {
                            f != DOCUMENT && Path::new(name).ends_with(rel.trim_start_matches("./"))
                        }
                    }
                })?;
            Some(self.location(Span::new(file, 0, 0)))
        })
    }

    /// A function, constant or model named `name` in any file of the analysis.
    fn global_definition(&self, name: &str) -> Option<Location> {
        let files = (0..).take_while(|&f| self.sources.files.get(f).is_ok());
        for file in files {
            let (module, _) = crate::syntax::parse(file, self.sources.text(file));
            for item in &module.items {
                let id = match item {
                    Item::Fn(f) => &f.name,
                    Item::Const(c) => &c.name,
                    Item::Model(m) => &m.name,
                    _ => continue,
                };
                if id.name == name {
                    return Some(self.location(id.span));
                }
            }
        }
        None
    }

    // ---- hover --------------------------------------------------------------------------

    /// What the name at `offset` is, as Markdown.
    pub fn hover(&self, offset: usize) -> Option<String> {
        let (name, span) = self.ident_at(offset)?;
        if let Some(&(_, def)) = self.index.calls.iter().find(|(c, _)| *c == span) {
            return Some(self.function_hover(def));
        }
        if let Some(params) = sema::builtin_signature(&name) {
            if self.next_token_is(span, &Token::LParen) {
                return Some(format!(
                    "```pcg\n{name}({})\n```\nbuiltin function",
                    params.join(", ")
                ));
            }
        }
        let binding = self
            .index
            .uses
            .iter()
            .find(|(u, _)| *u == span)
            .map_or(span, |&(_, b)| b);
        if let Some(text) = self.binding_hover(&name, binding) {
            return Some(text);
        }
        if name == "B" {
            return Some(
                "`B`: the batch dimension (the train block's `batch`, or `--batch`)".into(),
            );
        }
        // A function, constant or model no analysis reached.
        let def = self.global_definition(&name)?;
        Some(self.function_hover(self.span_of(&def)?))
    }

    fn span_of(&self, location: &Location) -> Option<Span> {
        let files = (0..).take_while(|&f| self.sources.files.get(f).is_ok());
        files
            .into_iter()
            .find(|&f| self.location(Span::new(f, 0, 0)).place == location.place)
            .map(|f| Span::new(f, location.range.start, location.range.end))
    }

    fn next_token_is(&self, span: Span, token: &Token) -> bool {
        let i = self.tokens.partition_point(|t| t.0 < span.end as usize);
        self.tokens.get(i).is_some_and(|t| &t.1 == token)
    }

    /// A function's signature and the comment above it; or a constant's or model's line.
    fn function_hover(&self, name_span: Span) -> String {
        let text = self.sources.text(name_span.file);
        let (module, _) = crate::syntax::parse(name_span.file, text);
        let place = match self.location(name_span).place {
            Place::Document => String::new(),
            Place::File(p) => format!(" (in `{}`)", p.display()),
            Place::Stdlib(m) => format!(" (stdlib `{m}`)"),
        };
        for item in &module.items {
            let (id, span, header_end) = match item {
                Item::Fn(f) => (&f.name, f.span, f.body.span.start as usize),
                Item::Const(c) => (&c.name, c.span, c.span.end as usize),
                Item::Model(m) => (&m.name, m.span, m.name.span.end as usize),
                _ => continue,
            };
            if id.span != name_span {
                continue;
            }
            let header = text
                .get(span.start as usize..header_end)
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let docs = comment_above(text, span.start as usize);
            let what = match item {
                Item::Fn(_) => "function",
                Item::Const(_) => "constant",
                _ => "model",
            };
            let mut out = format!("```pcg\n{header}\n```\n{what}{place}");
            if !docs.is_empty() {
                out.push_str("\n\n");
                out.push_str(&docs);
            }
            return out;
        }
        format!("`{}`{place}", text.get(name_span.range()).unwrap_or(""))
    }

    /// What a local binding is: its kind, shape, op and PC role.
    fn binding_hover(&self, name: &str, binding: Span) -> Option<String> {
        let site = self.site(binding);
        let notes: Vec<&ValueNote> = self
            .index
            .bindings
            .iter()
            .filter(|b| b.span == binding)
            .map(|b| &b.value)
            .collect();
        if site.is_none() && notes.is_empty() {
            return None;
        }
        let kind = site.as_ref().map_or("value", |s| s.keyword());
        let mut lines = Vec::new();
        // Distinct values, in order: a binding in a loop or an inlined function is noted at each
        // iteration or call.
        let mut seen: Vec<(&ValueNote, Vec<String>)> = Vec::new();
        for (k, note) in notes.iter().enumerate() {
            let symbolic = self.symbolic_shape(binding, k);
            if !seen
                .iter()
                .any(|(n, s)| same_value(n, note) && *s == symbolic)
            {
                seen.push((note, symbolic));
            }
        }
        let header = match seen.first() {
            Some((ValueNote::Tensor { .. }, symbolic)) => {
                format!("{kind} {name}: [{}]", symbolic.join(", "))
            }
            Some((ValueNote::Int(i), _)) => format!("{kind} {name} = {i}"),
            Some((ValueNote::Float(x), _)) => format!("{kind} {name} = {x}"),
            _ => match &site {
                Some(Site::Decl { ty, .. }) => format!("{kind} {name}: {ty}"),
                _ => format!("{kind} {name}"),
            },
        };
        lines.push(format!("```pcg\n{header}\n```"));
        if let Some(s) = &site {
            lines.push(s.describe());
        }
        for (note, symbolic) in seen.iter().take(4) {
            match note {
                ValueNote::Tensor { shape, op, node } => {
                    let concrete: Vec<String> = shape.iter().map(usize::to_string).collect();
                    let concrete = format!("[{}]", concrete.join(", "));
                    let named = format!("[{}]", symbolic.join(", "));
                    let shape_text = if named == concrete {
                        format!("shape `{concrete}`")
                    } else {
                        format!("shape `{named}` = `{concrete}`")
                    };
                    let role = self.role(binding, op, node.as_deref());
                    lines.push(format!("- {shape_text}, made by `{op}`{role}"));
                }
                ValueNote::Int(_) | ValueNote::Float(_) => {}
                ValueNote::Other(what) => lines.push(format!("- {what}")),
            }
        }
        if seen.len() > 4 {
            lines.push(format!("- … {} more", seen.len() - 4));
        }
        if notes.len() > 1 && seen.len() == 1 {
            lines.push(format!(
                "- bound {} times (a loop or several calls)",
                notes.len()
            ));
        }
        if notes.is_empty() && site.is_some() {
            lines.push("- not analysed: no model uses it, or the file has errors".into());
        }
        Some(lines.join("\n"))
    }

    /// `; PC: ...` for a tensor made by `op` and named `node`.
    fn role(&self, binding: Span, op: &str, node: Option<&str>) -> String {
        match op {
            "input" => return "; PC: clamped to the data".into(),
            "target" => return "; PC: clamped to the targets (drives the output's error)".into(),
            "param" => return "; PC: a parameter, learned by local updates".into(),
            "frozen" => {
                return "; PC: a constant, loaded with the parameters, never learned".into()
            }
            _ => {}
        }
        let Some(node) = node else {
            return String::new();
        };
        let model = self.model_around(binding);
        for c in &self.compiled {
            if model.is_some_and(|m| m != c.model_name) {
                continue;
            }
            let config = c
                .train
                .as_ref()
                .map(|t| t.inference.clone())
                .unwrap_or_default();
            // PC nodes are nodes of the forward program with its loops stacked.
            let stacked = pc::stack::stack(&c.forward);
            let graph = pc::analyse_stacked(&stacked, &config);
            let roles: Vec<Role> = graph
                .nodes
                .iter()
                .filter(|n| stacked.program.node(n.value).name.as_deref() == Some(node))
                .map(|n| n.role)
                .collect();
            if let Some(role) = roles.first() {
                return match role {
                    Role::Output => "; PC: output (its error is clamped to −∂L/∂μ)".into(),
                    Role::Relaxed { loss_reads: true } => {
                        "; PC: relaxed (value and error units), also read by the loss".into()
                    }
                    Role::Relaxed { .. } => "; PC: relaxed (a value unit and an error unit)".into(),
                };
            }
            if c.forward
                .nodes
                .iter()
                .any(|n| n.name.as_deref() == Some(node))
            {
                return "; PC: not a node (a constant, or a part of the loss)".into();
            }
        }
        if self.compiled.is_empty() {
            String::new()
        } else {
            "; PC: not used by the loss".into()
        }
    }

    /// The model whose body holds `span`, if the document's.
    fn model_around(&self, span: Span) -> Option<&str> {
        if span.file != DOCUMENT {
            return None;
        }
        self.module.items.iter().find_map(|item| match item {
            Item::Model(m) if m.span.start <= span.start && span.end <= m.span.end => {
                Some(m.name.name.as_str())
            }
            _ => None,
        })
    }

    /// What kind of binding the name at `span` is, read off the syntax tree.
    fn site(&self, span: Span) -> Option<Site> {
        if span.file != DOCUMENT {
            let (module, _) = crate::syntax::parse(span.file, self.sources.text(span.file));
            return find_site(&module, span, self.sources.text(span.file));
        }
        find_site(&self.module, span, &self.text)
    }

    // ---- dimension names ----------------------------------------------------------------

    /// The dimensions of the `k`-th note of `binding`, written with their names.
    fn symbolic_shape(&self, binding: Span, k: usize) -> Vec<String> {
        let names = self.dim_names.get_or_init(|| self.compute_dim_names());
        let Some(ValueNote::Tensor { shape, .. }) = self
            .index
            .bindings
            .iter()
            .filter(|b| b.span == binding)
            .nth(k)
            .map(|b| &b.value)
        else {
            return Vec::new();
        };
        shape
            .iter()
            .enumerate()
            .map(|(axis, &d)| {
                let effects = names.effects.get(&(binding, k, axis));
                symbolic_dim(d, effects.map_or(&[][..], |e| e.as_slice()))
            })
            .collect()
    }

    fn compute_dim_names(&self) -> DimNames {
        let mut out = DimNames::default();
        let base = occurrences(&self.index);
        let path = self.path.display().to_string();
        for (name, value) in self.named_dims() {
            let options = CompileOptions {
                dims: BTreeMap::from([(name.clone(), value.saturating_mul(2))]),
                ..CompileOptions::default()
            };
            let (_, index) = symbols::record(|| sema::check_source(&path, &self.text, &options));
            let other = occurrences(&index);
            for (key, shape) in &base {
                let Some(changed) = other.get(key) else {
                    continue;
                };
                if changed.len() != shape.len() {
                    continue;
                }
                for (axis, (&d, &d2)) in shape.iter().zip(changed).enumerate() {
                    if d != d2 {
                        out.effects
                            .entry((key.0, key.1, axis))
                            .or_default()
                            .push(Effect {
                                name: name.clone(),
                                value,
                                then: d2,
                            });
                    }
                }
            }
        }
        out
    }

    /// The dimensions a shape may be written with: `B` (the batch size the model was compiled
    /// with) and every integer `const` of the document.
    fn named_dims(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let mut batch = None;
        for item in &self.module.items {
            match item {
                Item::Const(c) => {
                    if let ExprKind::Int(v) = c.value.kind {
                        if v > 0 && v < (1 << 20) {
                            out.push((c.name.name.clone(), v as usize));
                        }
                    }
                }
                Item::Train(t) => {
                    let mut ignored = Vec::new();
                    batch = batch.or(Some(sema::train::configure(t, &mut ignored).batch));
                }
                _ => {}
            }
        }
        if let Some(b) = batch {
            out.push(("B".to_string(), b));
        }
        out
    }

    // ---- completion ---------------------------------------------------------------------

    /// What may be typed at `offset`.
    pub fn completions(&self, offset: usize) -> Vec<Completion> {
        let before: Vec<&SpannedToken> = self
            .tokens
            .iter()
            .take_while(|t| t.2 < offset || (t.2 == offset && !is_word(&t.1)))
            .collect();
        let context = block_context(&before);
        let last = before.last().map(|t| &t.1);
        let key_before_eq = match before.as_slice() {
            [.., (_, Token::Ident(k), _), (_, Token::Eq, _)] => Some(k.as_str()),
            [.., (_, Token::Target, _), (_, Token::Eq, _)] => Some("target"),
            _ => None,
        };
        match context.last().map(|c| c.as_str()) {
            Some("train") | Some("inference") | Some("precision") => {
                let block = context.last().map_or("", |c| c.as_str());
                match key_before_eq {
                    Some(key) => train_values(key),
                    None if block == "precision" => self.named_values(),
                    None => train_keys(block),
                }
            }
            None => match last {
                Some(Token::Use) => sema::STDLIB
                    .iter()
                    .map(|(name, text)| Completion {
                        label: name.to_string(),
                        kind: CompletionKind::Module,
                        detail: first_comment(text),
                        insert: None,
                        also: None,
                    })
                    .collect(),
                Some(Token::Train) => self
                    .module
                    .items
                    .iter()
                    .filter_map(|i| match i {
                        Item::Model(m) => Some(keyword_like(&m.name.name, "model")),
                        _ => None,
                    })
                    .collect(),
                _ => ["use", "const", "fn", "model", "train"]
                    .iter()
                    .map(|k| keyword_like(k, "keyword"))
                    .collect(),
            },
            Some(body) => {
                let in_model = body == "model";
                let after_decl_eq = in_model && key_before_eq.is_none() && {
                    // `param w: [..] = |`: an initialiser.
                    matches!(last, Some(Token::Eq))
                        && before
                            .iter()
                            .rev()
                            .skip(1)
                            .take_while(|t| !matches!(t.1, Token::Let | Token::Loss))
                            .any(|t| {
                                matches!(
                                    t.1,
                                    Token::Param | Token::Frozen | Token::Input | Token::Target
                                )
                            })
                };
                if after_decl_eq {
                    return initialisers();
                }
                self.expression_completions(&before, in_model)
            }
        }
    }

    fn expression_completions(&self, before: &[&SpannedToken], in_model: bool) -> Vec<Completion> {
        let mut out = Vec::new();
        for (name, span) in names_in_scope(before) {
            let detail = self
                .index
                .bindings
                .iter()
                .find(|b| b.span.file == DOCUMENT && b.span == span)
                .map(|b| describe_note(&b.value))
                .unwrap_or_default();
            out.push(Completion {
                label: name,
                kind: CompletionKind::Variable,
                detail,
                insert: None,
                also: None,
            });
        }
        for item in &self.module.items {
            match item {
                Item::Const(c) => out.push(Completion {
                    label: c.name.name.clone(),
                    kind: CompletionKind::Constant,
                    detail: "const".into(),
                    insert: None,
                    also: None,
                }),
                Item::Fn(f) => out.push(Completion {
                    label: f.name.name.clone(),
                    kind: CompletionKind::Function,
                    detail: signature_text(f, &self.text),
                    insert: None,
                    also: None,
                }),
                _ => {}
            }
        }
        for name in sema::BUILTINS {
            let params = sema::builtin_signature(name).unwrap_or(&[]);
            out.push(Completion {
                label: name.to_string(),
                kind: CompletionKind::Function,
                detail: format!("{name}({}) — builtin", params.join(", ")),
                insert: None,
                also: None,
            });
        }
        let used: Vec<&str> = self
            .module
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Use(ast::Use {
                    target: ast::UseTarget::Module(id),
                    ..
                }) => Some(id.name.as_str()),
                _ => None,
            })
            .collect();
        let use_at = self.use_insertion();
        for (module, text) in sema::STDLIB {
            let (parsed, _) = crate::syntax::parse(DOCUMENT, text);
            for item in &parsed.items {
                let Item::Fn(f) = item else { continue };
                let imported = used.contains(module);
                out.push(Completion {
                    label: f.name.name.clone(),
                    kind: CompletionKind::Function,
                    detail: if imported {
                        format!("{} — stdlib {module}", signature_text(f, text))
                    } else {
                        format!(
                            "{} — stdlib {module} (adds `use {module}`)",
                            signature_text(f, text)
                        )
                    },
                    insert: None,
                    also: (!imported).then(|| (use_at, format!("use {module}\n"))),
                });
            }
        }
        let keywords: &[&str] = if in_model {
            &[
                "let", "loss", "for", "const", "input", "target", "param", "frozen",
            ]
        } else {
            &["let", "for", "const", "return"]
        };
        out.extend(keywords.iter().map(|k| keyword_like(k, "keyword")));
        out
    }

    /// Where a new `use` line goes: after the last `use`, else at the top (after the leading
    /// comment).
    fn use_insertion(&self) -> usize {
        let last_use = self
            .module
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Use(u) => Some(u.span.end as usize),
                _ => None,
            })
            .max();
        match last_use {
            Some(end) => self.text[end..]
                .find('\n')
                .map_or(self.text.len(), |n| end + n + 1),
            None => self.tokens.first().map_or(self.text.len(), |t| {
                self.text[..t.0].rfind('\n').map_or(0, |n| n + 1)
            }),
        }
    }

    /// The named values of the document's models (the keys a `precision` block takes).
    fn named_values(&self) -> Vec<Completion> {
        let mut out: Vec<Completion> = Vec::new();
        for item in &self.module.items {
            if let Item::Model(m) = item {
                for stmt in &m.body {
                    if let Stmt::Let {
                        pattern: ast::Pattern::Name(id),
                        ..
                    } = stmt
                    {
                        out.push(Completion {
                            label: id.name.clone(),
                            kind: CompletionKind::Property,
                            detail: format!("precision of `{}`", id.name),
                            insert: Some(format!("{} = 1.0", id.name)),
                            also: None,
                        });
                    }
                }
            }
        }
        out
    }

    // ---- outline ------------------------------------------------------------------------

    /// The document's items and what they declare.
    pub fn symbols(&self) -> Vec<Symbol> {
        let mut out = Vec::new();
        for item in &self.module.items {
            match item {
                Item::Use(u) => {
                    let name = match &u.target {
                        ast::UseTarget::Module(id) => id.name.clone(),
                        ast::UseTarget::File(f) => f.clone(),
                    };
                    out.push(symbol(
                        name,
                        "use",
                        SymbolKind::Module,
                        u.span,
                        u.span,
                        vec![],
                    ));
                }
                Item::Const(c) => out.push(symbol(
                    c.name.name.clone(),
                    self.slice(c.value.span),
                    SymbolKind::Constant,
                    c.span,
                    c.name.span,
                    vec![],
                )),
                Item::Fn(f) => {
                    let children = stmt_symbols(&f.body.stmts, &self.text);
                    out.push(symbol(
                        f.name.name.clone(),
                        &signature_text(f, &self.text),
                        SymbolKind::Function,
                        f.span,
                        f.name.span,
                        children,
                    ));
                }
                Item::Model(m) => out.push(symbol(
                    m.name.name.clone(),
                    "model",
                    SymbolKind::Model,
                    m.span,
                    m.name.span,
                    stmt_symbols(&m.body, &self.text),
                )),
                Item::Train(t) => out.push(symbol(
                    format!("train {}", t.model.name),
                    "train",
                    SymbolKind::Train,
                    t.span,
                    t.model.span,
                    entry_symbols(&t.entries, &self.text),
                )),
            }
        }
        out
    }

    fn slice(&self, span: Span) -> &str {
        self.text.get(span.range()).unwrap_or("")
    }
}

/// The symbolic form of noted shapes: for each axis of each noted shape (binding, occurrence,
/// axis), the named dimensions whose doubling changed it.
#[derive(Default)]
struct DimNames {
    effects: HashMap<(Span, usize, usize), Vec<Effect>>,
}

/// A named dimension of `value` that, doubled, made an axis `then` long.
#[derive(Clone, Debug)]
struct Effect {
    name: String,
    value: usize,
    then: usize,
}

/// The tensor shapes of an index by (binding, occurrence).
fn occurrences(index: &SymbolIndex) -> HashMap<(Span, usize), Vec<usize>> {
    let mut counts: HashMap<Span, usize> = HashMap::new();
    let mut out = HashMap::new();
    for b in &index.bindings {
        let k = counts.entry(b.span).or_default();
        if let ValueNote::Tensor { shape, .. } = &b.value {
            out.insert((b.span, *k), shape.clone());
        }
        *k += 1;
    }
    out
}

/// A dimension of size `d` written with the names whose doubling changed it: `H`, `4 * H`,
/// `H / 2`, `H + 1`, `V + H`, `B * T`, or the number when no such form explains the changes.
fn symbolic_dim(d: usize, effects: &[Effect]) -> String {
    let plain = d.to_string();
    match effects {
        [] => plain,
        [Effect { name, value, then }] => {
            let (v, then) = (*value, *then);
            if then == 2 * d && v > 0 && d.is_multiple_of(v) {
                match d / v {
                    1 => name.clone(),
                    k => format!("{k} * {name}"),
                }
            } else if then == 2 * d && d > 0 && v.is_multiple_of(d) {
                format!("{name} / {}", v / d)
            } else if then == d + v {
                match d as i64 - v as i64 {
                    0 => name.clone(),
                    c if c > 0 => format!("{name} + {c}"),
                    c => format!("{name} - {}", -c),
                }
            } else {
                plain
            }
        }
        many => {
            let names: Vec<&str> = many.iter().map(|e| e.name.as_str()).collect();
            let product: Option<usize> =
                many.iter().try_fold(1usize, |p, e| p.checked_mul(e.value));
            if many.iter().all(|e| e.then == 2 * d) && product == Some(d) {
                names.join(" * ")
            } else if many.iter().all(|e| e.then == d + e.value)
                && many.iter().map(|e| e.value).sum::<usize>() == d
            {
                names.join(" + ")
            } else {
                plain
            }
        }
    }
}

fn same_value(a: &ValueNote, b: &ValueNote) -> bool {
    match (a, b) {
        (
            ValueNote::Tensor {
                shape: s, op: o, ..
            },
            ValueNote::Tensor {
                shape: t, op: p, ..
            },
        ) => s == t && o == p,
        _ => a == b,
    }
}

fn describe_note(note: &ValueNote) -> String {
    match note {
        ValueNote::Tensor { shape, .. } => {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("[{}]", dims.join(", "))
        }
        ValueNote::Int(i) => i.to_string(),
        ValueNote::Float(x) => x.to_string(),
        ValueNote::Other(what) => what.clone(),
    }
}

/// The kind of a binding, as the syntax shows it.
enum Site {
    Decl {
        kind: DeclKind,
        ty: String,
        init: Option<String>,
    },
    Let,
    Param {
        function: String,
    },
    LoopVar,
    Const,
    Assign,
}

impl Site {
    fn keyword(&self) -> &'static str {
        match self {
            Site::Decl {
                kind: DeclKind::Input,
                ..
            } => "input",
            Site::Decl {
                kind: DeclKind::Target,
                ..
            } => "target",
            Site::Decl {
                kind: DeclKind::Param,
                ..
            } => "param",
            Site::Decl {
                kind: DeclKind::Frozen,
                ..
            } => "frozen",
            Site::Let | Site::Assign => "let",
            Site::Param { .. } => "fn parameter",
            Site::LoopVar => "for",
            Site::Const => "const",
        }
    }

    fn describe(&self) -> String {
        match self {
            Site::Decl { kind, ty, init } => {
                let what = match kind {
                    DeclKind::Input => "an input, declared",
                    DeclKind::Target => "a target, declared",
                    DeclKind::Param => "a parameter, declared",
                    DeclKind::Frozen => "a frozen tensor (never trained), declared",
                };
                match init {
                    Some(init) => format!("{what} `{ty}`, initialised by `{init}`"),
                    None => format!("{what} `{ty}`"),
                }
            }
            Site::Let => "a value bound by `let`".into(),
            Site::Param { function } => format!("a parameter of `fn {function}`"),
            Site::LoopVar => "a loop counter (a compile-time integer)".into(),
            Site::Const => "a compile-time constant".into(),
            Site::Assign => "the value this assignment binds".into(),
        }
    }
}

fn find_site(module: &ast::Module, span: Span, text: &str) -> Option<Site> {
    let slice = |s: Span| text.get(s.range()).unwrap_or("").to_string();
    fn in_stmts(stmts: &[Stmt], span: Span, slice: &dyn Fn(Span) -> String) -> Option<Site> {
        for stmt in stmts {
            match stmt {
                Stmt::Decl {
                    kind,
                    name,
                    ty,
                    init,
                    ..
                } if name.span == span => {
                    return Some(Site::Decl {
                        kind: *kind,
                        ty: slice(ty.span()),
                        init: init.as_ref().map(|e| slice(e.span)),
                    })
                }
                Stmt::Let { pattern, .. } if pattern_has(pattern, span) => return Some(Site::Let),
                Stmt::Assign { name, .. } if name.span == span => return Some(Site::Assign),
                Stmt::Const(c) if c.name.span == span => return Some(Site::Const),
                Stmt::For { var, body, .. } => {
                    if var.span == span {
                        return Some(Site::LoopVar);
                    }
                    if let Some(s) = in_stmts(body, span, slice) {
                        return Some(s);
                    }
                }
                _ => {}
            }
        }
        None
    }
    for item in &module.items {
        let found = match item {
            Item::Const(c) if c.name.span == span => Some(Site::Const),
            Item::Fn(f) => f
                .params
                .iter()
                .any(|p| p.name.span == span)
                .then(|| Site::Param {
                    function: f.name.name.clone(),
                })
                .or_else(|| in_stmts(&f.body.stmts, span, &slice)),
            Item::Model(m) => in_stmts(&m.body, span, &slice),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

fn pattern_has(p: &ast::Pattern, span: Span) -> bool {
    match p {
        ast::Pattern::Name(id) => id.span == span,
        ast::Pattern::Tuple(items, _) => items.iter().any(|i| pattern_has(i, span)),
    }
}

/// The `//` comment lines right above byte `at` (a function's documentation), without `//`.
fn comment_above(text: &str, at: usize) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for line in text[..at.min(text.len())].lines().rev() {
        let t = line.trim();
        match t.strip_prefix("//") {
            Some(c) => lines.push(c.trim()),
            None if t.is_empty() && lines.is_empty() => {}
            None => break,
        }
    }
    lines.reverse();
    lines.join("\n")
}

fn first_comment(text: &str) -> String {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("//"))
        .map_or(String::new(), |c| c.trim().to_string())
}

/// `fn name(params) -> ret`, as written.
fn signature_text(f: &ast::FnDef, text: &str) -> String {
    text.get(f.span.start as usize..f.body.span.start as usize)
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_word(t: &Token) -> bool {
    matches!(
        t,
        Token::Ident(_)
            | Token::Use
            | Token::Fn
            | Token::Model
            | Token::Train
            | Token::Input
            | Token::Target
            | Token::Param
            | Token::Frozen
            | Token::Let
            | Token::Const
            | Token::Loss
            | Token::For
            | Token::In
            | Token::Return
            | Token::True
            | Token::False
            | Token::Int(_)
            | Token::Float(_)
    )
}

/// The blocks open at the end of `tokens`, outermost first: `model`, `fn`, `for`, `train`,
/// or a train entry's key (`inference`, `precision`).
fn block_context(tokens: &[&SpannedToken]) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match &t.1 {
            Token::LBrace => {
                let owner = tokens[..i]
                    .iter()
                    .rev()
                    .find_map(|t| match &t.1 {
                        Token::Model => Some("model".to_string()),
                        Token::Fn => Some("fn".to_string()),
                        Token::For => Some("for".to_string()),
                        Token::Train => Some("train".to_string()),
                        Token::Ident(k) if stack.last().is_some_and(|s| is_train_block(s)) => {
                            Some(k.clone())
                        }
                        Token::RBrace | Token::LBrace => Some(String::new()),
                        _ => None,
                    })
                    .unwrap_or_default();
                // A `for` inside a model or function body keeps that body's kind.
                let owner = if owner == "for" {
                    stack
                        .iter()
                        .rev()
                        .find(|s| *s == "model" || *s == "fn")
                        .cloned()
                        .unwrap_or(owner)
                } else {
                    owner
                };
                stack.push(owner);
            }
            Token::RBrace => {
                stack.pop();
            }
            _ => {}
        }
    }
    stack
}

fn is_train_block(s: &str) -> bool {
    s == "train" || s == "inference" || s == "precision"
}

/// The names bound before the end of `tokens` in the scopes still open there: declarations,
/// `let`s, loop counters, `const`s and the parameters of the enclosing function.
fn names_in_scope(tokens: &[&SpannedToken]) -> Vec<(String, Span)> {
    let mut scopes: Vec<Vec<(String, Span)>> = vec![Vec::new()];
    let mut i = 0;
    let ident = |k: usize| match tokens.get(k) {
        Some((s, Token::Ident(n), e)) => Some((n.clone(), Span::new(DOCUMENT, *s, *e))),
        _ => None,
    };
    while i < tokens.len() {
        match &tokens[i].1 {
            Token::LBrace => scopes.push(Vec::new()),
            Token::RBrace => {
                scopes.pop();
                if scopes.is_empty() {
                    scopes.push(Vec::new());
                }
            }
            Token::Fn | Token::Model | Token::Train if scopes.len() == 1 => {
                scopes[0].clear();
                if tokens[i].1 == Token::Fn {
                    // Parameters: names at depth 1 of the parameter list.
                    let mut depth = 0;
                    let mut k = i + 1;
                    while k < tokens.len() {
                        match tokens[k].1 {
                            Token::LParen | Token::LBracket => depth += 1,
                            Token::RParen | Token::RBracket => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            Token::Ident(_) if depth == 1 => {
                                if matches!(
                                    tokens.get(k + 1).map(|t| &t.1),
                                    Some(Token::Colon | Token::Comma | Token::RParen) | None
                                ) {
                                    if let Some(b) = ident(k) {
                                        scopes[0].push(b);
                                    }
                                }
                            }
                            _ => {}
                        }
                        k += 1;
                    }
                }
            }
            Token::Let => {
                // `let name` or `let (a, (b, c))`: names up to `=`.
                let mut k = i + 1;
                while k < tokens.len() && !matches!(tokens[k].1, Token::Eq) {
                    if let Some(b) = ident(k) {
                        scopes.last_mut().expect("a scope").push(b);
                    }
                    if !matches!(
                        tokens[k].1,
                        Token::Ident(_) | Token::LParen | Token::RParen | Token::Comma
                    ) {
                        break;
                    }
                    k += 1;
                }
            }
            Token::Input | Token::Target | Token::Param | Token::Frozen | Token::Const => {
                if let Some(b) = ident(i + 1) {
                    scopes.last_mut().expect("a scope").push(b);
                }
            }
            Token::For => {
                // The counter belongs to the loop's body.
                if let Some(b) = ident(i + 1) {
                    let brace = (i..tokens.len()).find(|&k| tokens[k].1 == Token::LBrace);
                    if let Some(brace) = brace {
                        scopes.push(vec![b]);
                        i = brace + 1;
                        continue;
                    }
                    scopes.last_mut().expect("a scope").push(b);
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut out: Vec<(String, Span)> = Vec::new();
    for scope in scopes.into_iter().rev() {
        for (name, span) in scope.into_iter().rev() {
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, span));
            }
        }
    }
    out
}

fn keyword_like(label: &str, detail: &str) -> Completion {
    Completion {
        label: label.to_string(),
        kind: CompletionKind::Keyword,
        detail: detail.to_string(),
        insert: None,
        also: None,
    }
}

fn value(label: &str, detail: &str, insert: Option<&str>) -> Completion {
    Completion {
        label: label.to_string(),
        kind: CompletionKind::Value,
        detail: detail.to_string(),
        insert: insert.map(str::to_string),
        also: None,
    }
}

/// The keys of a train block (`train`) or of its `inference` block.
fn train_keys(block: &str) -> Vec<Completion> {
    let keys: &[(&str, &str, &str)] = if block == "inference" {
        &[
            ("mode", "fixed | strict | exact", "mode = fixed"),
            ("steps", "relaxation steps T", "steps = 20"),
            ("rate", "relaxation step size η", "rate = 0.1"),
            (
                "momentum",
                "heavy-ball momentum of the value units",
                "momentum = 0.9",
            ),
            (
                "target",
                "clamp | nudge(beta) | centered(beta)",
                "target = clamp",
            ),
            ("schedule", "standard | incremental", "schedule = standard"),
            (
                "tol",
                "stop when the energy changes by at most this",
                "tol = 1e-6",
            ),
            ("nodes", "named | all", "nodes = named"),
            ("precision", "precision per named node", "precision { }"),
        ]
    } else {
        &[
            ("data", "the data set", "data = digits"),
            ("method", "pc | bp", "method = pc"),
            (
                "inference",
                "the relaxation settings",
                "inference { mode = fixed, steps = 20, rate = 0.1 }",
            ),
            (
                "optimizer",
                "sgd(...) | adam(...)",
                "optimizer = sgd(lr = 0.01)",
            ),
            ("batch", "batch size (binds B)", "batch = 32"),
            ("epochs", "passes over the data", "epochs = 1"),
            ("seed", "initialisation and shuffling seed", "seed = 0"),
            ("clip", "clip each update to this L2 norm", "clip = 1.0"),
        ]
    };
    keys.iter()
        .map(|(k, detail, insert)| Completion {
            label: k.to_string(),
            kind: CompletionKind::Property,
            detail: detail.to_string(),
            insert: Some(insert.to_string()),
            also: None,
        })
        .collect()
}

/// The values a train key takes.
fn train_values(key: &str) -> Vec<Completion> {
    match key {
        "method" => vec![
            value("pc", "predictive coding", None),
            value("bp", "backprop", None),
        ],
        "mode" => vec![
            value(
                "fixed",
                "frozen predictions: converges to backprop's gradients",
                None,
            ),
            value(
                "strict",
                "predictions recomputed every step (standard PC)",
                None,
            ),
            value(
                "exact",
                "step size 1, a reverse sweep: backprop's gradients",
                None,
            ),
            value(
                "epc",
                "error-based PC: the strict energy relaxed through its errors",
                None,
            ),
        ],
        "energy" => vec![
            value("sum", "½ Σ π ‖ε‖² over the batch", None),
            value(
                "mean",
                "each node's term averaged over the batch (PCX)",
                None,
            ),
        ],
        "schedule" => vec![
            value("standard", "learn once, after the relaxation", None),
            value(
                "incremental",
                "learn after every relaxation step (iPC)",
                None,
            ),
        ],
        "nodes" => vec![
            value("named", "values bound by let are PC nodes", None),
            value("all", "every operation is a PC node", None),
        ],
        "target" => vec![
            value("clamp", "the output's error is −∂L/∂μ", None),
            value("nudge", "the loss scaled by β", Some("nudge(beta = 0.1)")),
            value(
                "centered",
                "±β, equilibrium propagation's estimate",
                Some("centered(beta = 0.1)"),
            ),
        ],
        "optimizer" => vec![
            value(
                "sgd",
                "sgd(lr, momentum, weight_decay)",
                Some("sgd(lr = 0.01, momentum = 0.9)"),
            ),
            value(
                "adam",
                "adam(lr, beta1, beta2, eps, weight_decay)",
                Some("adam(lr = 0.001)"),
            ),
        ],
        "data" => vec![
            value("digits", "1797 UCI digits, 8×8 (built in)", None),
            value("mnist5k", "5000 MNIST digits, 28×28 (built in)", None),
            value(
                "fmnist",
                "Fashion-MNIST (Debian's dataset-fashion-mnist)",
                None,
            ),
            value(
                "shakespeare",
                "character windows (built in)",
                Some("shakespeare(seq = 50)"),
            ),
            value(
                "text",
                "character windows of a text file",
                Some("text(\"file.txt\", seq = 50)"),
            ),
            value(
                "npz",
                "x_train, y_train, x_test, y_test arrays",
                Some("npz(\"data.npz\")"),
            ),
            value("csv", "features, label last", Some("csv(\"data.csv\")")),
        ],
        _ => Vec::new(),
    }
}

fn initialisers() -> Vec<Completion> {
    [
        ("zeros", None),
        ("ones", None),
        ("xavier", None),
        ("glorot", None),
        ("he", None),
        ("kaiming", None),
        ("normal", Some("normal(0.1)")),
        ("uniform", Some("uniform(-0.1, 0.1)")),
        ("constant", Some("constant(1)")),
    ]
    .iter()
    .map(|(name, insert)| value(name, "initialiser", *insert))
    .collect()
}

fn symbol(
    name: String,
    detail: &str,
    kind: SymbolKind,
    range: Span,
    selection: Span,
    children: Vec<Symbol>,
) -> Symbol {
    Symbol {
        name,
        detail: detail.to_string(),
        kind,
        range: range.range(),
        selection: selection.range(),
        children,
    }
}

fn stmt_symbols(stmts: &[Stmt], text: &str) -> Vec<Symbol> {
    let slice = |s: Span| text.get(s.range()).unwrap_or("").to_string();
    let mut out = Vec::new();
    for stmt in stmts {
        match stmt {
            Stmt::Decl {
                kind,
                name,
                ty,
                span,
                ..
            } => {
                let k = match kind {
                    DeclKind::Input => SymbolKind::Input,
                    DeclKind::Target => SymbolKind::Target,
                    DeclKind::Param | DeclKind::Frozen => SymbolKind::Param,
                };
                out.push(symbol(
                    name.name.clone(),
                    &slice(ty.span()),
                    k,
                    *span,
                    name.span,
                    vec![],
                ));
            }
            Stmt::Let { pattern, span, .. } => {
                let mut names = Vec::new();
                collect_pattern(pattern, &mut names);
                for id in names {
                    out.push(symbol(
                        id.name.clone(),
                        "let",
                        SymbolKind::Variable,
                        *span,
                        id.span,
                        vec![],
                    ));
                }
            }
            Stmt::Const(c) => out.push(symbol(
                c.name.name.clone(),
                &slice(c.value.span),
                SymbolKind::Constant,
                c.span,
                c.name.span,
                vec![],
            )),
            Stmt::For { body, .. } => out.extend(stmt_symbols(body, text)),
            _ => {}
        }
    }
    out
}

fn collect_pattern<'a>(p: &'a ast::Pattern, out: &mut Vec<&'a ast::Ident>) {
    match p {
        ast::Pattern::Name(id) => out.push(id),
        ast::Pattern::Tuple(items, _) => items.iter().for_each(|i| collect_pattern(i, out)),
    }
}

fn entry_symbols(entries: &[ast::TrainEntry], text: &str) -> Vec<Symbol> {
    entries
        .iter()
        .map(|e| {
            let (detail, children) = match &e.value {
                TrainValue::Expr(x) => (text.get(x.span.range()).unwrap_or("").to_string(), vec![]),
                TrainValue::Block(inner, _) => (String::new(), entry_symbols(inner, text)),
            };
            symbol(
                e.key.name.clone(),
                &detail,
                SymbolKind::Key,
                e.span,
                e.key.span,
                children,
            )
        })
        .collect()
}
