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
///
/// Error recovery resumes at the next token that can start a statement, which is often the
/// next word of the same mistake (`# a comment` reads as the statements `a`, `comment`, ...).
/// A syntax error within two tokens of the previous error, lexical or syntactic, is such a
/// cascade and is not reported; the first error of each mistake always is.
pub fn parse(file: FileId, source: &str) -> (ast::Module, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut tokens = Vec::new();
    let mut bad_bytes = Vec::new();
    for (start, token, end) in lexer::lex(source) {
        if token == Token::Error {
            let text = source.get(start..end).unwrap_or("");
            let what = if text.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                format!("malformed number `{text}`")
            } else {
                format!("unexpected character `{}`", text.escape_debug())
            };
            diagnostics.push(
                Diagnostic::new(
                    ErrorKind::InvalidToken,
                    what,
                    Span::new(file, start, end),
                    "not a token of the language",
                )
                .with_help("comments start with `//`; strings are in double quotes"),
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
    let result = grammar::ModuleParser::new().parse(file, &mut recovered, tokens);
    for r in recovered {
        report(&mut diagnostics, r.error);
    }
    match result {
        Ok(module) => (module, diagnostics),
        Err(e) => {
            // Never silent: a cascade follows an earlier error, and the first error of a
            // chain of cascades is always reported.
            report(&mut diagnostics, e);
            (ast::Module::default(), diagnostics)
        }
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
    let more = if expected.len() > shown.len() {
        ", ..."
    } else {
        ""
    };
    format!("expected one of {}{more}", shown.join(", "))
}
