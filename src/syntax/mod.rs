//! Syntax: `.pcg` text to an AST with spans (lexer in `lexer`, grammar in
//! `grammar/pcg.lalrpop`, tree in `ast`). Syntax errors come back as diagnostics alongside
//! whatever part of the tree could be recovered.

pub mod ast;
pub mod lexer;

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
pub fn parse(file: FileId, source: &str) -> (ast::Module, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut tokens = Vec::new();
    for (start, token, end) in lexer::lex(source) {
        if token == Token::Error {
            let text = source.get(start..end).unwrap_or("");
            let what = if text.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                format!("malformed number `{text}`")
            } else {
                format!("unexpected character `{}`", text.escape_debug())
            };
            diagnostics.push(
                Diagnostic::new(ErrorKind::InvalidToken, what, Span::new(file, start, end), "not a token of the language")
                    .with_help("comments start with `//`; strings are in double quotes"),
            );
        } else {
            tokens.push((start, token, end));
        }
    }
    let mut recovered: Vec<ErrorRecovery<usize, Token, ()>> = Vec::new();
    let result = grammar::ModuleParser::new().parse(file, &mut recovered, tokens);
    for r in recovered {
        diagnostics.push(syntax_error(file, source, r.error));
    }
    match result {
        Ok(module) => (module, diagnostics),
        Err(e) => {
            diagnostics.push(syntax_error(file, source, e));
            (ast::Module::default(), diagnostics)
        }
    }
}

fn syntax_error(file: FileId, source: &str, error: ParseError<usize, Token, ()>) -> Diagnostic {
    match error {
        ParseError::UnrecognizedToken {
            token: (start, token, end),
            expected,
        } => Diagnostic::new(
            ErrorKind::UnexpectedToken,
            format!("unexpected {token}"),
            Span::new(file, start, end),
            "unexpected here",
        )
        .with_note(expected_list(&expected)),
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

fn expected_list(expected: &[String]) -> String {
    let shown: Vec<&str> = expected.iter().take(8).map(|s| s.as_str()).collect();
    let more = if expected.len() > shown.len() { ", ..." } else { "" };
    format!("expected one of {}{more}", shown.join(", "))
}
