//! The IR: an SSA graph of tensor operations with static shapes.
//!
//! One `Program` type serves every stage: the forward program lowered from a `.pcg` model, the
//! gradient program made by `autodiff`, and the relaxation and learning programs made by the
//! PC transform. Nodes are stored in topological order (an operand always precedes its user),
//! so a program is evaluated by one pass over `nodes`. Every node carries its shape; the shape
//! rules live in `shape::infer`, shared by the builder methods here and the verifier.

mod dot;
mod looped;
mod op;
mod parse;
mod print;
pub mod shape;
mod verify;
pub mod vmap;

pub use dot::to_dot;
pub use looped::{LoopProgram, STEPS_RUN};
pub use op::{
    fmt_f64, BinaryOp, ConvParams, LeafKind, Op, OpKind, ReduceOp, Scan, ScanInput, UnaryOp,
};
pub use parse::{from_text, ParseError};
pub use print::to_text;
pub use shape::{Shape, ShapeError};
pub use verify::{verify, VerifyError};

use std::collections::BTreeMap;
use std::fmt;

/// The index of a node in its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// Which part of a forward program a node belongs to. The PC transform gives value and error
/// units to model nodes; loss nodes only turn the model's outputs into output errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Region {
    #[default]
    Model,
    Loss,
}

impl Region {
    /// The region of a loop's result made from a body value of this region, in a loop of
    /// region `outer`: a per-iteration loss term stays a loss term.
    pub fn in_loop(self, outer: Region) -> Region {
        match self {
            Region::Loss => Region::Loss,
            Region::Model => outer,
        }
    }
}

/// One SSA value: an operation, its operands and its static shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub args: Vec<ValueId>,
    pub shape: Shape,
    /// The source name the value was bound to (`let h = ...`), or a leaf's name.
    pub name: Option<String>,
    pub region: Region,
}

/// How a parameter is initialised before training.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Constant(f64),
    Normal {
        mean: f64,
        std: f64,
    },
    Uniform {
        low: f64,
        high: f64,
    },
    /// Glorot/Xavier uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
    Xavier,
    /// He/Kaiming normal: N(0, 2 / fan_in).
    He,
    /// Inverted dropout's mask: 1 / (1 − p) with probability 1 − p, else 0 (so that its mean
    /// is 1). The initialiser of a `Noise` leaf.
    Dropout {
        p: f64,
    },
    /// A (semi-)orthogonal matrix times `gain`: the tensor as a matrix of its first axis by
    /// the rest, its rows or its columns (whichever are fewer) orthonormal.
    Orthogonal {
        gain: f64,
    },
    /// U(-a, a) with a = scale / sqrt(fan_in): how PyTorch's and Equinox's linear and
    /// convolution layers start (scale 1).
    FanInUniform {
        scale: f64,
    },
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Init::Zeros => f.write_str("zeros"),
            Init::Ones => f.write_str("ones"),
            Init::Constant(c) => write!(f, "constant({})", fmt_f64(*c)),
            Init::Normal { mean, std } => {
                write!(
                    f,
                    "normal(mean = {}, std = {})",
                    fmt_f64(*mean),
                    fmt_f64(*std)
                )
            }
            Init::Uniform { low, high } => {
                write!(f, "uniform({}, {})", fmt_f64(*low), fmt_f64(*high))
            }
            Init::Xavier => f.write_str("xavier"),
            Init::He => f.write_str("he"),
            Init::Dropout { p } => write!(f, "dropout({})", fmt_f64(*p)),
            Init::Orthogonal { gain } => write!(f, "orthogonal({})", fmt_f64(*gain)),
            Init::FanInUniform { scale } => write!(f, "fan_in_uniform({})", fmt_f64(*scale)),
        }
    }
}

/// A named result of a program.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub value: ValueId,
}

/// A straight-line tensor program in SSA form.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Program {
    pub name: String,
    pub nodes: Vec<Node>,
    pub outputs: Vec<Output>,
    /// Initialisers of the `Param` leaves, and default values of `Input` and `Target` leaves
    /// (used when no data is given), by leaf name.
    pub inits: BTreeMap<String, Init>,
}

impl Program {
    pub fn new(name: impl Into<String>) -> Self {
        Program {
            name: name.into(),
            ..Program::default()
        }
    }

    pub fn node(&self, id: ValueId) -> &Node {
        &self.nodes[id.index()]
    }

    pub fn shape(&self, id: ValueId) -> &Shape {
        &self.nodes[id.index()].shape
    }

    pub fn ids(&self) -> impl DoubleEndedIterator<Item = ValueId> + ExactSizeIterator {
        (0..self.nodes.len() as u32).map(ValueId)
    }

    /// The leaves of one kind, in program order, with their names.
    pub fn leaves(&self, kind: LeafKind) -> Vec<(ValueId, &str)> {
        self.ids()
            .filter(|&id| self.node(id).op == Op::Leaf(kind))
            .map(|id| (id, self.node(id).name.as_deref().unwrap_or("")))
            .collect()
    }

    /// The leaf of the given kind and name, if present.
    pub fn leaf_named(&self, kind: LeafKind, name: &str) -> Option<ValueId> {
        self.leaves(kind)
            .into_iter()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| id)
    }

    pub fn output(&self, name: &str) -> Option<ValueId> {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.value)
    }

    pub fn set_output(&mut self, name: impl Into<String>, value: ValueId) {
        let name = name.into();
        match self.outputs.iter_mut().find(|o| o.name == name) {
            Some(o) => o.value = value,
            None => self.outputs.push(Output { name, value }),
        }
    }

    /// Makes every use of `from` (as an operand or an output) a use of `to`, a value of the
    /// same shape defined before `from`.
    pub fn replace_uses(&mut self, from: ValueId, to: ValueId) {
        assert!(
            to < from,
            "the replacement is defined before the value it replaces"
        );
        assert_eq!(
            self.shape(from),
            self.shape(to),
            "a replacement of the same shape"
        );
        for node in &mut self.nodes[from.index() + 1..] {
            for a in &mut node.args {
                if *a == from {
                    *a = to;
                }
            }
        }
        for o in &mut self.outputs {
            if o.value == from {
                o.value = to;
            }
        }
    }

    /// For each node, the nodes that use it as an operand (with repetition).
    pub fn users(&self) -> Vec<Vec<ValueId>> {
        let mut users = vec![Vec::new(); self.nodes.len()];
        for id in self.ids() {
            for &a in &self.node(id).args {
                users[a.index()].push(id);
            }
        }
        users
    }

    /// Appends a node after checking its operands' shapes; `target` is the result shape for
    /// ops whose shape is not implied by their operands (reshape, broadcast, leaves, consts).
    pub fn add(
        &mut self,
        op: Op,
        args: Vec<ValueId>,
        target: Option<Shape>,
    ) -> Result<ValueId, ShapeError> {
        let arg_shapes: Vec<&Shape> = args.iter().map(|&a| self.shape(a)).collect();
        let shape = shape::infer(&op, &arg_shapes, target.as_ref())?;
        Ok(self.push(Node {
            op,
            args,
            shape,
            name: None,
            region: Region::Model,
        }))
    }

    /// Appends a node as given. Passes that build nodes whose shapes they have already derived
    /// use this; the verifier catches a wrong shape.
    pub fn push(&mut self, node: Node) -> ValueId {
        let id = ValueId(self.nodes.len() as u32);
        self.nodes.push(node);
        id
    }

    pub fn leaf(&mut self, kind: LeafKind, name: impl Into<String>, shape: Shape) -> ValueId {
        self.push(Node {
            op: Op::Leaf(kind),
            args: vec![],
            shape,
            name: Some(name.into()),
            region: Region::Model,
        })
    }

    pub fn constant(&mut self, value: f64, shape: Shape) -> ValueId {
        self.push(Node {
            op: Op::Const(value),
            args: vec![],
            shape,
            name: None,
            region: Region::Model,
        })
    }

    /// The builder methods below are for passes whose operands are known to fit (autodiff,
    /// the PC transform); a misfit there is a compiler bug, reported by panicking with the op.
    pub fn build(&mut self, op: Op, args: &[ValueId], target: Option<Shape>) -> ValueId {
        match self.add(op.clone(), args.to_vec(), target) {
            Ok(id) => id,
            Err(e) => panic!("internal error: ill-shaped {op} in {}: {e}", self.name),
        }
    }

    pub fn unary(&mut self, op: UnaryOp, x: ValueId) -> ValueId {
        self.build(Op::Unary(op), &[x], None)
    }

    pub fn binary(&mut self, op: BinaryOp, a: ValueId, b: ValueId) -> ValueId {
        self.build(Op::Binary(op), &[a, b], None)
    }

    pub fn add_values(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.binary(BinaryOp::Add, a, b)
    }

    pub fn mul(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.binary(BinaryOp::Mul, a, b)
    }

    pub fn sub(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.binary(BinaryOp::Sub, a, b)
    }

    /// A constant of the shape of `like`.
    pub fn constant_like(&mut self, value: f64, like: ValueId) -> ValueId {
        let shape = self.shape(like).clone();
        self.constant(value, shape)
    }

    /// `x * c` for a constant c.
    pub fn scale(&mut self, x: ValueId, c: f64) -> ValueId {
        let k = self.constant_like(c, x);
        self.mul(x, k)
    }

    /// The exponential moving average `decay * average + (1 − decay) * x` (an optimiser's
    /// moment estimate).
    pub fn moving_average(&mut self, average: ValueId, x: ValueId, decay: f64) -> ValueId {
        let kept = self.scale(average, decay);
        let new = self.scale(x, 1.0 - decay);
        self.add_values(kept, new)
    }

    pub fn reshape(&mut self, x: ValueId, shape: Shape) -> ValueId {
        if *self.shape(x) == shape {
            return x;
        }
        self.build(Op::Reshape, &[x], Some(shape))
    }

    pub fn broadcast(&mut self, x: ValueId, shape: Shape) -> ValueId {
        if *self.shape(x) == shape {
            return x;
        }
        self.build(Op::Broadcast, &[x], Some(shape))
    }

    pub fn reduce_sum(&mut self, x: ValueId, axes: Vec<usize>) -> ValueId {
        if axes.is_empty() {
            return x;
        }
        self.build(Op::Reduce(ReduceOp::Sum, axes), &[x], None)
    }

    pub fn transpose(&mut self, x: ValueId, perm: Vec<usize>) -> ValueId {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return x;
        }
        self.build(Op::Transpose(perm), &[x], None)
    }

    /// Sums `x` down to `shape`, undoing a numpy broadcast from `shape` (the adjoint of
    /// `Broadcast`).
    pub fn sum_to(&mut self, x: ValueId, shape: &Shape) -> ValueId {
        let from = self.shape(x).clone();
        if from == *shape {
            return x;
        }
        let lead = from.rank() - shape.rank();
        let mut axes: Vec<usize> = (0..lead).collect();
        for (i, &d) in shape.dims().iter().enumerate() {
            if d == 1 && from.dims()[lead + i] != 1 {
                axes.push(lead + i);
            }
        }
        let summed = self.reduce_sum(x, axes);
        self.reshape(summed, shape.clone())
    }

    /// Removes computed nodes that no output depends on and renumbers the rest (leaves are
    /// kept: they are the program's interface even when unused). A scan loses the results
    /// nothing reads and the operands its body no longer reads, until nothing more goes (a
    /// result read only by dead work goes with it).
    pub fn prune(&mut self) {
        loop {
            let before = self.nodes.len();
            self.prune_once();
            if self.nodes.len() == before {
                return;
            }
        }
    }

    fn prune_once(&mut self) {
        self.trim_scans();
        let mut live = vec![false; self.nodes.len()];
        for o in &self.outputs {
            live[o.value.index()] = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if live[i] || matches!(self.nodes[i].op, Op::Leaf(_)) {
                live[i] = true;
                for a in &self.nodes[i].args {
                    live[a.index()] = true;
                }
            }
        }
        let mut renumber = vec![ValueId(u32::MAX); self.nodes.len()];
        let mut kept = Vec::with_capacity(self.nodes.len());
        for (i, node) in std::mem::take(&mut self.nodes).into_iter().enumerate() {
            if live[i] {
                renumber[i] = ValueId(kept.len() as u32);
                let mut node = node;
                for a in &mut node.args {
                    *a = renumber[a.index()];
                }
                kept.push(node);
            }
        }
        self.nodes = kept;
        for o in &mut self.outputs {
            o.value = renumber[o.value.index()];
        }
    }

    /// Drops from every scan the per-iteration outputs no `result` node reads and the carried
    /// values neither its body nor any reader needs, prunes its body, then drops the operands
    /// its body no longer reads.
    fn trim_scans(&mut self) {
        if !self.nodes.iter().any(|n| matches!(n.op, Op::Scan(_))) {
            return;
        }
        let users = self.users();
        for (i, readers) in users.iter().enumerate() {
            let Op::Scan(scan) = &self.nodes[i].op else {
                continue;
            };
            let mut read = vec![false; scan.results()];
            for &u in readers {
                if let Op::Result(k) = self.nodes[u.index()].op {
                    read[k] = true;
                }
            }
            let Op::Scan(mut scan) = std::mem::replace(&mut self.nodes[i].op, Op::Const(0.0))
            else {
                unreachable!("matched above")
            };
            let new_index = scan.trim(&read);
            for &u in readers {
                if let Op::Result(k) = &mut self.nodes[u.index()].op {
                    if let Some(n) = new_index[*k] {
                        *k = n;
                    }
                }
            }
            let kept = scan.drop_unread_operands();
            self.nodes[i].op = Op::Scan(scan);
            let args = std::mem::take(&mut self.nodes[i].args);
            self.nodes[i].args = args
                .into_iter()
                .zip(kept)
                .filter(|(_, keep)| *keep)
                .map(|(a, _)| a)
                .collect();
        }
    }

    /// Appends `other` to this program: its `State` leaves read the values given by name,
    /// its other leaves become (or reuse) this program's leaves of the same kind and name.
    /// Returns `other`'s outputs as values of this program.
    pub fn append(
        &mut self,
        other: &Program,
        state: &std::collections::HashMap<String, ValueId>,
    ) -> Vec<Output> {
        let mut map = Vec::with_capacity(other.nodes.len());
        for node in &other.nodes {
            let id = match node.op {
                Op::Leaf(kind) => {
                    let name = node.name.clone().unwrap_or_default();
                    match (kind, state.get(&name)) {
                        (LeafKind::State, Some(&v)) => v,
                        _ => self
                            .leaf_named(kind, &name)
                            .unwrap_or_else(|| self.leaf(kind, name, node.shape.clone())),
                    }
                }
                _ => {
                    let args = node.args.iter().map(|a: &ValueId| map[a.index()]).collect();
                    self.push(Node {
                        args,
                        ..node.clone()
                    })
                }
            };
            map.push(id);
        }
        for (name, init) in &other.inits {
            self.inits
                .entry(name.clone())
                .or_insert_with(|| init.clone());
        }
        Program::outputs_mapped(other, &map)
    }

    /// Puts the nodes back in an order where every node follows its operands, after a pass
    /// has made nodes read ones appended after them: each node as early as its operands
    /// allow, otherwise in the order it had.
    pub fn sort_topologically(&mut self) {
        let n = self.nodes.len();
        let mut order = Vec::with_capacity(n);
        let mut placed = vec![false; n];
        let mut stack: Vec<(usize, usize)> = Vec::new();
        for root in 0..n {
            if placed[root] {
                continue;
            }
            stack.push((root, 0));
            while let Some((id, next)) = stack.pop() {
                let args = &self.nodes[id].args;
                if let Some(a) = args[next..].iter().position(|a| !placed[a.index()]) {
                    stack.push((id, next + a + 1));
                    stack.push((args[next + a].index(), 0));
                } else if !placed[id] {
                    placed[id] = true;
                    order.push(id);
                }
            }
        }
        let mut renumber = vec![ValueId(0); n];
        for (new, &old) in order.iter().enumerate() {
            renumber[old] = ValueId(new as u32);
        }
        let mut nodes: Vec<Option<Node>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        self.nodes = order
            .iter()
            .map(|&old| {
                let mut node = nodes[old].take().expect("each node once");
                for a in &mut node.args {
                    *a = renumber[a.index()];
                }
                node
            })
            .collect();
        for o in &mut self.outputs {
            o.value = renumber[o.value.index()];
        }
    }

    /// `source`'s outputs, each reading `map[its value]`: the outputs of a program copied
    /// node by node.
    pub fn outputs_mapped(source: &Program, map: &[ValueId]) -> Vec<Output> {
        source
            .outputs
            .iter()
            .map(|o| Output {
                name: o.name.clone(),
                value: map[o.value.index()],
            })
            .collect()
    }

    /// Sets the source name of a node (used for PC node granularity and for printing).
    pub fn set_name(&mut self, id: ValueId, name: impl Into<String>) {
        self.nodes[id.index()].name = Some(name.into());
    }
}

/// `name`, or where `taken` says it is in use, the first of `name.1`, `name.2`, ... that is
/// not.
pub fn fresh_name(name: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(name) {
        return name.to_string();
    }
    (1..)
        .map(|k| format!("{name}.{k}"))
        .find(|n| !taken(n))
        .expect("some suffix is free")
}

/// Floating-point operations of one run of a program: 2mnk per matrix product, 2 per
/// multiply-add of a convolution, one per element of every other computed node (movement ops
/// and leaves count nothing).
pub fn flops(program: &Program) -> u64 {
    program
        .nodes
        .iter()
        .map(|node| node_flops(program, node))
        .sum()
}

/// The floating-point operations of one node of `program`, as [`flops`] counts them.
pub fn node_flops(program: &Program, node: &Node) -> u64 {
    let out = node.shape.numel() as u64;
    match &node.op {
        Op::MatMul => {
            let a = program.shape(node.args[0]).dims();
            2 * out * a[a.len() - 1] as u64
        }
        Op::Conv2d { .. } => {
            let w = program.shape(node.args[1]).dims();
            2 * out * (w[1] * w[2] * w[3]) as u64
        }
        // Both adjoints cost what the convolution costs: 2 * |cotangent| * C * KH * KW.
        Op::Conv2dInputGrad { .. } | Op::Conv2dWeightGrad { .. } => {
            let (cotangent, weight) = match node.op {
                Op::Conv2dInputGrad { .. } => (node.args[0], program.shape(node.args[1])),
                _ => (node.args[1], &node.shape),
            };
            let per_output = (weight.numel() / weight.dims()[0].max(1)) as u64;
            2 * program.shape(cotangent).numel() as u64 * per_output
        }
        Op::Unary(_) | Op::Binary(_) | Op::Where => out,
        Op::Reduce(..) => program.shape(node.args[0]).numel() as u64,
        _ => 0,
    }
}
