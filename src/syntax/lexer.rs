//! The lexer: source text to tokens, with logos.
//!
//! The language is whitespace-insensitive: statements need no separators because no
//! expression can be followed directly by an identifier or a keyword, so the parser always
//! knows where one statement ends. Commas and semicolons are still accepted between items of
//! a block for readability (`inference { mode = fixed, steps = 20 }`).
//!
//! Integer and float literals are distinct tokens because shapes, loop bounds and indices are
//! compile-time integers, while floats only ever become constant tensors. A character that
//! starts no token becomes `Token::Error`; the parser turns it into a lexer diagnostic at its
//! span, so bad bytes never stop the front end from reporting what follows.

use logos::Logos;
use std::fmt;

/// One token of `.pcg` source.
#[derive(Logos, Clone, Debug, PartialEq)]
#[logos(skip r"[ \t\r\n\f]+")]
#[logos(skip(r"//[^\n]*", allow_greedy = true))]
pub enum Token {
    #[token("use")]
    Use,
    #[token("fn")]
    Fn,
    #[token("model")]
    Model,
    #[token("train")]
    Train,
    #[token("input")]
    Input,
    #[token("target")]
    Target,
    #[token("param")]
    Param,
    #[token("frozen")]
    Frozen,
    #[token("let")]
    Let,
    #[token("const")]
    Const,
    #[token("loss")]
    Loss,
    #[token("for")]
    For,
    #[token("in")]
    In,
    #[token("return")]
    Return,
    #[token("true")]
    True,
    #[token("false")]
    False,

    #[regex(r"[A-Za-z_][A-Za-z0-9_]*", |lex| lex.slice().to_string())]
    Ident(String),
    #[regex(r"[0-9]+", |lex| lex.slice().parse::<i64>().ok())]
    Int(i64),
    #[regex(r"[0-9]+\.[0-9]+([eE][+-]?[0-9]+)?", |lex| lex.slice().parse::<f64>().ok())]
    #[regex(r"[0-9]+[eE][+-]?[0-9]+", |lex| lex.slice().parse::<f64>().ok())]
    Float(f64),
    #[regex(r#""([^"\\\n]|\\.)*""#, |lex| unescape(lex.slice()))]
    Str(String),

    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token(",")]
    Comma,
    #[token(";")]
    Semi,
    #[token(":")]
    Colon,
    #[token("=")]
    Eq,
    #[token("->")]
    Arrow,
    #[token("..")]
    DotDot,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,
    #[token("@")]
    At,
    #[token("<")]
    Less,
    #[token(">")]
    Greater,
    #[token("<=")]
    LessEq,
    #[token(">=")]
    GreaterEq,
    #[token("==")]
    EqEq,
    #[token("!=")]
    NotEq,

    /// A character that starts no token, or a malformed literal.
    Error,
}

fn unescape(quoted: &str) -> String {
    let inner = &quoted[1..quoted.len() - 1];
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Token::Use => "`use`",
            Token::Fn => "`fn`",
            Token::Model => "`model`",
            Token::Train => "`train`",
            Token::Input => "`input`",
            Token::Target => "`target`",
            Token::Param => "`param`",
            Token::Frozen => "`frozen`",
            Token::Let => "`let`",
            Token::Const => "`const`",
            Token::Loss => "`loss`",
            Token::For => "`for`",
            Token::In => "`in`",
            Token::Return => "`return`",
            Token::True => "`true`",
            Token::False => "`false`",
            Token::Ident(name) => return write!(f, "identifier `{name}`"),
            Token::Int(i) => return write!(f, "integer `{i}`"),
            Token::Float(x) => return write!(f, "number `{x}`"),
            Token::Str(s) => return write!(f, "string {s:?}"),
            Token::LBrace => "`{`",
            Token::RBrace => "`}`",
            Token::LParen => "`(`",
            Token::RParen => "`)`",
            Token::LBracket => "`[`",
            Token::RBracket => "`]`",
            Token::Comma => "`,`",
            Token::Semi => "`;`",
            Token::Colon => "`:`",
            Token::Eq => "`=`",
            Token::Arrow => "`->`",
            Token::DotDot => "`..`",
            Token::Plus => "`+`",
            Token::Minus => "`-`",
            Token::Star => "`*`",
            Token::Slash => "`/`",
            Token::At => "`@`",
            Token::Less => "`<`",
            Token::Greater => "`>`",
            Token::LessEq => "`<=`",
            Token::GreaterEq => "`>=`",
            Token::EqEq => "`==`",
            Token::NotEq => "`!=`",
            Token::Error => "an invalid character",
        };
        f.write_str(s)
    }
}

/// A token with its byte range in the source.
pub type SpannedToken = (usize, Token, usize);

/// Splits source text into tokens. Unrecognised input yields `Token::Error` at its span rather
/// than stopping, so the parser can report it and carry on.
pub fn lex(source: &str) -> Vec<SpannedToken> {
    let mut lexer = Token::lexer(source);
    let mut tokens = Vec::new();
    while let Some(result) = lexer.next() {
        let span = lexer.span();
        let token = result.unwrap_or(Token::Error);
        // An integer too large for i64 fails its callback; it is malformed, not a crash.
        tokens.push((span.start, token, span.end));
    }
    tokens
}

/// A `//` comment: its byte range and text (from `//` to the end of its line, trailing
/// whitespace dropped).
#[derive(Clone, Debug, PartialEq)]
pub struct Comment {
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// The comments of `source`, in order. The lexer skips them, so they lie in the gaps between
/// `tokens` (the lexer's output for `source`): a gap holds only whitespace and comments, so
/// every `//` in it starts one — a `//` inside a string literal is part of a token, not a gap.
pub fn comments(source: &str, tokens: &[SpannedToken]) -> Vec<Comment> {
    let mut out = Vec::new();
    let mut gap_start = 0;
    let ends = tokens
        .iter()
        .map(|t| (t.0, t.2))
        .chain(std::iter::once((source.len(), source.len())));
    for (start, end) in ends {
        let mut at = gap_start;
        while let Some(found) = source.get(at..start).and_then(|gap| gap.find("//")) {
            let from = at + found;
            let to = source[from..start].find('\n').map_or(start, |n| from + n);
            out.push(Comment {
                start: from,
                end: to,
                text: source[from..to].trim_end().to_string(),
            });
            at = to;
        }
        gap_start = end;
    }
    out
}
