//! The syntax tree as readable text (`pcg ir --stage ast`): one line per item, statement and
//! train entry, indented by nesting, with every binary operation parenthesised so that the
//! tree's grouping shows (`tanh((x @ w) + b)`). It shows what the parser read, not how the
//! file was laid out: comments and separators are gone, and blocks are indentation.

use super::ast::*;

/// The module's tree, one line per node.
pub fn module_text(module: &Module) -> String {
    let mut out = Printer::default();
    for item in &module.items {
        out.item(item);
    }
    out.text
}

#[derive(Default)]
struct Printer {
    text: String,
    depth: usize,
}

impl Printer {
    fn line(&mut self, s: &str) {
        for _ in 0..self.depth {
            self.text.push_str("  ");
        }
        self.text.push_str(s);
        self.text.push('\n');
    }

    fn nested(&mut self, f: impl FnOnce(&mut Self)) {
        self.depth += 1;
        f(self);
        self.depth -= 1;
    }

    fn item(&mut self, item: &Item) {
        match item {
            Item::Use(u) => match &u.target {
                UseTarget::Module(id) => self.line(&format!("use {}", id.name)),
                UseTarget::File(path) => self.line(&format!("use {path:?}")),
            },
            Item::Const(c) => self.line(&format!("const {} = {}", c.name.name, expr(&c.value))),
            Item::Fn(f) => {
                let params: Vec<String> = f
                    .params
                    .iter()
                    .map(|p| match &p.ty {
                        Some(t) => format!("{}: {}", p.name.name, type_text(t)),
                        None => p.name.name.clone(),
                    })
                    .collect();
                let ret = f
                    .ret
                    .as_ref()
                    .map_or(String::new(), |t| format!(" -> {}", type_text(t)));
                self.line(&format!("fn {}({}){ret}", f.name.name, params.join(", ")));
                self.nested(|p| {
                    p.stmts(&f.body.stmts);
                    if let Some(r) = &f.body.result {
                        p.line(&format!("result {}", expr(r)));
                    }
                });
            }
            Item::Model(m) => {
                self.line(&format!("model {}", m.name.name));
                self.nested(|p| p.stmts(&m.body));
            }
            Item::Train(t) => {
                self.line(&format!("train {}", t.model.name));
                self.nested(|p| p.entries(&t.entries));
            }
        }
    }

    fn stmts(&mut self, stmts: &[Stmt]) {
        for s in stmts {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, stmt: &Stmt) {
        match stmt {
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
                let init = init
                    .as_ref()
                    .map_or(String::new(), |e| format!(" = {}", expr(e)));
                self.line(&format!("{keyword} {}: {}{init}", name.name, type_text(ty)));
            }
            Stmt::Let { pattern, value, .. } => {
                self.line(&format!("let {} = {}", pattern_text(pattern), expr(value)))
            }
            Stmt::Assign { name, value, .. } => {
                self.line(&format!("{} = {}", name.name, expr(value)))
            }
            Stmt::Const(c) => self.line(&format!("const {} = {}", c.name.name, expr(&c.value))),
            Stmt::For {
                var,
                start,
                end,
                body,
                ..
            } => {
                self.line(&format!(
                    "for {} in {}..{}",
                    var.name,
                    expr(start),
                    expr(end)
                ));
                self.nested(|p| p.stmts(body));
            }
            Stmt::Loss { value, .. } => self.line(&format!("loss {}", expr(value))),
            Stmt::Error { .. } => self.line("<a statement that did not parse>"),
        }
    }

    fn entries(&mut self, entries: &[TrainEntry]) {
        for e in entries {
            match &e.value {
                TrainValue::Expr(v) => self.line(&format!("{} = {}", e.key.name, expr(v))),
                TrainValue::Block(inner, _) => {
                    self.line(&e.key.name);
                    self.nested(|p| p.entries(inner));
                }
            }
        }
    }
}

fn pattern_text(p: &Pattern) -> String {
    match p {
        Pattern::Name(id) => id.name.clone(),
        Pattern::Tuple(items, _) => {
            let items: Vec<String> = items.iter().map(pattern_text).collect();
            format!("({})", items.join(", "))
        }
    }
}

fn type_text(t: &TypeExpr) -> String {
    match t {
        TypeExpr::Tensor { dims, .. } => format!("[{}]", list(dims)),
        TypeExpr::Tuple { items, .. } => {
            let items: Vec<String> = items.iter().map(type_text).collect();
            format!("({})", items.join(", "))
        }
    }
}

fn list(items: &[Expr]) -> String {
    items.iter().map(expr).collect::<Vec<_>>().join(", ")
}

/// An expression with its binary operations parenthesised, except at the top.
fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Binary(op, a, b) => format!("{} {} {}", operand(a), op.symbol(), operand(b)),
        _ => operand(e),
    }
}

fn operand(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(i) => i.to_string(),
        ExprKind::Float(x) => format!("{x:?}"),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Name(id) => id.name.clone(),
        ExprKind::Neg(inner) => format!("-{}", operand(inner)),
        ExprKind::Binary(..) => format!("({})", expr(e)),
        ExprKind::Call { callee, args } => {
            let args: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{} = {}", n.name, expr(&a.value)),
                    None => expr(&a.value),
                })
                .collect();
            format!("{}({})", callee.name, args.join(", "))
        }
        ExprKind::Index { base, indices } => {
            let items: Vec<String> = indices
                .iter()
                .map(|i| match i {
                    IndexItem::At(e) => expr(e),
                    IndexItem::Range { start, end, .. } => format!(
                        "{}..{}",
                        start.as_ref().map_or(String::new(), expr),
                        end.as_ref().map_or(String::new(), expr)
                    ),
                })
                .collect();
            format!("{}[{}]", operand(base), items.join(", "))
        }
        ExprKind::Tuple(items) => format!("({})", list(items)),
        ExprKind::List(items) => format!("[{}]", list(items)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_shows_the_grouping_and_the_nesting() {
        let source = "use nn\nconst H = 2 * 3\nfn f(x: [N, H]) -> [N, H] { let y = -x; return (y, y)[0] }\n\
                      model m {\n  input x: [B, 6]\n  param w: [6, 6] = normal(0.1)\n  let h = x\n  \
                      for t in 0..2 { h = tanh(h @ w + 1.5 * h) }\n  loss sum(h[.., 0..3] > 0, axis = 1)[0]\n}\n\
                      train m { batch = 4, inference { mode = exact } }\n";
        let (module, errors) = super::super::parse(0, source);
        assert!(errors.is_empty(), "{errors:?}");
        let text = module_text(&module);
        let want = "use nn\nconst H = 2 * 3\nfn f(x: [N, H]) -> [N, H]\n  let y = -x\n  result (y, y)[0]\n\
                    model m\n  input x: [B, 6]\n  param w: [6, 6] = normal(0.1)\n  let h = x\n  for t in 0..2\n    \
                    h = tanh((h @ w) + (1.5 * h))\n  loss sum(h[.., 0..3] > 0, axis = 1)[0]\n\
                    train m\n  batch = 4\n  inference\n    mode = exact\n";
        assert_eq!(text, want);
    }
}
