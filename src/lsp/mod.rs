//! The language server (`pcg lsp`): the compiler's knowledge of a `.pcg` file in an editor,
//! over the Language Server Protocol on stdin and stdout.
//!
//! It offers the diagnostics of `pcg check` as the user types (the same codes, spans, notes
//! and help; an error in an imported file is shown at the `use` that brings it in), hover
//! (what a name is: its kind, shape with dimension names, the op that makes it and its role in
//! the predictive-coding network), go to definition (into imported files and into the
//! embedded stdlib, written out to a cache directory so that editors can open it), completion
//! (names in scope, builtins, stdlib functions with the `use` they need, train-block keys and
//! values, initialisers), the document outline and formatting (`pcg fmt`).
//!
//! `analysis` computes all of it from a document's text; this module speaks the protocol
//! (`lsp-server` for the transport, `lsp-types` for the messages), keeps the open documents
//! and converts between byte offsets and the protocol's UTF-16 positions. Documents are synced
//! whole; a burst of edits is analysed once, after the last. A panic while answering one
//! message is caught and answered as an error: the server keeps running.

pub mod analysis;

use analysis::{Analysis, Completion, CompletionKind, Place, Symbol, SymbolKind};
use lsp_server::{Connection, ErrorCode, Message, Notification, Request, Response};
use lsp_types as lsp;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Runs the server on stdin and stdout until the client shuts it down.
pub fn serve_stdio() -> Result<(), String> {
    let (connection, io_threads) = Connection::stdio();
    serve(&connection)?;
    drop(connection);
    io_threads.join().map_err(|e| e.to_string())
}

/// Runs the server on a connection (stdio, or in memory for tests) until shutdown.
pub fn serve(connection: &Connection) -> Result<(), String> {
    let capabilities = serde_json::to_value(capabilities()).map_err(|e| e.to_string())?;
    connection
        .initialize(capabilities)
        .map_err(|e| e.to_string())?;
    let mut server = Server {
        documents: HashMap::new(),
        closed: Vec::new(),
        stdlib_dir: stdlib_cache(),
    };
    loop {
        let Ok(message) = connection.receiver.recv() else {
            return Ok(());
        };
        match message {
            Message::Request(request) => {
                if connection
                    .handle_shutdown(&request)
                    .map_err(|e| e.to_string())?
                {
                    return Ok(());
                }
                let id = request.id.clone();
                let response = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    server.request(request)
                }))
                .unwrap_or_else(|_| {
                    Response::new_err(
                        id,
                        ErrorCode::InternalError as i32,
                        "internal error in the pcg language server".to_string(),
                    )
                });
                send(connection, Message::Response(response))?;
            }
            Message::Notification(note) => {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    server.notification(note)
                }));
            }
            Message::Response(_) => {}
        }
        // Analyse once the burst of messages is over.
        if connection.receiver.is_empty() {
            for note in server.publish() {
                send(connection, Message::Notification(note))?;
            }
        }
    }
}

fn send(connection: &Connection, message: Message) -> Result<(), String> {
    connection.sender.send(message).map_err(|e| e.to_string())
}

fn capabilities() -> lsp::ServerCapabilities {
    lsp::ServerCapabilities {
        text_document_sync: Some(lsp::TextDocumentSyncCapability::Kind(
            lsp::TextDocumentSyncKind::FULL,
        )),
        hover_provider: Some(lsp::HoverProviderCapability::Simple(true)),
        definition_provider: Some(lsp::OneOf::Left(true)),
        completion_provider: Some(lsp::CompletionOptions {
            trigger_characters: Some(vec!["=".into(), " ".into()]),
            ..Default::default()
        }),
        document_symbol_provider: Some(lsp::OneOf::Left(true)),
        document_formatting_provider: Some(lsp::OneOf::Left(true)),
        ..Default::default()
    }
}

/// An open document.
struct Document {
    text: String,
    version: i32,
    path: PathBuf,
    /// The analysis of `text`, made when first needed.
    analysis: Option<Analysis>,
    /// Whether its diagnostics are still to be published.
    dirty: bool,
}

impl Document {
    fn analysis(&mut self) -> &Analysis {
        let (path, text) = (&self.path, &self.text);
        self.analysis
            .get_or_insert_with(|| analysis::analyse(path, text))
    }
}

struct Server {
    documents: HashMap<String, Document>,
    /// Documents closed since diagnostics were last published (theirs are cleared).
    closed: Vec<String>,
    /// Where the stdlib's modules are written for go to definition.
    stdlib_dir: Option<PathBuf>,
}

impl Server {
    fn notification(&mut self, note: Notification) {
        match note.method.as_str() {
            "textDocument/didOpen" => {
                if let Ok(p) =
                    note.extract::<lsp::DidOpenTextDocumentParams>("textDocument/didOpen")
                {
                    let uri = p.text_document.uri;
                    self.documents.insert(
                        uri.as_str().to_string(),
                        Document {
                            path: uri_to_path(&uri),
                            text: p.text_document.text,
                            version: p.text_document.version,
                            analysis: None,
                            dirty: true,
                        },
                    );
                }
            }
            "textDocument/didChange" => {
                if let Ok(p) =
                    note.extract::<lsp::DidChangeTextDocumentParams>("textDocument/didChange")
                {
                    if let Some(doc) = self.documents.get_mut(p.text_document.uri.as_str()) {
                        // Full sync: the last change holds the whole text.
                        if let Some(change) = p.content_changes.into_iter().last() {
                            doc.text = change.text;
                            doc.version = p.text_document.version;
                            doc.analysis = None;
                            doc.dirty = true;
                        }
                    }
                }
            }
            "textDocument/didClose" => {
                if let Ok(p) =
                    note.extract::<lsp::DidCloseTextDocumentParams>("textDocument/didClose")
                {
                    let uri = p.text_document.uri.as_str().to_string();
                    self.documents.remove(&uri);
                    self.closed.push(uri);
                }
            }
            _ => {}
        }
    }

    /// The diagnostics of every document changed since they were last published (none for
    /// those closed).
    fn publish(&mut self) -> Vec<Notification> {
        let mut out = Vec::new();
        for uri in std::mem::take(&mut self.closed) {
            if let Ok(uri) = lsp::Uri::from_str(&uri) {
                out.push(Notification::new(
                    "textDocument/publishDiagnostics".into(),
                    lsp::PublishDiagnosticsParams {
                        uri,
                        diagnostics: Vec::new(),
                        version: None,
                    },
                ));
            }
        }
        for (uri, doc) in &mut self.documents {
            if !doc.dirty {
                continue;
            }
            doc.dirty = false;
            let version = doc.version;
            let analysis = doc.analysis();
            let Ok(uri) = lsp::Uri::from_str(uri) else {
                continue;
            };
            let diagnostics = diagnostics(analysis, &uri);
            out.push(Notification::new(
                "textDocument/publishDiagnostics".into(),
                lsp::PublishDiagnosticsParams {
                    uri,
                    diagnostics,
                    version: Some(version),
                },
            ));
        }
        out
    }

    fn request(&mut self, request: Request) -> Response {
        let id = request.id.clone();
        let result = match request.method.as_str() {
            "textDocument/hover" => self.with_position(request, |_, a, offset, _| {
                let text = a.hover(offset)?;
                Some(lsp::Hover {
                    contents: lsp::HoverContents::Markup(lsp::MarkupContent {
                        kind: lsp::MarkupKind::Markdown,
                        value: text,
                    }),
                    range: None,
                })
            }),
            "textDocument/definition" => self.with_position(request, |server, a, offset, uri| {
                let location = a.definition(offset)?;
                let uri = server.uri_of(&location.place, uri)?;
                let range = range(&location.text, location.range);
                Some(lsp::GotoDefinitionResponse::Scalar(lsp::Location {
                    uri,
                    range,
                }))
            }),
            "textDocument/completion" => self.with_position(request, |_, a, offset, _| {
                let items: Vec<lsp::CompletionItem> = a
                    .completions(offset)
                    .into_iter()
                    .map(|c| completion_item(c, a.text()))
                    .collect();
                Some(lsp::CompletionResponse::Array(items))
            }),
            "textDocument/documentSymbol" => {
                match request.extract::<lsp::DocumentSymbolParams>("textDocument/documentSymbol") {
                    Ok((_, p)) => match self.documents.get_mut(p.text_document.uri.as_str()) {
                        Some(doc) => {
                            let a = doc.analysis();
                            let symbols: Vec<lsp::DocumentSymbol> = a
                                .symbols()
                                .into_iter()
                                .map(|s| document_symbol(s, a.text()))
                                .collect();
                            to_value(lsp::DocumentSymbolResponse::Nested(symbols))
                        }
                        None => Ok(serde_json::Value::Null),
                    },
                    Err(e) => Err(format!("{e:?}")),
                }
            }
            "textDocument/formatting" => {
                match request.extract::<lsp::DocumentFormattingParams>("textDocument/formatting") {
                    Ok((_, p)) => match self.documents.get(p.text_document.uri.as_str()) {
                        Some(doc) => format_edits(&doc.text),
                        None => Ok(serde_json::Value::Null),
                    },
                    Err(e) => Err(format!("{e:?}")),
                }
            }
            _ => {
                return Response::new_err(
                    id,
                    ErrorCode::MethodNotFound as i32,
                    format!("unsupported request {}", request.method),
                )
            }
        };
        match result {
            Ok(value) => Response::new_ok(id, value),
            Err(message) => Response::new_err(id, ErrorCode::RequestFailed as i32, message),
        }
    }

    /// Answers a request about a position in a document with `answer` (`null` when it has
    /// nothing to say). `answer` is given the document's URI too.
    fn with_position<R: serde::Serialize>(
        &mut self,
        request: Request,
        answer: impl FnOnce(&Server, &Analysis, usize, &str) -> Option<R>,
    ) -> Result<serde_json::Value, String> {
        let p: lsp::TextDocumentPositionParams =
            serde_json::from_value(request.params).map_err(|e| format!("bad parameters: {e}"))?;
        let uri = p.text_document.uri.as_str().to_string();
        let Some(mut doc) = self.documents.remove(&uri) else {
            return Ok(serde_json::Value::Null);
        };
        let offset = offset(&doc.text, p.position);
        let result = answer(self, doc.analysis(), offset, &uri);
        self.documents.insert(uri, doc);
        match result {
            Some(r) => to_value(r),
            None => Ok(serde_json::Value::Null),
        }
    }

    /// The URI of a place a definition lies in (`document` for the document itself); a stdlib
    /// module's is in the cache directory.
    fn uri_of(&self, place: &Place, document: &str) -> Option<lsp::Uri> {
        let path = match place {
            Place::Document => return lsp::Uri::from_str(document).ok(),
            Place::File(p) => std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()),
            Place::Stdlib(module) => self.stdlib_dir.as_ref()?.join(format!("{module}.pcg")),
        };
        path_to_uri(&path)
    }
}

fn to_value(r: impl serde::Serialize) -> Result<serde_json::Value, String> {
    serde_json::to_value(r).map_err(|e| e.to_string())
}

/// One edit replacing the whole document with its formatted text; none if it is formatted; an
/// error naming the first problem if it does not parse.
fn format_edits(text: &str) -> Result<serde_json::Value, String> {
    match crate::syntax::format::format_source(0, text) {
        Ok(formatted) if formatted == text => to_value(Vec::<lsp::TextEdit>::new()),
        Ok(formatted) => to_value(vec![lsp::TextEdit {
            range: range(text, 0..text.len()),
            new_text: formatted,
        }]),
        Err(diagnostics) => Err(format!(
            "cannot format: {}",
            diagnostics.first().map_or("", |d| d.message.as_str())
        )),
    }
}

/// The stdlib's modules written out (once per content) under the user's cache directory.
fn stdlib_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    // FNV-1a of the stdlib's text names the directory, so that another build never reads
    // stale copies.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (_, text) in crate::sema::STDLIB {
        for b in text.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    let dir = base.join("pcg").join(format!("stdlib-{hash:016x}"));
    std::fs::create_dir_all(&dir).ok()?;
    for (module, text) in crate::sema::STDLIB {
        let path = dir.join(format!("{module}.pcg"));
        if std::fs::read_to_string(&path).ok().as_deref() != Some(*text) {
            std::fs::write(&path, text).ok()?;
        }
    }
    Some(dir)
}

// ---- conversions ----------------------------------------------------------------------------

/// The byte offset of a protocol position (UTF-16 columns), clamped to the text.
pub fn offset(text: &str, position: lsp::Position) -> usize {
    let mut line_start = 0;
    for _ in 0..position.line {
        match text[line_start..].find('\n') {
            Some(n) => line_start += n + 1,
            None => return text.len(),
        }
    }
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |n| line_start + n);
    let mut units = 0;
    for (i, c) in text[line_start..line_end].char_indices() {
        if units >= position.character as usize {
            return line_start + i;
        }
        units += c.len_utf16();
    }
    line_end
}

/// The protocol position of a byte offset (clamped to the text and to a char boundary).
pub fn position(text: &str, offset: usize) -> lsp::Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    let character: usize = before[line_start..].chars().map(char::len_utf16).sum();
    lsp::Position::new(line as u32, character as u32)
}

fn range(text: &str, bytes: std::ops::Range<usize>) -> lsp::Range {
    lsp::Range::new(position(text, bytes.start), position(text, bytes.end))
}

/// The path of a `file:` URI (percent-decoded); other URIs become a path of their text.
pub fn uri_to_path(uri: &lsp::Uri) -> PathBuf {
    let text = uri.as_str();
    let Some(rest) = text.strip_prefix("file://") else {
        return PathBuf::from(text);
    };
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

/// The `file:` URI of an absolute path.
pub fn path_to_uri(path: &Path) -> Option<lsp::Uri> {
    let mut text = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            text.push(b as char);
        } else {
            text.push_str(&format!("%{b:02X}"));
        }
    }
    lsp::Uri::from_str(&text).ok()
}

/// The compiler's diagnostics as the protocol's, for the document at `uri`. A diagnostic in
/// another file (inside a function of an import or of the stdlib) is shown at the call in the
/// document that led to it, or else at the document's first `use`, naming the file and line.
fn diagnostics(analysis: &Analysis, uri: &lsp::Uri) -> Vec<lsp::Diagnostic> {
    let text = analysis.text();
    let first_use = analysis
        .symbols()
        .into_iter()
        .find(|s| s.kind == SymbolKind::Module)
        .map_or(0..0, |s| s.range);
    analysis
        .diagnostics
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let primary = d.primary_span().unwrap_or_default();
            let location = analysis.location(primary);
            let here = location.place == Place::Document;
            let mut message = d.message.clone();
            if let Some(label) = d.labels.iter().find(|l| l.primary && !l.message.is_empty()) {
                message.push_str(&format!("\n{}", label.message));
            }
            for note in &d.notes {
                message.push('\n');
                message.push_str(note);
            }
            let related: Vec<lsp::DiagnosticRelatedInformation> = d
                .labels
                .iter()
                .filter(|l| !l.primary || !here)
                .filter_map(|l| {
                    let at = analysis.location(l.span);
                    let target = match &at.place {
                        Place::Document => Some(uri.clone()),
                        Place::File(p) => path_to_uri(&std::fs::canonicalize(p).ok()?),
                        Place::Stdlib(_) => None,
                    }?;
                    Some(lsp::DiagnosticRelatedInformation {
                        location: lsp::Location {
                            uri: target,
                            range: range(&at.text, at.range.clone()),
                        },
                        message: l.message.clone(),
                    })
                })
                .collect();
            let where_ = if here {
                range(text, location.range)
            } else {
                let file = match &location.place {
                    Place::File(p) => p.display().to_string(),
                    Place::Stdlib(m) => format!("stdlib {m}"),
                    Place::Document => String::new(),
                };
                let line = location.text[..location.range.start.min(location.text.len())]
                    .matches('\n')
                    .count()
                    + 1;
                message = format!("in {file}:{line}: {message}");
                match analysis.call_site(i) {
                    Some(call) => range(text, call.range()),
                    None => range(text, first_use.clone()),
                }
            };
            lsp::Diagnostic {
                range: where_,
                severity: Some(lsp::DiagnosticSeverity::ERROR),
                code: Some(lsp::NumberOrString::String(d.kind.code().to_string())),
                source: Some("pcg".into()),
                message,
                related_information: (!related.is_empty()).then_some(related),
                ..Default::default()
            }
        })
        .collect()
}

fn completion_item(c: Completion, text: &str) -> lsp::CompletionItem {
    let kind = match c.kind {
        CompletionKind::Variable => lsp::CompletionItemKind::VARIABLE,
        CompletionKind::Constant => lsp::CompletionItemKind::CONSTANT,
        CompletionKind::Function => lsp::CompletionItemKind::FUNCTION,
        CompletionKind::Keyword => lsp::CompletionItemKind::KEYWORD,
        CompletionKind::Module => lsp::CompletionItemKind::MODULE,
        CompletionKind::Property => lsp::CompletionItemKind::PROPERTY,
        CompletionKind::Value => lsp::CompletionItemKind::VALUE,
    };
    let additional = c.also.map(|(at, line)| {
        vec![lsp::TextEdit {
            range: range(text, at..at),
            new_text: line,
        }]
    });
    lsp::CompletionItem {
        label: c.label,
        kind: Some(kind),
        detail: (!c.detail.is_empty()).then_some(c.detail),
        insert_text: c.insert,
        additional_text_edits: additional,
        ..Default::default()
    }
}

#[allow(deprecated)]
fn document_symbol(s: Symbol, text: &str) -> lsp::DocumentSymbol {
    let kind = match s.kind {
        SymbolKind::Module => lsp::SymbolKind::MODULE,
        SymbolKind::Constant => lsp::SymbolKind::CONSTANT,
        SymbolKind::Function => lsp::SymbolKind::FUNCTION,
        SymbolKind::Model => lsp::SymbolKind::CLASS,
        SymbolKind::Train => lsp::SymbolKind::OBJECT,
        SymbolKind::Input | SymbolKind::Target => lsp::SymbolKind::FIELD,
        SymbolKind::Param => lsp::SymbolKind::PROPERTY,
        SymbolKind::Variable => lsp::SymbolKind::VARIABLE,
        SymbolKind::Key => lsp::SymbolKind::KEY,
    };
    let children: Vec<lsp::DocumentSymbol> = s
        .children
        .into_iter()
        .map(|c| document_symbol(c, text))
        .collect();
    lsp::DocumentSymbol {
        name: if s.name.is_empty() {
            "?".into()
        } else {
            s.name
        },
        detail: (!s.detail.is_empty()).then_some(s.detail),
        kind,
        tags: None,
        deprecated: None,
        range: range(text, s.range),
        selection_range: range(text, s.selection),
        children: (!children.is_empty()).then_some(children),
    }
}
