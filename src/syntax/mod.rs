//! Syntax: `.pcg` text to an AST with spans (lexer in `lexer`, grammar in
//! `grammar/pcg.lalrpop`, tree in `ast`, printed as text by `print`). Syntax errors come
//! back as diagnostics alongside whatever part of the tree could be recovered. `format`
//! writes a tree back as text in the one canonical layout (`pcg fmt`).

pub mod ast;
pub mod format;
pub mod lexer;
pub mod print;

use crate::diag::{Diagnostic, ErrorKind};
use crate::source::{FileId, Span};
use lalrpop_util::{lalrpop_mod, ErrorRecovery, ParseError};
use lexer::Token;

lalrpop_mod!(
    #[allow(clippy::all, clippy::pedantic, unused)]
    grammar,
    "/pcg.rs"
);

/// Parses one file. Lexer errors and recoverable syntax errors are all reported; the module
/// holds every item that parsed.
///
/// Error recovery resumes at the next token that can start a statement, which is often the
/// next word of the same mistake (`# a comment` reads as the statements `a`, `comment`, ...).
/// A syntax error within two tokens of the previous error, lexical or syntactic, is such a
/// cascade and is not reported; the first error of each mistake always is.
pub fn parse(file: FileId, source: &str) -> (ast::Module, Vec<Diagnostic>) {
    let parsed = parse_full(file, source);
    (parsed.module, parsed.diagnostics)
}

/// A parse with what the tree leaves out: the tokens and the parenthesised expressions (for
/// the formatter and the language server).
pub struct Parsed {
    pub module: ast::Module,
    pub diagnostics: Vec<Diagnostic>,
    /// Every token, in order (`Token::Error` for characters that start none).
    pub tokens: Vec<lexer::SpannedToken>,
    /// The byte range of each expression written in parentheses, once per pair of them (the
    /// range inside the parentheses: the expression's own span).
    pub parens: Vec<(usize, usize)>,
}

/// Parses one file as [`parse`] does, keeping the tokens and the parentheses.
pub fn parse_full(file: FileId, source: &str) -> Parsed {
    let mut diagnostics = Vec::new();
    let all_tokens = lexer::lex(source);
    let mut tokens = Vec::new();
    let mut bad_bytes = Vec::new();
    let mut lexed = all_tokens.clone();
    // `&&` and `||` lex as two bad characters: one mistake, one error.
    lexed.dedup_by(|next, previous| {
        let joined = previous.1 == Token::Error
            && next.1 == Token::Error
            && previous.2 == next.0
            && matches!(source.get(previous.0..next.2), Some("&&" | "||"));
        if joined {
            previous.2 = next.2;
        }
        joined
    });
    for (start, token, end) in lexed {
        if token == Token::Error {
            let text = source.get(start..end).unwrap_or("");
            let what = if text.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                format!("malformed number `{text}`")
            } else {
                format!("unexpected character `{}`", text.escape_debug())
            };
            let help = match text {
                "&" | "|" | "!" | "&&" | "||" => {
                    "there are no boolean operators: comparisons give 0/1 tensors, so `a * b` is \"and\", `maximum(a, b)` is \"or\" and `1 - a` is \"not\""
                }
                _ => "comments start with `//`; strings are in double quotes",
            };
            diagnostics.push(
                Diagnostic::new(
                    ErrorKind::InvalidToken,
                    what,
                    Span::new(file, start, end),
                    "not a token of the language",
                )
                .with_help(help),
            );
            bad_bytes.push(start);
        } else {
            tokens.push((start, token, end));
        }
    }
    // Errors are placed by the index of the token they are at (a lexer error: of the token
    // after it), so that distances count tokens.
    let starts: Vec<usize> = tokens.iter().map(|t| t.0).collect();
    let token_index = |byte: usize| starts.partition_point(|&s| s < byte);
    let mut earlier: Vec<usize> = bad_bytes.iter().map(|&b| token_index(b)).collect();
    let mut report = |diagnostics: &mut Vec<Diagnostic>, error: ParseError<usize, Token, ()>| {
        let at = token_index(error_location(&error));
        let cascade = earlier.iter().any(|&e| e <= at && at - e <= 2);
        earlier.push(at);
        if !cascade {
            diagnostics.push(syntax_error(file, source, error));
        }
    };
    let mut recovered: Vec<ErrorRecovery<usize, Token, ()>> = Vec::new();
    let mut parens = Vec::new();
    let result =
        grammar::ModuleParser::new().parse(file, &mut recovered, &mut parens, tokens.clone());
    for r in recovered {
        report(&mut diagnostics, r.error);
    }
    let module = match result {
        Ok(mut module) => {
            for item in &mut module.items {
                match item {
                    ast::Item::Fn(f) => name_unparsed_bindings(file, &tokens, &mut f.body.stmts),
                    ast::Item::Model(m) => name_unparsed_bindings(file, &tokens, &mut m.body),
                    _ => {}
                }
            }
            module
        }
        Err(e) => {
            // Never silent: a cascade follows an earlier error, and the first error of a
            // chain of cascades is always reported.
            report(&mut diagnostics, e);
            ast::Module::default()
        }
    };
    Parsed {
        module,
        diagnostics,
        tokens: all_tokens,
        parens,
    }
}

/// The byte offset a syntax error is reported at.
fn error_location(error: &ParseError<usize, Token, ()>) -> usize {
    match error {
        ParseError::UnrecognizedToken { token, .. } | ParseError::ExtraToken { token } => token.0,
        ParseError::UnrecognizedEof { location, .. } | ParseError::InvalidToken { location } => {
            *location
        }
        ParseError::User { .. } => 0,
    }
}

fn syntax_error(file: FileId, source: &str, error: ParseError<usize, Token, ()>) -> Diagnostic {
    match error {
        ParseError::UnrecognizedToken {
            token: (start, token, end),
            expected,
        } => {
            let comparison = matches!(
                token,
                Token::Less
                    | Token::Greater
                    | Token::LessEq
                    | Token::GreaterEq
                    | Token::EqEq
                    | Token::NotEq
            );
            let d = Diagnostic::new(
                ErrorKind::UnexpectedToken,
                format!("unexpected {token}"),
                Span::new(file, start, end),
                "unexpected here",
            )
            .with_note(expected_list(&expected));
            if comparison {
                d.with_help("comparisons do not chain: for `a < b < c` write `(a < b) * (b < c)`")
            } else {
                d
            }
        }
        ParseError::UnrecognizedEof { location, expected } => {
            let at = location.min(source.len());
            Diagnostic::new(
                ErrorKind::UnexpectedEof,
                "unexpected end of file",
                Span::new(file, at, at),
                "the file ends here",
            )
            .with_note(expected_list(&expected))
        }
        ParseError::ExtraToken {
            token: (start, token, end),
        } => Diagnostic::new(
            ErrorKind::UnexpectedToken,
            format!("unexpected {token}"),
            Span::new(file, start, end),
            "nothing more was expected",
        ),
        ParseError::InvalidToken { location } => Diagnostic::new(
            ErrorKind::InvalidToken,
            "invalid token",
            Span::new(file, location, location),
            "here",
        ),
        ParseError::User { .. } => Diagnostic::new(
            ErrorKind::UnexpectedToken,
            "syntax error",
            Span::new(file, 0, 0),
            "here",
        ),
    }
}

/// Fills in the names each unparsed `let` statement would have bound, read off its tokens:
/// `let NAME` or `let (NAME, (NAME, …), …)` up to the `=`.
fn name_unparsed_bindings(file: FileId, tokens: &[(usize, Token, usize)], stmts: &mut [ast::Stmt]) {
    for stmt in stmts {
        match stmt {
            ast::Stmt::Error { span, binds } => {
                let first = tokens.partition_point(|t| t.0 < span.start as usize);
                let mut rest = tokens[first..]
                    .iter()
                    .take_while(|t| t.2 <= span.end as usize);
                if !matches!(rest.next(), Some((_, Token::Let, _))) {
                    continue;
                }
                for (start, token, end) in rest {
                    match token {
                        Token::Ident(name) => binds.push(ast::Ident {
                            name: name.clone(),
                            span: Span::new(file, *start, *end),
                        }),
                        Token::LParen | Token::RParen | Token::Comma => {}
                        _ => break,
                    }
                }
            }
            ast::Stmt::For { body, .. } => name_unparsed_bindings(file, tokens, body),
            _ => {}
        }
    }
}

/// What the parser would have accepted, in words: terminals as the user writes them.
fn expected_list(expected: &[String]) -> String {
    let shown: Vec<String> = expected.iter().take(8).map(|s| describe(s)).collect();
    let more = if expected.len() > shown.len() {
        ", ..."
    } else {
        ""
    };
    match shown.as_slice() {
        [one] if more.is_empty() => format!("expected {one}"),
        _ => format!("expected one of {}{more}", shown.join(", ")),
    }
}

/// A grammar terminal as the user sees it: `IDENT` is "a name", `"("` is `` `(` ``.
fn describe(terminal: &str) -> String {
    match terminal {
        "IDENT" => "a name".to_string(),
        "INT" => "an integer".to_string(),
        "FLOAT" => "a number".to_string(),
        "STR" => "a string".to_string(),
        quoted => format!("`{}`", quoted.trim_matches('"')),
    }
}
