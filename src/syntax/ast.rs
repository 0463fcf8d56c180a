//! The abstract syntax tree of a `.pcg` file. Every node carries the span it was parsed from,
//! so each later diagnostic can point at the source.

use crate::source::Span;

/// An identifier with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A parsed file: its top-level items in source order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Module {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Use(Use),
    Const(ConstDef),
    Fn(FnDef),
    Model(ModelDef),
    Train(TrainDef),
}

/// `use nn` (a stdlib module) or `use "layers.pcg"` (a file, relative to the importer).
#[derive(Clone, Debug, PartialEq)]
pub struct Use {
    pub target: UseTarget,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum UseTarget {
    Module(Ident),
    File(String),
}

/// `const H = 128`: a compile-time integer, usable in shapes and loop bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct ConstDef {
    pub name: Ident,
    pub value: Expr,
    pub span: Span,
}

/// `fn dense(x: [B, I], w: [I, O], b: [O]) -> [B, O] { x @ w + b }`.
#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    pub name: Ident,
    pub params: Vec<FnParam>,
    pub ret: Option<TypeExpr>,
    pub body: Block,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnParam {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
}

/// A shape annotation: a tensor shape over dimension expressions, or a tuple of them.
#[derive(Clone, Debug, PartialEq)]
pub enum TypeExpr {
    Tensor { dims: Vec<Expr>, span: Span },
    Tuple { items: Vec<TypeExpr>, span: Span },
}

impl TypeExpr {
    pub fn span(&self) -> Span {
        match self {
            TypeExpr::Tensor { span, .. } | TypeExpr::Tuple { span, .. } => *span,
        }
    }
}

/// Statements followed by an optional result expression (a function's return value).
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    pub result: Option<Expr>,
    pub span: Span,
}

/// `model mlp { ... }`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDef {
    pub name: Ident,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// The kind of a model declaration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclKind {
    Input,
    Target,
    Param,
    /// A tensor loaded and saved with the parameters but never trained (`frozen mean: [C]`):
    /// batch-norm statistics, a fixed embedding.
    Frozen,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `input x: [B, 64]`, `target y: [B, 10]`, `param w: [64, 10] = xavier`.
    Decl {
        kind: DeclKind,
        name: Ident,
        ty: TypeExpr,
        init: Option<Expr>,
        span: Span,
    },
    /// `let h = expr` or `let (h, c) = expr`.
    Let {
        pattern: Pattern,
        value: Expr,
        span: Span,
    },
    /// `h = expr`: rebinds an existing name (how loop bodies carry state).
    Assign {
        name: Ident,
        value: Expr,
        span: Span,
    },
    /// `const T = 8` inside a block.
    Const(ConstDef),
    /// `for t in 0..N { ... }`, unrolled at compile time.
    For {
        var: Ident,
        start: Expr,
        end: Expr,
        body: Vec<Stmt>,
        span: Span,
    },
    /// `loss expr`: one term of the model's loss; the terms are summed.
    Loss { value: Expr, span: Span },
    /// A statement the parser could not read; its error is already reported. `binds` are the
    /// names it would have bound (`let h = …`, `let (a, b) = …`), so that their uses are not
    /// reported as undefined too.
    Error { span: Span, binds: Vec<Ident> },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Pattern {
    Name(Ident),
    Tuple(Vec<Pattern>, Span),
}

impl Pattern {
    pub fn span(&self) -> Span {
        match self {
            Pattern::Name(id) => id.span,
            Pattern::Tuple(_, span) => *span,
        }
    }
}

/// `train mlp { key = value ... }`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainDef {
    pub model: Ident,
    pub entries: Vec<TrainEntry>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainEntry {
    pub key: Ident,
    pub value: TrainValue,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TrainValue {
    /// `key = expr`.
    Expr(Expr),
    /// `key { k = v, ... }`.
    Block(Vec<TrainEntry>, Span),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    MatMul,
    /// `a < b`: 1 where a < b, else 0 (as are the other comparisons).
    Less,
    Greater,
    LessEq,
    GreaterEq,
    Equal,
    NotEqual,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
            BinOp::Less => "<",
            BinOp::Greater => ">",
            BinOp::LessEq => "<=",
            BinOp::GreaterEq => ">=",
            BinOp::Equal => "==",
            BinOp::NotEqual => "!=",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Name(Ident),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `f(a, b, key = c)`.
    Call {
        callee: Ident,
        args: Vec<Arg>,
    },
    /// `x[t]`, `x[0..4]`, `x[.., 2]`.
    Index {
        base: Box<Expr>,
        indices: Vec<IndexItem>,
    },
    /// `(a, b)`.
    Tuple(Vec<Expr>),
    /// `[B, 16]`: a list, used for shapes and axis lists.
    List(Vec<Expr>),
}

impl Drop for Expr {
    /// Frees the tree with an explicit stack rather than by recursion: a hostile file's
    /// `-(-(-(…)))` nests deeper than any thread's stack. (The compiler rejects such nesting
    /// with E0109, but only after the tree is built, and it must still be freed.)
    fn drop(&mut self) {
        let mut pending = Vec::new();
        self.kind.take_children(&mut pending);
        while let Some(mut e) = pending.pop() {
            e.kind.take_children(&mut pending);
        }
    }
}

impl ExprKind {
    /// Moves every child expression into `out`, leaving a leaf in its place.
    fn take_children(&mut self, out: &mut Vec<Expr>) {
        match std::mem::replace(self, ExprKind::Bool(false)) {
            ExprKind::Neg(a) => out.push(*a),
            ExprKind::Binary(_, a, b) => {
                out.push(*a);
                out.push(*b);
            }
            ExprKind::Call { args, .. } => out.extend(args.into_iter().map(|a| a.value)),
            ExprKind::Index { base, indices } => {
                out.push(*base);
                for item in indices {
                    match item {
                        IndexItem::At(e) => out.push(e),
                        IndexItem::Range { start, end, .. } => {
                            out.extend(start.into_iter().chain(end))
                        }
                    }
                }
            }
            ExprKind::Tuple(items) | ExprKind::List(items) => out.extend(items),
            leaf => *self = leaf,
        }
    }
}

/// A call argument, positional or named.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

/// One position of an index expression.
#[derive(Clone, Debug, PartialEq)]
pub enum IndexItem {
    /// `x[t]`: picks one element along the axis and removes it.
    At(Expr),
    /// `x[a..b]`, `x[..b]`, `x[a..]`, `x[..]`: keeps a range along the axis.
    Range {
        start: Option<Expr>,
        end: Option<Expr>,
        span: Span,
    },
}

/// Builds a binary expression spanning `start..end` (used by the grammar).
pub fn bin(
    file: crate::source::FileId,
    start: usize,
    end: usize,
    op: BinOp,
    a: Expr,
    b: Expr,
) -> Expr {
    Expr {
        kind: ExprKind::Binary(op, Box::new(a), Box::new(b)),
        span: Span::new(file, start, end),
    }
}

impl Module {
    /// The tree with every span zeroed: two parses of one program laid out differently give
    /// equal trees (how the formatter proves that it changed only the layout). Recurses as
    /// deep as the expressions nest.
    pub fn without_spans(&self) -> Module {
        let mut m = self.clone();
        for item in &mut m.items {
            match item {
                Item::Use(u) => {
                    u.span = Span::default();
                    if let UseTarget::Module(id) = &mut u.target {
                        erase_ident(id);
                    }
                }
                Item::Const(c) => erase_const(c),
                Item::Fn(f) => {
                    erase_ident(&mut f.name);
                    for p in &mut f.params {
                        erase_ident(&mut p.name);
                        if let Some(t) = &mut p.ty {
                            erase_type(t);
                        }
                    }
                    if let Some(t) = &mut f.ret {
                        erase_type(t);
                    }
                    f.body.stmts.iter_mut().for_each(erase_stmt);
                    if let Some(e) = &mut f.body.result {
                        erase_expr(e);
                    }
                    f.body.span = Span::default();
                    f.span = Span::default();
                }
                Item::Model(m) => {
                    erase_ident(&mut m.name);
                    m.body.iter_mut().for_each(erase_stmt);
                    m.span = Span::default();
                }
                Item::Train(t) => {
                    erase_ident(&mut t.model);
                    t.entries.iter_mut().for_each(erase_entry);
                    t.span = Span::default();
                }
            }
        }
        m
    }
}

fn erase_ident(id: &mut Ident) {
    id.span = Span::default();
}

fn erase_const(c: &mut ConstDef) {
    erase_ident(&mut c.name);
    erase_expr(&mut c.value);
    c.span = Span::default();
}

fn erase_type(t: &mut TypeExpr) {
    match t {
        TypeExpr::Tensor { dims, span } => {
            dims.iter_mut().for_each(erase_expr);
            *span = Span::default();
        }
        TypeExpr::Tuple { items, span } => {
            items.iter_mut().for_each(erase_type);
            *span = Span::default();
        }
    }
}

fn erase_pattern(p: &mut Pattern) {
    match p {
        Pattern::Name(id) => erase_ident(id),
        Pattern::Tuple(items, span) => {
            items.iter_mut().for_each(erase_pattern);
            *span = Span::default();
        }
    }
}

fn erase_stmt(s: &mut Stmt) {
    match s {
        Stmt::Decl {
            name,
            ty,
            init,
            span,
            ..
        } => {
            erase_ident(name);
            erase_type(ty);
            if let Some(e) = init {
                erase_expr(e);
            }
            *span = Span::default();
        }
        Stmt::Let {
            pattern,
            value,
            span,
        } => {
            erase_pattern(pattern);
            erase_expr(value);
            *span = Span::default();
        }
        Stmt::Assign { name, value, span } => {
            erase_ident(name);
            erase_expr(value);
            *span = Span::default();
        }
        Stmt::Const(c) => erase_const(c),
        Stmt::For {
            var,
            start,
            end,
            body,
            span,
        } => {
            erase_ident(var);
            erase_expr(start);
            erase_expr(end);
            body.iter_mut().for_each(erase_stmt);
            *span = Span::default();
        }
        Stmt::Loss { value, span } => {
            erase_expr(value);
            *span = Span::default();
        }
        Stmt::Error { span, binds } => {
            binds.iter_mut().for_each(erase_ident);
            *span = Span::default();
        }
    }
}

fn erase_entry(e: &mut TrainEntry) {
    erase_ident(&mut e.key);
    match &mut e.value {
        TrainValue::Expr(x) => erase_expr(x),
        TrainValue::Block(entries, span) => {
            entries.iter_mut().for_each(erase_entry);
            *span = Span::default();
        }
    }
    e.span = Span::default();
}

fn erase_expr(e: &mut Expr) {
    e.span = Span::default();
    match &mut e.kind {
        ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) | ExprKind::Str(_) => {}
        ExprKind::Name(id) => erase_ident(id),
        ExprKind::Neg(a) => erase_expr(a),
        ExprKind::Binary(_, a, b) => {
            erase_expr(a);
            erase_expr(b);
        }
        ExprKind::Call { callee, args } => {
            erase_ident(callee);
            for a in args {
                if let Some(n) = &mut a.name {
                    erase_ident(n);
                }
                erase_expr(&mut a.value);
            }
        }
        ExprKind::Index { base, indices } => {
            erase_expr(base);
            for item in indices {
                match item {
                    IndexItem::At(x) => erase_expr(x),
                    IndexItem::Range { start, end, span } => {
                        if let Some(x) = start {
                            erase_expr(x);
                        }
                        if let Some(x) = end {
                            erase_expr(x);
                        }
                        *span = Span::default();
                    }
                }
            }
        }
        ExprKind::Tuple(items) | ExprKind::List(items) => items.iter_mut().for_each(erase_expr),
    }
}
