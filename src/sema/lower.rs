//! Lowering a model to IR: name resolution, function inlining, loop unrolling and static
//! shape checking happen together in one walk over the AST, evaluating compile-time values
//! (integers, tuples, lists) and emitting IR nodes for tensor values.
//!
//! Scoping: a model body and each inlined function body is a *frame*; a frame sees its own
//! scopes and the globals (constants, functions), never its caller's locals. `let` binds in
//! the innermost scope (each loop iteration and block opens one); `name = ...` rebinds the
//! nearest existing binding in the frame, which is how loop bodies carry state.
//!
//! Regions: nodes created while lowering a `loss` statement belong to the loss region, except
//! nodes that use a parameter directly (and what they depend on), which are moved back to the
//! model: a parameter inside the loss would otherwise not be learned by predictive coding.

use super::builtins;
use super::symbols;
use super::value::Val;
use super::Globals;
use crate::diag::{Diagnostic, ErrorKind};
use crate::ir::{BinaryOp, Init, LeafKind, Op, Program, Region, Shape, UnaryOp, ValueId};
use crate::source::Span;
use crate::syntax::ast::{self, BinOp, ExprKind, Stmt};
use std::collections::{BTreeMap, HashMap};

/// The most loop iterations one model may unroll, to keep a typo (`0..1000000`) from hanging
/// the compiler.
const MAX_UNROLLED_ITERATIONS: usize = 100_000;

/// The most iterations one loop may have: a bound past any sequence a model could train on,
/// which keeps a typo from making a program that runs for ever.
const MAX_TRIPS: i64 = 10_000_000;

/// How deeply expressions, loops and inlined calls may nest. Lowering recurses over the
/// syntax tree; the bound keeps a pathological file from overflowing the stack, and no real
/// model comes near it.
const MAX_NESTING: usize = 128;

/// The most elements one tensor may have (2^40, terabytes of floats): far beyond any model
/// that could run, and small enough that no shape arithmetic overflows.
pub(super) const MAX_ELEMENTS: usize = 1 << 40;

/// The number of elements of `dims`, if it is at most `MAX_ELEMENTS`.
fn bounded_numel(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

#[derive(Clone, Debug)]
pub(super) struct Binding {
    pub val: Val,
    pub span: Span,
    /// The loop nesting depth of the program the value's tensors belong to: 0 for the model's
    /// program, k for the body of the k-th enclosing loop being lowered as a scan.
    pub level: usize,
}

#[derive(Default)]
pub(super) struct Scope {
    pub names: HashMap<String, Binding>,
}

/// An argument of a call, evaluated, with its span.
#[derive(Clone, Debug)]
pub(super) struct ArgVal {
    pub name: Option<ast::Ident>,
    pub val: Val,
    pub span: Span,
}

pub(super) struct Lowerer<'g, 'd> {
    pub(super) globals: &'g Globals,
    /// The program being built: the model's, or the body of the innermost loop being lowered
    /// as a scan (the enclosing programs wait in `loops`).
    pub program: Program,
    pub(super) diagnostics: &'d mut Vec<Diagnostic>,
    /// scopes[0] holds the global constants; frames index into the rest.
    pub(super) scopes: Vec<Scope>,
    /// Index in `scopes` where the current frame starts.
    pub(super) frame_base: usize,
    /// The functions being inlined, innermost last, with their call sites.
    pub(super) call_stack: Vec<(String, Span)>,
    pub(super) region: Region,
    pub(super) loss_terms: Vec<(ValueId, Span)>,
    /// Whether a `loss` statement was lowered at all (its term may have been an error).
    pub(super) saw_loss: bool,
    /// How many expressions and loop bodies enclose the one being lowered.
    pub(super) nesting: usize,
    pub(super) dims: BTreeMap<String, usize>,
    pub(super) unrolled: usize,
    /// The loops being lowered as scans, outermost first.
    pub(super) loops: Vec<super::loops::LoopFrame>,
    pub(super) loop_policy: super::LoopPolicy,
    /// How each loop was compiled (a loop inside an unrolled one: once per iteration).
    pub(super) loop_notes: Vec<super::LoopNote>,
}

/// Lowers `model` to its forward program, or reports why it cannot.
pub(super) fn lower_model(
    globals: &Globals,
    model: &ast::ModelDef,
    dims: &BTreeMap<String, usize>,
    loop_policy: super::LoopPolicy,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<(Program, Vec<super::LoopNote>)> {
    let mut l = Lowerer {
        globals,
        program: Program::new(model.name.name.clone()),
        diagnostics,
        scopes: vec![Scope::default()],
        frame_base: 1,
        call_stack: Vec::new(),
        region: Region::Model,
        loss_terms: Vec::new(),
        saw_loss: false,
        nesting: 0,
        dims: dims.clone(),
        unrolled: 0,
        loops: Vec::new(),
        loop_policy,
        loop_notes: Vec::new(),
    };
    for c in &globals.consts {
        l.define_const(c, 0);
    }
    l.scopes.push(Scope::default());
    for stmt in &model.body {
        l.stmt(stmt, true);
    }
    if l.loss_terms.is_empty() {
        // A loss statement whose value was an error, or a statement that did not parse (it
        // may have been the loss), has been reported already.
        let unparsed = model.body.iter().any(|s| matches!(s, Stmt::Error { .. }));
        if l.saw_loss || unparsed {
            return None;
        }
        l.error(
            Diagnostic::new(
                ErrorKind::MissingLoss,
                format!("model `{}` has no loss", model.name.name),
                model.name.span,
                "this model needs a `loss` statement",
            )
            .with_help(
                "add e.g. `loss mse(out, y)` (with `use nn`); several `loss` statements are summed",
            ),
        );
        return None;
    }
    let terms = std::mem::take(&mut l.loss_terms);
    let mut total = terms[0].0;
    l.region = Region::Loss;
    for &(term, _) in &terms[1..] {
        total = l.push_node(
            Op::Binary(BinaryOp::Add),
            vec![total, term],
            None,
            model.span,
        )?;
    }
    l.program.set_output("loss", total);
    l.program.prune();
    settle_regions(&mut l.program, |p, a| {
        p.node(a).op == Op::Leaf(LeafKind::Param)
    });
    // One note per loop of the source, in source order.
    let mut notes = std::mem::take(&mut l.loop_notes);
    notes.sort_by_key(|n| (n.span.file, n.span.start));
    notes.dedup_by_key(|n| (n.span.file, n.span.start));
    Some((l.program, notes))
}

/// Moves loss-region nodes that read a parameter (a value `is_param` accepts), and their
/// loss-region ancestors, to the model region.
pub(super) fn settle_regions(program: &mut Program, is_param: impl Fn(&Program, ValueId) -> bool) {
    let mut stack: Vec<ValueId> = program
        .ids()
        .filter(|&id| {
            let node = program.node(id);
            node.region == Region::Loss && node.args.iter().any(|&a| is_param(program, a))
        })
        .collect();
    while let Some(id) = stack.pop() {
        if program.nodes[id.index()].region == Region::Model {
            continue;
        }
        program.nodes[id.index()].region = Region::Model;
        for &a in &program.nodes[id.index()].args {
            if program.node(a).region == Region::Loss {
                stack.push(a);
            }
        }
    }
}

impl<'g, 'd> Lowerer<'g, 'd> {
    pub fn error(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    // ---- scopes -------------------------------------------------------------------------

    fn lookup(&self, name: &str) -> Option<&Binding> {
        self.lookup_scope(name).map(|s| &self.scopes[s].names[name])
    }

    /// The index in `scopes` of the binding `name` resolves to.
    pub(super) fn lookup_scope(&self, name: &str) -> Option<usize> {
        (self.frame_base..self.scopes.len())
            .rev()
            .chain(std::iter::once(0))
            .find(|&s| self.scopes[s].names.contains_key(name))
    }

    pub(super) fn bind(&mut self, name: &ast::Ident, val: Val) {
        if let Val::Tensor(id) = val {
            self.name_node(id, &name.name);
        }
        symbols::note_binding(name.span, &val, &self.program);
        let level = self.loops.len();
        let scope = self.scopes.last_mut().expect("a scope is always open");
        scope.names.insert(
            name.name.clone(),
            Binding {
                val,
                span: name.span,
                level,
            },
        );
    }

    /// Gives a computed node the source name it was bound to (inside an inlined function,
    /// prefixed with the function's name). Leaves and already named nodes keep their name.
    fn name_node(&mut self, id: ValueId, name: &str) {
        let node = &self.program.nodes[id.index()];
        if node.name.is_some() || matches!(node.op, Op::Leaf(_) | Op::Const(_) | Op::Iota { .. }) {
            return;
        }
        let full = match self.call_stack.last() {
            Some((f, _)) => format!("{f}.{name}"),
            None => name.to_string(),
        };
        self.program.set_name(id, full);
    }

    fn assign(&mut self, name: &ast::Ident, val: Val) {
        if let Val::Tensor(id) = val {
            self.name_node(id, &name.name);
        }
        let base = self.frame_base;
        if let Some(s) = (base..self.scopes.len())
            .rev()
            .find(|&s| self.scopes[s].names.contains_key(&name.name))
        {
            symbols::note_use(name.span, self.scopes[s].names[&name.name].span);
            symbols::note_binding(name.span, &val, &self.program);
            self.note_assignment(s, &name.name);
            let level = self.loops.len();
            let b = self.scopes[s]
                .names
                .get_mut(&name.name)
                .expect("the binding was found");
            b.val = val;
            b.level = level;
            return;
        }
        let d = Diagnostic::new(
            ErrorKind::UnknownName,
            format!("cannot assign to `{}`, which is not bound", name.name),
            name.span,
            "not bound here",
        )
        .with_help(format!("introduce it first with `let {} = ...`", name.name));
        self.error(d);
    }

    fn define_const(&mut self, c: &ast::ConstDef, scope: usize) {
        // `--dim NAME=N` overrides the file's value, as `--batch` overrides its batch size.
        let val = match self.dims.get(&c.name.name) {
            Some(&n) => Val::Int(n as i64),
            None => self.expr(&c.value),
        };
        let val = match val {
            Val::Int(_) | Val::Float(_) | Val::Poison => val,
            other => {
                let what = other.describe(&self.program);
                self.error(Diagnostic::new(
                    ErrorKind::TypeMismatch,
                    format!("a constant must be a number, but this is {what}"),
                    c.value.span,
                    "not a compile-time number",
                ));
                Val::Poison
            }
        };
        symbols::note_binding(c.name.span, &val, &self.program);
        let level = self.loops.len();
        self.scopes[scope].names.insert(
            c.name.name.clone(),
            Binding {
                val,
                span: c.name.span,
                level,
            },
        );
    }

    // ---- statements ---------------------------------------------------------------------

    /// Lowers one statement. `in_model` is false inside function bodies, where declarations
    /// and `loss` are not allowed.
    pub(super) fn stmt(&mut self, stmt: &Stmt, in_model: bool) {
        match stmt {
            Stmt::Decl {
                kind,
                name,
                ty,
                init,
                span,
            } => {
                if !in_model {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::MisplacedStatement,
                            "declarations are only allowed in a model body",
                            *span,
                            "declared inside a function",
                        )
                        .with_help("pass the tensor to the function as an argument instead"),
                    );
                    return;
                }
                if let Some(frame) = self.loops.len().checked_sub(1) {
                    // A declaration is made once: in a loop, it unrolls (and is reported as
                    // declared twice).
                    self.refuse(frame, "a declaration in the loop body");
                    return;
                }
                self.declare(*kind, name, ty, init.as_ref());
            }
            Stmt::Let { pattern, value, .. } => {
                let val = self.expr(value);
                self.bind_pattern(pattern, val, value.span);
            }
            Stmt::Assign { name, value, .. } => {
                let val = self.expr(value);
                self.assign(name, val);
            }
            Stmt::Const(c) => {
                let top = self.scopes.len() - 1;
                self.define_const(c, top);
            }
            Stmt::For {
                var,
                start,
                end,
                body,
                ..
            } => self.for_loop(var, start, end, body, in_model),
            Stmt::Loss { value, span } => {
                if !in_model || !self.call_stack.is_empty() {
                    self.error(
                        Diagnostic::new(
                            ErrorKind::MisplacedStatement,
                            "`loss` is only allowed in a model body",
                            *span,
                            "inside a function",
                        )
                        .with_help("return the value and write `loss` in the model"),
                    );
                    return;
                }
                self.saw_loss = true;
                let outer = self.region;
                self.region = Region::Loss;
                let val = self.expr(value);
                self.region = outer;
                self.loss_term(val, value.span);
            }
            Stmt::Error { binds, .. } => {
                for name in binds {
                    self.bind(name, Val::Poison);
                }
            }
        }
    }

    fn loss_term(&mut self, val: Val, span: Span) {
        match val {
            Val::Tensor(id) if self.program.shape(id).rank() == 0 => {
                self.loss_terms.push((id, span))
            }
            Val::Tensor(id) => {
                let shape = self.program.shape(id).clone();
                self.error(
                    Diagnostic::new(
                        ErrorKind::ShapeMismatch,
                        format!("a loss must be a scalar, but this has shape {shape}"),
                        span,
                        format!("shape {shape}"),
                    )
                    .with_help("reduce it, e.g. `loss mean(...)` or `loss sum(...)`"),
                );
            }
            Val::Poison => {}
            other => {
                let what = other.describe(&self.program);
                self.error(Diagnostic::new(
                    ErrorKind::TypeMismatch,
                    format!(
                        "a loss must be a scalar tensor computed by the model, but this is {what}"
                    ),
                    span,
                    "does not depend on the model",
                ));
            }
        }
    }

    fn declare(
        &mut self,
        kind: ast::DeclKind,
        name: &ast::Ident,
        ty: &ast::TypeExpr,
        init: Option<&ast::Expr>,
    ) {
        if let Some(existing) = self.scopes[self.frame_base..]
            .iter()
            .find_map(|s| s.names.get(&name.name))
        {
            let first = existing.span;
            self.error(
                Diagnostic::new(
                    ErrorKind::DuplicateDefinition,
                    format!("`{}` is declared twice", name.name),
                    name.span,
                    "declared again here",
                )
                .with_label(first, "first declared here"),
            );
            return;
        }
        let Some(shape) = self.decl_shape(ty) else {
            // The shape's error is reported; uses of the name should not report it again.
            self.bind(name, Val::Poison);
            return;
        };
        let leaf_kind = match kind {
            ast::DeclKind::Input => LeafKind::Input,
            ast::DeclKind::Target => LeafKind::Target,
            // A frozen tensor is a parameter the optimiser never updates (`Compiled::frozen`).
            ast::DeclKind::Param | ast::DeclKind::Frozen => LeafKind::Param,
        };
        let id = self
            .program
            .leaf(leaf_kind, name.name.clone(), shape.clone());
        // A parameter's initialiser; for an input or a target, the value it takes when no data
        // is given (`input y0: [] = constant(5)`).
        let init = match (init, kind) {
            (Some(e), _) => match self.initialiser(e) {
                Some(Init::Orthogonal { .. }) if shape.rank() < 2 => {
                    self.error(bad_init(
                        e.span,
                        &format!("`orthogonal` needs a matrix (rank 2 or more), not a tensor of shape {shape}"),
                    ));
                    None
                }
                init => init,
            },
            (None, ast::DeclKind::Param) if shape.rank() >= 2 => Some(Init::Xavier),
            (None, ast::DeclKind::Param | ast::DeclKind::Frozen) => Some(Init::Zeros),
            (None, _) => None,
        };
        if let Some(init) = init {
            self.program.inits.insert(name.name.clone(), init);
        }
        self.bind(name, Val::Tensor(id));
    }

    /// The concrete shape of a declaration: every dimension a compile-time integer.
    fn decl_shape(&mut self, ty: &ast::TypeExpr) -> Option<Shape> {
        let ast::TypeExpr::Tensor { dims, .. } = ty else {
            self.error(Diagnostic::new(
                ErrorKind::TypeMismatch,
                "a declaration needs a tensor shape like `[B, 64]`",
                ty.span(),
                "a tuple type",
            ));
            return None;
        };
        let mut out = Vec::with_capacity(dims.len());
        let mut ok = true;
        for d in dims {
            match self.expr(d) {
                Val::Int(n) if n > 0 => out.push(n as usize),
                Val::Int(n) => {
                    self.error(Diagnostic::new(
                        ErrorKind::ShapeMismatch,
                        format!("a dimension must be positive, got {n}"),
                        d.span,
                        "not a valid dimension",
                    ));
                    ok = false;
                }
                Val::Poison => ok = false,
                other => {
                    let what = other.describe(&self.program);
                    self.error(Diagnostic::new(
                        ErrorKind::TypeMismatch,
                        format!("a dimension must be a compile-time integer, but this is {what}"),
                        d.span,
                        "not an integer",
                    ));
                    ok = false;
                }
            }
        }
        if ok && !self.check_size(&out, ty.span()) {
            return None;
        }
        ok.then_some(Shape(out))
    }

    /// Reports a shape with more than `MAX_ELEMENTS` elements; true if the size is fine.
    pub fn check_size(&mut self, dims: &[usize], span: Span) -> bool {
        if bounded_numel(dims).is_some() {
            return true;
        }
        let shown: Vec<String> = dims.iter().map(usize::to_string).collect();
        self.error(
            Diagnostic::new(
                ErrorKind::ShapeMismatch,
                format!(
                    "a tensor of shape [{}] is too large (more than 2^40 elements)",
                    shown.join(", ")
                ),
                span,
                "too large",
            )
            .with_help("check the dimensions for a typo"),
        );
        false
    }

    fn initialiser(&mut self, e: &ast::Expr) -> Option<Init> {
        let (name, span, args) = match &e.kind {
            ExprKind::Name(id) => (id.name.as_str(), id.span, Vec::new()),
            ExprKind::Call { callee, args } => (callee.name.as_str(), callee.span, args.clone()),
            _ => {
                self.error(bad_init(
                    e.span,
                    "an initialiser is a name like `zeros` or a call like `normal(0.05)`",
                ));
                return None;
            }
        };
        let mut values = Vec::new();
        for a in &args {
            let v = self.expr(&a.value);
            let Some(x) = v.as_number() else {
                if v != Val::Poison {
                    self.error(bad_init(
                        a.value.span,
                        "initialiser arguments must be numbers",
                    ));
                }
                return None;
            };
            values.push((a.name.as_ref().map(|n| n.name.clone()), x, a.value.span));
        }
        let spec: (&[&str], &[Option<f64>]) = match name {
            "zeros" | "ones" | "xavier" | "glorot" | "he" | "kaiming" => (&[], &[]),
            "orthogonal" => (&["gain"], &[Some(1.0)]),
            "fan_in_uniform" => (&["scale"], &[Some(1.0)]),
            "constant" => (&["value"], &[None]),
            "normal" => (&["std", "mean"], &[Some(1.0), Some(0.0)]),
            "uniform" => (&["low", "high"], &[None, None]),
            _ => {
                self.error(
                    Diagnostic::new(ErrorKind::BadInitialiser, format!("unknown initialiser `{name}`"), span, "unknown")
                        .with_help("initialisers: zeros, ones, constant(c), normal(std), normal(std, mean), uniform(low, high), xavier (glorot), he (kaiming), orthogonal(gain), fan_in_uniform(scale)"),
                );
                return None;
            }
        };
        let (params, defaults) = spec;
        let mut got: Vec<Option<f64>> = defaults.to_vec();
        let mut positional = 0;
        for (key, x, vspan) in values {
            let slot = match key {
                Some(k) => params.iter().position(|p| *p == k),
                None => {
                    positional += 1;
                    (positional <= params.len()).then(|| positional - 1)
                }
            };
            let Some(slot) = slot else {
                self.error(bad_init(
                    vspan,
                    &format!("`{name}` takes {}", describe_params(params)),
                ));
                return None;
            };
            got[slot] = Some(x);
        }
        if let Some(missing) = got.iter().position(|g| g.is_none()) {
            self.error(bad_init(
                e.span,
                &format!("`{name}` needs its `{}` argument", params[missing]),
            ));
            return None;
        }
        let g = |i: usize| got[i].unwrap_or_default();
        let init = match name {
            "zeros" => Init::Zeros,
            "ones" => Init::Ones,
            "xavier" | "glorot" => Init::Xavier,
            "he" | "kaiming" => Init::He,
            "orthogonal" => Init::Orthogonal { gain: g(0) },
            "fan_in_uniform" => Init::FanInUniform { scale: g(0) },
            "constant" => Init::Constant(g(0)),
            "normal" => {
                if g(0) < 0.0 {
                    self.error(bad_init(
                        e.span,
                        "the standard deviation must not be negative",
                    ));
                    return None;
                }
                Init::Normal {
                    mean: g(1),
                    std: g(0),
                }
            }
            _ => {
                if g(0) >= g(1) {
                    self.error(bad_init(e.span, "`uniform(low, high)` needs low < high"));
                    return None;
                }
                Init::Uniform {
                    low: g(0),
                    high: g(1),
                }
            }
        };
        Some(init)
    }

    fn bind_pattern(&mut self, pattern: &ast::Pattern, val: Val, span: Span) {
        match pattern {
            ast::Pattern::Name(id) => self.bind(id, val),
            ast::Pattern::Tuple(items, pspan) => match val {
                Val::Tuple(vals) if vals.len() == items.len() => {
                    for (p, v) in items.iter().zip(vals) {
                        self.bind_pattern(p, v, span);
                    }
                }
                Val::Poison => {
                    for p in items {
                        self.bind_pattern(p, Val::Poison, span);
                    }
                }
                other => {
                    let what = other.describe(&self.program);
                    self.error(
                        Diagnostic::new(
                            ErrorKind::TypeMismatch,
                            format!("cannot unpack {what} into {} names", items.len()),
                            span,
                            what.to_string(),
                        )
                        .with_label(*pspan, format!("expects a tuple of {}", items.len())),
                    );
                    for p in items {
                        self.bind_pattern(p, Val::Poison, span);
                    }
                }
            },
        }
    }

    fn for_loop(
        &mut self,
        var: &ast::Ident,
        start: &ast::Expr,
        end: &ast::Expr,
        body: &[Stmt],
        in_model: bool,
    ) {
        let lo = self.loop_bound(start);
        let hi = self.loop_bound(end);
        let (Some(lo), Some(hi)) = (lo, hi) else {
            return;
        };
        if hi.saturating_sub(lo) > MAX_TRIPS {
            self.error(
                Diagnostic::new(
                    ErrorKind::NonConstantLoopBound,
                    format!(
                        "a loop of {} iterations is longer than the {MAX_TRIPS} allowed",
                        hi.saturating_sub(lo)
                    ),
                    end.span,
                    "this bound",
                )
                .with_help("use a smaller bound"),
            );
            return;
        }
        if self.lower_scan(var, (lo, hi), body, in_model) {
            return;
        }
        self.unroll(var, (lo, hi), end.span, body, in_model);
    }

    /// Lowers a loop by unrolling it: its body once per iteration, with the loop variable a
    /// compile-time integer. Used where the body cannot be one scan (the variable sizes a
    /// shape, say). An error in the body is reported once, at the iteration that first
    /// makes it.
    fn unroll(
        &mut self,
        var: &ast::Ident,
        (lo, hi): (i64, i64),
        end_span: Span,
        body: &[Stmt],
        in_model: bool,
    ) {
        let reported = self.diagnostics.len();
        for t in lo..hi {
            self.unrolled += 1;
            if self.unrolled > MAX_UNROLLED_ITERATIONS {
                self.error(
                    Diagnostic::new(
                        ErrorKind::NonConstantLoopBound,
                        format!("loops unroll to more than {MAX_UNROLLED_ITERATIONS} iterations"),
                        end_span,
                        "this bound",
                    )
                    .with_help("this loop's body cannot be one structured loop (its index sizes a shape or an integer), so it is unrolled; use a smaller bound"),
                );
                return;
            }
            if !self.enter(var.span) {
                return;
            }
            self.scopes.push(Scope::default());
            self.bind(var, Val::Int(t));
            for s in body {
                self.stmt(s, in_model);
            }
            self.scopes.pop();
            self.nesting -= 1;
            crate::diag::dedup_since(self.diagnostics, reported);
        }
    }

    fn loop_bound(&mut self, e: &ast::Expr) -> Option<i64> {
        match self.expr(e) {
            Val::Int(n) => Some(n),
            Val::Poison => None,
            other => {
                let what = other.describe(&self.program);
                self.error(
                    Diagnostic::new(
                        ErrorKind::NonConstantLoopBound,
                        format!("a loop bound must be a compile-time integer, but this is {what}"),
                        e.span,
                        "not known at compile time",
                    )
                    .with_help("loop bounds are fixed at compile time: use an integer literal, a `const` or a dimension"),
                );
                None
            }
        }
    }

    // ---- expressions --------------------------------------------------------------------

    pub fn expr(&mut self, e: &ast::Expr) -> Val {
        if !self.enter(e.span) {
            return Val::Poison;
        }
        let val = self.expr_kind(e);
        self.nesting -= 1;
        val
    }

    /// Steps one level deeper into the tree; false (with an error) past `MAX_NESTING`.
    pub(super) fn enter(&mut self, span: Span) -> bool {
        if self.nesting >= MAX_NESTING {
            self.error(
                Diagnostic::new(
                    ErrorKind::NestingTooDeep,
                    format!("expressions, loops and calls nest more than {MAX_NESTING} deep here"),
                    span,
                    "nested too deeply",
                )
                .with_help("split the expression with `let`"),
            );
            return false;
        }
        self.nesting += 1;
        true
    }

    fn expr_kind(&mut self, e: &ast::Expr) -> Val {
        match &e.kind {
            ExprKind::Int(i) => Val::Int(*i),
            ExprKind::Float(x) => Val::Float(*x),
            ExprKind::Bool(b) => Val::Bool(*b),
            ExprKind::Str(s) => Val::Str(s.clone()),
            ExprKind::Name(id) => self.name(id),
            ExprKind::Neg(inner) => {
                let v = self.expr(inner);
                match v {
                    Val::Int(i) => i.checked_neg().map_or(Val::Float(-(i as f64)), Val::Int),
                    Val::Float(x) => Val::Float(-x),
                    Val::Tensor(id) => self.unary(UnaryOp::Neg, id, e.span),
                    Val::Poison => Val::Poison,
                    other => self.type_error(&other, "a number or a tensor", inner.span),
                }
            }
            ExprKind::Binary(op, a, b) => {
                let va = self.expr(a);
                let vb = self.expr(b);
                self.binary(*op, (va, a.span), (vb, b.span), e.span)
            }
            ExprKind::Call { callee, args } => {
                let args: Vec<ArgVal> = args
                    .iter()
                    .map(|a| ArgVal {
                        name: a.name.clone(),
                        val: self.expr(&a.value),
                        span: a.value.span,
                    })
                    .collect();
                self.call(callee, args, e.span)
            }
            ExprKind::Index { base, indices } => {
                let b = self.expr(base);
                self.index(b, base.span, indices)
            }
            ExprKind::Tuple(items) => Val::Tuple(items.iter().map(|i| self.expr(i)).collect()),
            ExprKind::List(items) => Val::List(items.iter().map(|i| self.expr(i)).collect()),
        }
    }

    fn name(&mut self, id: &ast::Ident) -> Val {
        if let Some(s) = self.lookup_scope(&id.name) {
            let b = &self.scopes[s].names[&id.name];
            symbols::note_use(id.span, b.span);
            if b.level < self.loops.len() {
                // A value from outside the loops being lowered as scans: the body reads it
                // through a leaf of its own.
                return self.capture(s, &id.name);
            }
            return b.val.clone();
        }
        if let Some(&d) = self.dims.get(&id.name) {
            return Val::Int(d as i64);
        }
        let mut d = Diagnostic::new(
            ErrorKind::UnknownName,
            format!("`{}` is not defined", id.name),
            id.span,
            "not found in this scope",
        );
        if id.name == "B" || (id.name.len() == 1 && id.name.chars().all(|c| c.is_ascii_uppercase()))
        {
            d.kind = ErrorKind::UnboundDimension;
            d.message = format!("dimension `{}` is not bound", id.name);
            d = d.with_help(if id.name == "B" {
                "`B` is the batch size: set `batch = N` in the train block or pass --batch N"
                    .to_string()
            } else {
                format!(
                    "define it with `const {} = ...` or pass --dim {}=N",
                    id.name, id.name
                )
            });
        } else if let Some(call_site) = self.bound_by_caller(&id.name) {
            d = d
                .with_label(call_site, "in the function called here")
                .with_help(format!(
                    "a function sees only its parameters and the global constants and functions, not its caller's names: pass `{}` as an argument",
                    id.name
                ));
        } else if let Some(s) = self.suggest(&id.name) {
            d = d.with_help(format!("did you mean `{s}`?"));
        }
        self.error(d);
        Val::Poison
    }

    /// Inside an inlined function, the site of the call being inlined when a caller binds
    /// `name`: a function that reads a name of the model (or function) that calls it.
    fn bound_by_caller(&self, name: &str) -> Option<Span> {
        let (_, call_site) = self.call_stack.last()?;
        let outer = self.scopes[1..self.frame_base]
            .iter()
            .any(|s| s.names.contains_key(name));
        outer.then_some(*call_site)
    }

    /// The closest bound name, for "did you mean" hints.
    fn suggest(&self, name: &str) -> Option<String> {
        let mut candidates: Vec<&str> = self.scopes[self.frame_base..]
            .iter()
            .chain(std::iter::once(&self.scopes[0]))
            .flat_map(|s| s.names.keys().map(String::as_str))
            .collect();
        candidates.extend(self.globals.fns.keys().map(String::as_str));
        candidates.extend(builtins::NAMES.iter().copied());
        crate::diag::closest(name, candidates.into_iter())
    }

    pub fn type_error(&mut self, got: &Val, expected: &str, span: Span) -> Val {
        if *got != Val::Poison {
            let what = got.describe(&self.program);
            self.error(Diagnostic::new(
                ErrorKind::TypeMismatch,
                format!("expected {expected}, found {what}"),
                span,
                format!("this is {what}"),
            ));
        }
        Val::Poison
    }

    /// Appends a node in the current region, reporting a shape error at `span`.
    pub fn push_node(
        &mut self,
        op: Op,
        args: Vec<ValueId>,
        target: Option<Shape>,
        span: Span,
    ) -> Option<ValueId> {
        match self.program.add(op, args, target) {
            Ok(id) => {
                self.program.nodes[id.index()].region = self.region;
                let dims = self.shape(id).dims().to_vec();
                self.check_size(&dims, span).then_some(id)
            }
            Err(e) => {
                self.error(Diagnostic::new(
                    ErrorKind::ShapeMismatch,
                    e.message,
                    span,
                    "in this expression",
                ));
                None
            }
        }
    }

    pub fn node(&mut self, op: Op, args: Vec<ValueId>, target: Option<Shape>, span: Span) -> Val {
        self.push_node(op, args, target, span)
            .map_or(Val::Poison, Val::Tensor)
    }

    pub fn shape(&self, id: ValueId) -> &Shape {
        self.program.shape(id)
    }

    pub fn constant(&mut self, value: f64, shape: Shape) -> ValueId {
        let id = self.program.constant(value, shape);
        self.program.nodes[id.index()].region = self.region;
        id
    }

    pub fn unary(&mut self, op: UnaryOp, x: ValueId, span: Span) -> Val {
        self.node(Op::Unary(op), vec![x], None, span)
    }

    /// Turns a value into a tensor: numbers become rank-0 constants.
    pub fn tensor(&mut self, v: &Val, span: Span) -> Option<ValueId> {
        match v {
            Val::Tensor(id) => Some(*id),
            Val::Int(i) => Some(self.constant(*i as f64, Shape::scalar())),
            Val::Float(x) => Some(self.constant(*x, Shape::scalar())),
            Val::Poison => None,
            other => {
                self.type_error(other, "a tensor", span);
                None
            }
        }
    }

    /// Broadcasts `x` to `shape` (a constant is re-made at that shape instead).
    pub fn broadcast_to(&mut self, x: ValueId, shape: &Shape, span: Span) -> Option<ValueId> {
        if self.shape(x) == shape {
            return Some(x);
        }
        if let Op::Const(c) = self.program.node(x).op {
            return Some(self.constant(c, shape.clone()));
        }
        self.push_node(Op::Broadcast, vec![x], Some(shape.clone()), span)
    }

    /// An elementwise binary op with numpy broadcasting.
    pub fn elementwise(
        &mut self,
        op: BinaryOp,
        a: (&Val, Span),
        b: (&Val, Span),
        span: Span,
    ) -> Val {
        // A number against a tensor becomes a constant of the tensor's shape directly.
        match (a.0.as_number(), b.0.as_number(), a.0, b.0) {
            (Some(c), None, _, Val::Tensor(y)) => {
                let k = self.constant(c, self.shape(*y).clone());
                return self.node(Op::Binary(op), vec![k, *y], None, span);
            }
            (None, Some(c), Val::Tensor(x), _) => {
                let k = self.constant(c, self.shape(*x).clone());
                return self.node(Op::Binary(op), vec![*x, k], None, span);
            }
            _ => {}
        }
        let (Some(x), Some(y)) = (self.tensor(a.0, a.1), self.tensor(b.0, b.1)) else {
            return Val::Poison;
        };
        let (sa, sb) = (self.shape(x).clone(), self.shape(y).clone());
        let Some(common) = sa.broadcast_with(&sb) else {
            self.error(
                Diagnostic::new(
                    ErrorKind::BroadcastMismatch,
                    format!("shapes {sa} and {sb} do not broadcast"),
                    span,
                    "in this operation",
                )
                .with_label(a.1, format!("has shape {sa}"))
                .with_label(b.1, format!("has shape {sb}"))
                .with_help("dimensions are matched from the right and must be equal or 1"),
            );
            return Val::Poison;
        };
        let (Some(x), Some(y)) = (
            self.broadcast_to(x, &common, a.1),
            self.broadcast_to(y, &common, b.1),
        ) else {
            return Val::Poison;
        };
        self.node(Op::Binary(op), vec![x, y], None, span)
    }

    fn binary(&mut self, op: BinOp, a: (Val, Span), b: (Val, Span), span: Span) -> Val {
        if matches!(a.0, Val::Poison) || matches!(b.0, Val::Poison) {
            return Val::Poison;
        }
        // A loop index plus or minus an integer is still one.
        match (&a.0, &b.0, op) {
            (Val::Iteration { level, offset }, Val::Int(k), BinOp::Add)
            | (Val::Int(k), Val::Iteration { level, offset }, BinOp::Add) => {
                if let Some(offset) = offset.checked_add(*k) {
                    return Val::Iteration {
                        level: *level,
                        offset,
                    };
                }
            }
            (Val::Iteration { level, offset }, Val::Int(k), BinOp::Sub) => {
                if let Some(offset) = offset.checked_sub(*k) {
                    return Val::Iteration {
                        level: *level,
                        offset,
                    };
                }
            }
            _ => {}
        }
        // Compile-time arithmetic on numbers.
        if let (Some(x), Some(y)) = (a.0.as_number(), b.0.as_number()) {
            if let (Val::Int(i), Val::Int(j)) = (&a.0, &b.0) {
                let folded = match op {
                    BinOp::Add => i.checked_add(*j),
                    BinOp::Sub => i.checked_sub(*j),
                    BinOp::Mul => i.checked_mul(*j),
                    BinOp::Div if *j != 0 && i % j == 0 => Some(i / j),
                    BinOp::Div => None,
                    BinOp::MatMul => return self.type_error(&a.0, "a tensor", a.1),
                    _ => None,
                };
                if let Some(v) = folded {
                    return Val::Int(v);
                }
            }
            return match op {
                BinOp::Add => Val::Float(x + y),
                BinOp::Sub => Val::Float(x - y),
                BinOp::Mul => Val::Float(x * y),
                BinOp::Div => Val::Float(x / y),
                BinOp::MatMul => self.type_error(&a.0, "a tensor", a.1),
                compare => {
                    let holds = match compare {
                        BinOp::Less => x < y,
                        BinOp::Greater => x > y,
                        BinOp::LessEq => x <= y,
                        BinOp::GreaterEq => x >= y,
                        BinOp::Equal => x == y,
                        _ => x != y,
                    };
                    Val::Float(if holds { 1.0 } else { 0.0 })
                }
            };
        }
        let bop = match op {
            BinOp::Add => BinaryOp::Add,
            BinOp::Sub => BinaryOp::Sub,
            BinOp::Mul => BinaryOp::Mul,
            BinOp::Div => BinaryOp::Div,
            BinOp::MatMul => return self.matmul((&a.0, a.1), (&b.0, b.1), span),
            compare => return self.compare(compare, a, b, span),
        };
        self.elementwise(bop, (&a.0, a.1), (&b.0, b.1), span)
    }

    /// A comparison of tensors (or a tensor and a number), broadcasting: 1 where it holds,
    /// 0 elsewhere, from the primitive `greater` and `equal` (a < b is b > a, a <= b is
    /// 1 − (a > b), a != b is 1 − (a == b)). Its derivative is zero.
    fn compare(&mut self, op: BinOp, a: (Val, Span), b: (Val, Span), span: Span) -> Val {
        let (primitive, swapped, negated) = match op {
            BinOp::Greater => (BinaryOp::Greater, false, false),
            BinOp::Less => (BinaryOp::Greater, true, false),
            BinOp::LessEq => (BinaryOp::Greater, false, true),
            BinOp::GreaterEq => (BinaryOp::Greater, true, true),
            BinOp::Equal => (BinaryOp::Equal, false, false),
            _ => (BinaryOp::Equal, false, true),
        };
        let (first, second) = if swapped { (&b, &a) } else { (&a, &b) };
        let holds = self.elementwise(primitive, (&first.0, first.1), (&second.0, second.1), span);
        if !negated || holds == Val::Poison {
            return holds;
        }
        self.elementwise(
            BinaryOp::Sub,
            (&Val::Float(1.0), span),
            (&holds, span),
            span,
        )
    }

    /// `a @ b` with numpy's matmul rules: 1-D operands are promoted, a 2-D right operand is
    /// applied to every leading index of the left one, and batch axes broadcast.
    pub fn matmul(&mut self, a: (&Val, Span), b: (&Val, Span), span: Span) -> Val {
        let (x, y) = match (a.0, b.0) {
            (Val::Tensor(x), Val::Tensor(y)) => (*x, *y),
            (Val::Poison, _) | (_, Val::Poison) => return Val::Poison,
            (Val::Tensor(_), other) => return self.type_error(other, "a tensor", b.1),
            (other, _) => return self.type_error(other, "a tensor", a.1),
        };
        let (sa, sb) = (self.shape(x).clone(), self.shape(y).clone());
        let mismatch = |l: &mut Self, why: String| {
            l.error(
                Diagnostic::new(
                    ErrorKind::MatmulShapeMismatch,
                    format!("cannot multiply {sa} by {sb}"),
                    span,
                    why,
                )
                .with_label(a.1, format!("has shape {sa}"))
                .with_label(b.1, format!("has shape {sb}"))
                .with_help("`a @ b` needs the last dimension of `a` to equal the first matrix dimension of `b`; transpose(w) swaps the last two axes"),
            );
            Val::Poison
        };
        if sa.rank() == 0 || sb.rank() == 0 {
            return mismatch(self, "matmul needs tensors of rank 1 or more".to_string());
        }
        let k_a = sa.dims()[sa.rank() - 1];
        let k_b = if sb.rank() == 1 {
            sb.dims()[0]
        } else {
            sb.dims()[sb.rank() - 2]
        };
        if k_a != k_b {
            return mismatch(self, format!("inner dimensions {k_a} and {k_b} differ"));
        }
        // Promote to rank >= 2.
        let xa = if sa.rank() == 1 {
            self.program.reshape(x, Shape(vec![1, k_a]))
        } else {
            x
        };
        let yb = if sb.rank() == 1 {
            self.program.reshape(y, Shape(vec![k_b, 1]))
        } else {
            y
        };
        self.mark_region(&[xa, yb]);
        let (ra, rb) = (self.shape(xa).clone(), self.shape(yb).clone());
        let out = if rb.rank() == 2 && ra.rank() > 2 {
            // [..., m, k] @ [k, n]: fold the leading axes into the rows.
            let rows: usize = ra.dims()[..ra.rank() - 1].iter().product();
            let flat = self.program.reshape(xa, Shape(vec![rows, k_a]));
            self.mark_region(&[flat]);
            let Some(prod) = self.push_node(Op::MatMul, vec![flat, yb], None, span) else {
                return Val::Poison;
            };
            let mut dims = ra.dims()[..ra.rank() - 1].to_vec();
            dims.push(rb.dims()[1]);
            let r = self.program.reshape(prod, Shape(dims));
            self.mark_region(&[r]);
            r
        } else {
            let batch_a = Shape(ra.dims()[..ra.rank() - 2].to_vec());
            let batch_b = Shape(rb.dims()[..rb.rank() - 2].to_vec());
            let Some(batch) = batch_a.broadcast_with(&batch_b) else {
                return mismatch(self, "batch dimensions do not broadcast".to_string());
            };
            let mut ta = batch.0.clone();
            ta.extend_from_slice(&ra.dims()[ra.rank() - 2..]);
            let mut tb = batch.0.clone();
            tb.extend_from_slice(&rb.dims()[rb.rank() - 2..]);
            let (Some(xa), Some(yb)) = (
                self.broadcast_to(xa, &Shape(ta), a.1),
                self.broadcast_to(yb, &Shape(tb), b.1),
            ) else {
                return Val::Poison;
            };
            let Some(prod) = self.push_node(Op::MatMul, vec![xa, yb], None, span) else {
                return Val::Poison;
            };
            prod
        };
        // Drop the axes that 1-D operands were promoted with.
        let mut dims = self.shape(out).dims().to_vec();
        if sb.rank() == 1 {
            dims.pop();
        }
        if sa.rank() == 1 {
            let n = dims.len();
            dims.remove(n - if sb.rank() == 1 { 1 } else { 2 });
        }
        let r = self.program.reshape(out, Shape(dims));
        self.mark_region(&[r]);
        Val::Tensor(r)
    }

    /// Sets the current region on nodes made through the plain `Program` builder.
    pub fn mark_region(&mut self, ids: &[ValueId]) {
        for &id in ids {
            let node = &mut self.program.nodes[id.index()];
            if !matches!(node.op, Op::Leaf(_)) && node.name.is_none() {
                node.region = self.region;
            }
        }
    }

    fn index(&mut self, base: Val, base_span: Span, indices: &[ast::IndexItem]) -> Val {
        match base {
            Val::Tuple(items) | Val::List(items) => {
                let [ast::IndexItem::At(e)] = indices else {
                    let span = index_span(indices).unwrap_or(base_span);
                    self.error(Diagnostic::new(
                        ErrorKind::TypeMismatch,
                        "tuples and lists take one integer index",
                        span,
                        "here",
                    ));
                    return Val::Poison;
                };
                let i = self.expr(e);
                let Val::Int(i) = i else {
                    return self.type_error(&i, "an integer index", e.span);
                };
                let n = items.len() as i64;
                let k = if i < 0 { i + n } else { i };
                if k < 0 || k >= n {
                    self.error(Diagnostic::new(
                        ErrorKind::IndexOutOfRange,
                        format!("index {i} is out of range for {n} items"),
                        e.span,
                        "out of range",
                    ));
                    return Val::Poison;
                }
                items[k as usize].clone()
            }
            Val::Tensor(id) => self.index_tensor(id, base_span, indices),
            Val::Poison => Val::Poison,
            other => self.type_error(&other, "a tensor, tuple or list to index", base_span),
        }
    }

    /// A bound of a range index: absent gives `default`; negative counts from the end of an
    /// axis of `size`. A bound that is not an integer is reported (the error value returned).
    fn range_bound(
        &mut self,
        bound: Option<&ast::Expr>,
        default: i64,
        size: i64,
    ) -> Result<i64, Val> {
        let Some(e) = bound else {
            return Ok(default);
        };
        match self.expr(e) {
            Val::Int(i) if i < 0 => Ok(i + size),
            Val::Int(i) => Ok(i),
            v => Err(self.type_error(&v, "an integer bound", e.span)),
        }
    }

    fn index_tensor(&mut self, id: ValueId, base_span: Span, indices: &[ast::IndexItem]) -> Val {
        // Single indices are evaluated first: one that is a loop's index makes the tensor a
        // stacked input of that loop's scan, read one slice per iteration.
        let mut at: Vec<Option<Val>> = indices
            .iter()
            .map(|item| match item {
                ast::IndexItem::At(e) => Some(self.expr(e)),
                ast::IndexItem::Range { .. } => None,
            })
            .collect();
        let by_loop: Vec<usize> = (0..at.len())
            .filter(|&k| matches!(at[k], Some(Val::Iteration { .. })))
            .collect();
        if let [axis] = by_loop[..] {
            if axis < self.shape(id).rank() {
                let Some(Val::Iteration { level, offset }) = at[axis] else {
                    unreachable!("filtered above")
                };
                let Some(slice) = self.stacked_slice(id, axis, (level, offset)) else {
                    return Val::Poison;
                };
                let mut rest = indices.to_vec();
                rest.remove(axis);
                at.remove(axis);
                return self.index_evaluated(slice, base_span, &rest, at);
            }
        } else if by_loop.len() > 1 {
            return self.type_error(
                &Val::Iteration {
                    level: 0,
                    offset: 0,
                },
                "one loop index per indexing",
                base_span,
            );
        }
        self.index_evaluated(id, base_span, indices, at)
    }

    /// Indexes a tensor whose single indices are evaluated already (`at[k]` for item k).
    fn index_evaluated(
        &mut self,
        id: ValueId,
        base_span: Span,
        indices: &[ast::IndexItem],
        at: Vec<Option<Val>>,
    ) -> Val {
        let shape = self.shape(id).clone();
        if indices.len() > shape.rank() {
            let span = index_span(indices).unwrap_or(base_span);
            self.error(
                Diagnostic::new(
                    ErrorKind::IndexOutOfRange,
                    format!(
                        "{} indices for a tensor of rank {}",
                        indices.len(),
                        shape.rank()
                    ),
                    span,
                    "too many indices",
                )
                .with_label(base_span, format!("has shape {shape}")),
            );
            return Val::Poison;
        }
        let mut cur = id;
        let mut removed = Vec::new();
        for ((axis, item), given) in indices.iter().enumerate().zip(at) {
            let size = shape.dims()[axis] as i64;
            let (start, end, span, drop) = match item {
                ast::IndexItem::At(e) => {
                    let v = given.unwrap_or(Val::Poison);
                    let Val::Int(i) = v else {
                        return self.type_error(&v, "an integer index", e.span);
                    };
                    let k = if i < 0 { i + size } else { i };
                    (k, k.saturating_add(1), e.span, true)
                }
                ast::IndexItem::Range { start, end, span } => {
                    let lo = match self.range_bound(start.as_ref(), 0, size) {
                        Ok(b) => b,
                        Err(v) => return v,
                    };
                    let hi = match self.range_bound(end.as_ref(), size, size) {
                        Ok(b) => b,
                        Err(v) => return v,
                    };
                    (lo, hi, *span, false)
                }
            };
            if start < 0 || end > size || start >= end {
                self.error(
                    Diagnostic::new(
                        ErrorKind::IndexOutOfRange,
                        if drop {
                            format!("index {start} is out of range for axis {axis} of size {size}")
                        } else {
                            format!("range {start}..{end} is out of range for axis {axis} of size {size}")
                        },
                        span,
                        "out of range",
                    )
                    .with_label(base_span, format!("has shape {shape}")),
                );
                return Val::Poison;
            }
            if start != 0 || end != size {
                let Some(next) = self.push_node(
                    Op::Slice {
                        axis,
                        start: start as usize,
                        end: end as usize,
                    },
                    vec![cur],
                    None,
                    span,
                ) else {
                    return Val::Poison;
                };
                cur = next;
            }
            if drop {
                removed.push(axis);
            }
        }
        if !removed.is_empty() {
            let dims: Vec<usize> = self
                .shape(cur)
                .dims()
                .iter()
                .enumerate()
                .filter(|(i, _)| !removed.contains(i))
                .map(|(_, &d)| d)
                .collect();
            cur = self.program.reshape(cur, Shape(dims));
            self.mark_region(&[cur]);
        }
        Val::Tensor(cur)
    }

    // ---- calls --------------------------------------------------------------------------

    fn call(&mut self, callee: &ast::Ident, args: Vec<ArgVal>, span: Span) -> Val {
        if let Some(def) = self.globals.fns.get(&callee.name) {
            symbols::note_call(callee.span, def.name.span);
            let before = self.diagnostics.len();
            let val = self.inline(def, callee, args, span);
            symbols::note_call_errors(callee.span, before..self.diagnostics.len());
            return val;
        }
        if builtins::is_builtin(&callee.name) {
            return builtins::call(self, callee, args, span);
        }
        let mut d = Diagnostic::new(
            ErrorKind::UnknownFunction,
            format!("unknown function `{}`", callee.name),
            callee.span,
            "not a builtin or a defined function",
        );
        if let Some(s) = self.suggest(&callee.name) {
            d = d.with_help(format!("did you mean `{s}`?"));
        } else if ["mse", "cross_entropy", "softmax", "log_softmax", "dense"]
            .contains(&callee.name.as_str())
        {
            d = d.with_help("it is in the stdlib: add `use nn` at the top of the file");
        }
        self.error(d);
        Val::Poison
    }

    /// Inlines a user function: binds its arguments (checking shape annotations), lowers its
    /// body in a fresh frame and checks the result against the declared return shape.
    fn inline(
        &mut self,
        def: &'g ast::FnDef,
        callee: &ast::Ident,
        args: Vec<ArgVal>,
        span: Span,
    ) -> Val {
        if let Some((_, first)) = self.call_stack.iter().find(|(n, _)| *n == def.name.name) {
            let first = *first;
            self.error(
                Diagnostic::new(
                    ErrorKind::Recursion,
                    format!("function `{}` calls itself", def.name.name),
                    callee.span,
                    "recursive call",
                )
                .with_label(first, "first called here")
                .with_label(def.name.span, "defined here")
                .with_help("functions are inlined at compile time, so they cannot recurse; use a `for` loop"),
            );
            return Val::Poison;
        }
        let Some(bound) = self.bind_args(def, callee, args, span) else {
            return Val::Poison;
        };
        let mut dims: HashMap<String, usize> = HashMap::new();
        for (param, arg) in def.params.iter().zip(&bound) {
            if let Some(ty) = &param.ty {
                let what = format!("argument `{}`", param.name.name);
                if !self.match_type(ty, &arg.val, arg.span, &mut dims, &what) {
                    return Val::Poison;
                }
            }
        }
        let saved_base = self.frame_base;
        self.frame_base = self.scopes.len();
        self.scopes.push(Scope::default());
        self.call_stack.push((def.name.name.clone(), callee.span));
        for (param, arg) in def.params.iter().zip(bound) {
            symbols::note_binding(param.name.span, &arg.val, &self.program);
            self.scopes.last_mut().expect("frame scope").names.insert(
                param.name.name.clone(),
                Binding {
                    val: arg.val,
                    span: param.name.span,
                    level: self.loops.len(),
                },
            );
        }
        for s in &def.body.stmts {
            self.stmt(s, false);
        }
        let result = match &def.body.result {
            Some(e) => self.expr(e),
            None => {
                self.error(
                    Diagnostic::new(
                        ErrorKind::TypeMismatch,
                        format!("function `{}` has no result", def.name.name),
                        def.body.span,
                        "this body ends without a result expression",
                    )
                    .with_help("end the body with an expression; one that starts with `(`, `[` or `-` is written `return ...`"),
                );
                Val::Poison
            }
        };
        self.call_stack.pop();
        self.scopes.truncate(self.frame_base);
        self.frame_base = saved_base;
        if let (Some(ty), false) = (&def.ret, result == Val::Poison) {
            let result_span = def.body.result.as_ref().map_or(def.body.span, |e| e.span);
            if !self.match_type(ty, &result, result_span, &mut dims, "the result") {
                return Val::Poison;
            }
        }
        result
    }

    /// Matches call arguments to a function's parameters by position, then by name.
    fn bind_args(
        &mut self,
        def: &ast::FnDef,
        callee: &ast::Ident,
        args: Vec<ArgVal>,
        span: Span,
    ) -> Option<Vec<ArgVal>> {
        let n = def.params.len();
        let mut slots: Vec<Option<ArgVal>> = vec![None; n];
        let mut next = 0;
        let mut ok = true;
        for arg in args {
            let slot = match &arg.name {
                Some(name) => match def.params.iter().position(|p| p.name.name == name.name) {
                    Some(i) => i,
                    None => {
                        let (nspan, nname) = (name.span, name.name.clone());
                        self.error(
                            Diagnostic::new(
                                ErrorKind::WrongArity,
                                format!("`{}` has no parameter named `{nname}`", def.name.name),
                                nspan,
                                "unknown parameter",
                            )
                            .with_label(def.name.span, "defined here"),
                        );
                        ok = false;
                        continue;
                    }
                },
                None => {
                    next += 1;
                    next - 1
                }
            };
            if slot >= n {
                self.error(
                    Diagnostic::new(
                        ErrorKind::WrongArity,
                        format!(
                            "`{}` takes {n} argument(s) but more were given",
                            def.name.name
                        ),
                        arg.span,
                        "unexpected argument",
                    )
                    .with_label(def.name.span, format!("defined here with {n} parameter(s)")),
                );
                return None;
            }
            slots[slot] = Some(arg);
        }
        let missing: Vec<&str> = def
            .params
            .iter()
            .zip(&slots)
            .filter(|(_, s)| s.is_none())
            .map(|(p, _)| p.name.name.as_str())
            .collect();
        if !missing.is_empty() {
            self.error(
                Diagnostic::new(
                    ErrorKind::WrongArity,
                    format!(
                        "`{}` takes {n} argument(s); missing {}",
                        def.name.name,
                        missing.join(", ")
                    ),
                    span,
                    "in this call",
                )
                .with_label(def.name.span, "defined here"),
            );
            return None;
        }
        let _ = callee;
        if ok {
            Some(slots.into_iter().flatten().collect())
        } else {
            None
        }
    }

    /// Checks a value against a shape annotation, binding the annotation's dimension
    /// variables (`[B, I]`) on first sight and checking them afterwards.
    fn match_type(
        &mut self,
        ty: &ast::TypeExpr,
        val: &Val,
        span: Span,
        dims: &mut HashMap<String, usize>,
        what: &str,
    ) -> bool {
        let fail = |l: &mut Self, why: String| {
            l.error(
                Diagnostic::new(
                    ErrorKind::SignatureMismatch,
                    format!("{what} does not match its declared shape: {why}"),
                    span,
                    why.clone(),
                )
                .with_label(ty.span(), "declared here"),
            );
            false
        };
        match (ty, val) {
            (_, Val::Poison) => false,
            (ast::TypeExpr::Tuple { items, .. }, Val::Tuple(vals)) => {
                if items.len() != vals.len() {
                    return fail(
                        self,
                        format!(
                            "expected a tuple of {}, found a tuple of {}",
                            items.len(),
                            vals.len()
                        ),
                    );
                }
                items
                    .iter()
                    .zip(vals)
                    .all(|(t, v)| self.match_type(t, v, span, dims, what))
            }
            (ast::TypeExpr::Tensor { dims: tdims, .. }, Val::Tensor(id)) => {
                let shape = self.shape(*id).clone();
                if tdims.len() != shape.rank() {
                    return fail(
                        self,
                        format!("expected rank {}, found shape {shape}", tdims.len()),
                    );
                }
                for (d, &actual) in tdims.iter().zip(shape.dims()) {
                    let expected = match &d.kind {
                        ExprKind::Int(i) => Some(*i as usize),
                        ExprKind::Name(n) if n.name == "_" => None,
                        ExprKind::Name(n) => match self.lookup(&n.name).map(|b| b.val.clone()) {
                            Some(Val::Int(i)) => Some(i as usize),
                            _ => match dims.get(&n.name) {
                                Some(&v) => Some(v),
                                None => {
                                    dims.insert(n.name.clone(), actual);
                                    None
                                }
                            },
                        },
                        _ => {
                            self.error(Diagnostic::new(
                                ErrorKind::TypeMismatch,
                                "a shape annotation's dimensions are names, integers or `_`",
                                d.span,
                                "not a dimension",
                            ));
                            return false;
                        }
                    };
                    if let Some(e) = expected {
                        if e != actual {
                            let dname = match &d.kind {
                                ExprKind::Name(n) => format!("`{}` = {e}", n.name),
                                _ => e.to_string(),
                            };
                            return fail(
                                self,
                                format!("found shape {shape}, but dimension {dname}"),
                            );
                        }
                    }
                }
                true
            }
            (ast::TypeExpr::Tensor { .. }, Val::Int(_) | Val::Float(_)) => true,
            (ast::TypeExpr::Tensor { .. }, other) => {
                let what_val = other.describe(&self.program);
                fail(self, format!("expected a tensor, found {what_val}"))
            }
            (ast::TypeExpr::Tuple { items, .. }, other) => {
                let what_val = other.describe(&self.program);
                fail(
                    self,
                    format!("expected a tuple of {}, found {what_val}", items.len()),
                )
            }
        }
    }
}

fn bad_init(span: Span, message: &str) -> Diagnostic {
    Diagnostic::new(ErrorKind::BadInitialiser, format!("bad initialiser: {message}"), span, "here")
        .with_help("initialisers: zeros, ones, constant(c), normal(std), normal(std, mean), uniform(low, high), xavier (glorot), he (kaiming), orthogonal(gain), fan_in_uniform(scale)")
}

fn describe_params(params: &[&str]) -> String {
    if params.is_empty() {
        "no arguments".to_string()
    } else {
        format!("arguments {}", params.join(", "))
    }
}

fn index_span(indices: &[ast::IndexItem]) -> Option<Span> {
    let spans: Vec<Span> = indices
        .iter()
        .map(|i| match i {
            ast::IndexItem::At(e) => e.span,
            ast::IndexItem::Range { span, .. } => *span,
        })
        .collect();
    Some(spans.first()?.to(*spans.last()?))
}
