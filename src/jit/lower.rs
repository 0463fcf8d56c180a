//! Lowering: an IR program to a loop-level form over planned buffers.
//!
//! Every node's value is held as an [`Expr`]: an elementwise expression whose leaves read
//! buffers through affine maps. Elementwise ops build bigger expressions (fusion), movement ops
//! rewrite the maps of the leaves (a transpose or broadcast costs nothing), and a value is
//! *materialised* — written to a buffer by one loop — only where that pays or is needed: when
//! several users would recompute it (unless it is a cheap function of one operand, which each
//! user reads as cheaply), when a contraction or a reshape needs it in memory, and for the
//! program's outputs. Reductions, matrix products and convolutions always write a
//! buffer. The result is a list of [`Kernel`]s in program order; the buffer plan assigns them
//! memory and the code generator turns each into one loop nest or one runtime call.

pub use crate::ir::shape::ConvGeometry;
use crate::ir::{BinaryOp, LeafKind, Op, Program, ReduceOp, UnaryOp, ValueId};
use std::collections::HashMap;

/// The index of a buffer in the buffer table.
pub type BufferId = usize;

/// An expression larger than this is written to a buffer rather than grown further.
const MAX_FUSED_OPS: usize = 48;

/// A value read by several users is evaluated again by each (not written to a buffer) when it
/// is at most this many cheap operations of one operand (see [`Expr::cheap_to_repeat`]).
const MAX_REPEATED_OPS: usize = 2;

/// An affine map from a loop's multi-index `i` to `offset + Σ_k i_k · strides[k]`: the position
/// of an element inside its buffer, or (for [`Expr::Index`]) the value of an iota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Affine {
    pub offset: usize,
    pub strides: Vec<usize>,
}

/// Row-major strides of a shape.
pub fn contiguous_strides(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; dims.len()];
    let mut step = 1;
    for (s, &d) in strides.iter_mut().zip(dims).rev() {
        *s = step;
        step *= d;
    }
    strides
}

impl Affine {
    pub fn contiguous(dims: &[usize]) -> Affine {
        Affine {
            offset: 0,
            strides: contiguous_strides(dims),
        }
    }

    /// Whether the map visits a buffer of `dims`'s size in row-major order from its start.
    pub fn is_contiguous(&self, dims: &[usize]) -> bool {
        self.offset == 0
            && self
                .strides
                .iter()
                .zip(contiguous_strides(dims))
                .zip(dims)
                .all(|((&s, c), &d)| d == 1 || s == c)
    }

    /// One past the largest position the map reaches over `dims` (0 when `dims` is empty of
    /// elements).
    pub fn extent(&self, dims: &[usize]) -> usize {
        if dims.contains(&0) {
            return 0;
        }
        self.offset
            + 1
            + dims
                .iter()
                .zip(&self.strides)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<usize>()
    }

    fn transpose(&self, perm: &[usize]) -> Affine {
        Affine {
            offset: self.offset,
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
        }
    }

    /// Numpy broadcasting from `from` to `to`: new leading axes and stretched axes of size 1
    /// get stride 0.
    fn broadcast(&self, from: &[usize], to: &[usize]) -> Affine {
        let lead = to.len() - from.len();
        let strides = (0..to.len())
            .map(|i| {
                if i < lead || from[i - lead] == 1 {
                    0
                } else {
                    self.strides[i - lead]
                }
            })
            .collect();
        Affine {
            offset: self.offset,
            strides,
        }
    }

    fn slice(&self, axis: usize, start: usize) -> Affine {
        Affine {
            offset: self.offset + start * self.strides[axis],
            strides: self.strides.clone(),
        }
    }

    /// The same elements seen with shape `to` instead of `from`, if that is affine: each group
    /// of axes that is merged or split must be evenly strided.
    fn reshape(&self, from: &[usize], to: &[usize]) -> Option<Affine> {
        let mut strides = vec![0; to.len()];
        if from.iter().product::<usize>() == 0 {
            return Some(Affine {
                offset: self.offset,
                strides,
            });
        }
        let old: Vec<(usize, usize)> = from
            .iter()
            .zip(&self.strides)
            .filter(|(&d, _)| d != 1)
            .map(|(&d, &s)| (d, s))
            .collect();
        let new: Vec<usize> = (0..to.len()).filter(|&i| to[i] != 1).collect();
        let (mut oi, mut ni) = (0, 0);
        while ni < new.len() && oi < old.len() {
            let (mut np, mut op) = (to[new[ni]], old[oi].0);
            let (mut nj, mut oj) = (ni + 1, oi + 1);
            while np != op {
                if np < op {
                    np *= to[*new.get(nj)?];
                    nj += 1;
                } else {
                    op *= old.get(oj)?.0;
                    oj += 1;
                }
            }
            if (oi..oj - 1).any(|k| old[k].1 != old[k + 1].0 * old[k + 1].1) {
                return None;
            }
            let mut step = old[oj - 1].1;
            for k in (ni..nj).rev() {
                strides[new[k]] = step;
                step *= to[new[k]];
            }
            ni = nj;
            oi = oj;
        }
        (ni == new.len() && oi == old.len()).then_some(Affine {
            offset: self.offset,
            strides,
        })
    }
}

/// An elementwise expression over a loop's index space.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// The element of `buffer` at the mapped position.
    Load {
        buffer: BufferId,
        map: Affine,
    },
    Const(f64),
    /// The mapped position itself, as a float (an iota).
    Index(Affine),
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `where(cond, a, b)`.
    Where(Box<[Expr; 3]>),
}

impl Expr {
    /// Whether evaluating the expression does no arithmetic (a load, a constant, an index).
    fn is_view(&self) -> bool {
        matches!(self, Expr::Load { .. } | Expr::Const(_) | Expr::Index(_))
    }

    /// The number of operations in the expression.
    fn ops(&self) -> usize {
        match self {
            Expr::Load { .. } | Expr::Const(_) | Expr::Index(_) => 0,
            Expr::Unary(_, a) => 1 + a.ops(),
            Expr::Binary(_, a, b) => 1 + a.ops() + b.ops(),
            Expr::Where(args) => 1 + args.iter().map(Expr::ops).sum::<usize>(),
        }
    }

    /// Whether each user may evaluate the expression again instead of reading it from a
    /// buffer, over `dims`: at most [`MAX_REPEATED_OPS`] cheap operations (no function that
    /// costs a call or a polynomial) of at most one operand read in full (the others
    /// broadcast), so that repeating it reads no more memory than writing it once and reading
    /// it back would, and computes the same bits.
    fn cheap_to_repeat(&self, dims: &[usize]) -> bool {
        fn cheap_ops(e: &Expr) -> Option<usize> {
            Some(match e {
                Expr::Load { .. } | Expr::Const(_) | Expr::Index(_) => 0,
                Expr::Unary(op, a) => {
                    let cheap = matches!(
                        op,
                        UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::StopGradient
                    );
                    if !cheap {
                        return None;
                    }
                    1 + cheap_ops(a)?
                }
                Expr::Binary(op, a, b) => {
                    if *op == BinaryOp::Div {
                        return None;
                    }
                    1 + cheap_ops(a)? + cheap_ops(b)?
                }
                Expr::Where(args) => 1 + args.iter().map(cheap_ops).sum::<Option<usize>>()?,
            })
        }
        if cheap_ops(self).is_none_or(|ops| ops > MAX_REPEATED_OPS) {
            return false;
        }
        // The distinct operands read in full (no zero stride along an axis of several).
        let mut full: Vec<(BufferId, Affine)> = Vec::new();
        self.for_each_load(&mut |buffer, map| {
            let broadcast = dims
                .iter()
                .zip(&map.strides)
                .any(|(&d, &s)| d > 1 && s == 0);
            if !broadcast && !full.iter().any(|(b, m)| *b == buffer && m == map) {
                full.push((buffer, map.clone()));
            }
        });
        full.len() <= 1
    }

    /// The expression with every affine map replaced by `f` of it, if `f` succeeds on all.
    fn remap(&self, f: &impl Fn(&Affine) -> Option<Affine>) -> Option<Expr> {
        Some(match self {
            Expr::Load { buffer, map } => Expr::Load {
                buffer: *buffer,
                map: f(map)?,
            },
            Expr::Const(c) => Expr::Const(*c),
            Expr::Index(map) => Expr::Index(f(map)?),
            Expr::Unary(op, a) => Expr::Unary(*op, Box::new(a.remap(f)?)),
            Expr::Binary(op, a, b) => {
                Expr::Binary(*op, Box::new(a.remap(f)?), Box::new(b.remap(f)?))
            }
            Expr::Where(args) => {
                let [c, a, b] = &**args;
                Expr::Where(Box::new([c.remap(f)?, a.remap(f)?, b.remap(f)?]))
            }
        })
    }

    /// Calls `visit` on every buffer read, with its map.
    pub fn for_each_load(&self, visit: &mut impl FnMut(BufferId, &Affine)) {
        match self {
            Expr::Load { buffer, map } => visit(*buffer, map),
            Expr::Const(_) | Expr::Index(_) => {}
            Expr::Unary(_, a) => a.for_each_load(visit),
            Expr::Binary(_, a, b) => {
                a.for_each_load(visit);
                b.for_each_load(visit);
            }
            Expr::Where(args) => args.iter().for_each(|a| a.for_each_load(visit)),
        }
    }
}

/// Where a loop writes: a buffer and the map from the loop's index to positions in it.
#[derive(Clone, Debug, PartialEq)]
pub struct Place {
    pub buffer: BufferId,
    pub map: Affine,
}

/// A matrix operand of a batched product: element (b, i, j) lies at
/// `offset + b·batch + i·rows + j·cols` in `buffer`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatOperand {
    pub buffer: BufferId,
    pub offset: usize,
    pub batch: usize,
    pub rows: usize,
    pub cols: usize,
}

/// `c[b] = a[b] · b[b]` for every batch index; `c` is contiguous `[batch, m, n]`.
#[derive(Clone, Debug, PartialEq)]
pub struct MatMulKernel {
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub a: MatOperand,
    pub b: MatOperand,
    pub c: BufferId,
}

/// Which of the three convolution products a [`ConvKernel`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKind {
    /// args (input, weight) → output
    Forward,
    /// args (cotangent, weight) → input gradient
    InputGrad,
    /// args (input, cotangent) → weight gradient
    WeightGrad,
}

impl ConvGeometry {
    /// The length of one sample's im2col matrix `[C·KH·KW, OH·OW]`.
    pub fn columns_len(&self) -> usize {
        self.c * self.kh * self.kw * self.oh * self.ow
    }

    /// The length of the weight `[O, C / groups, KH, KW]`.
    pub fn weight_len(&self) -> usize {
        self.o * self.group_patch()
    }

    /// The lengths of a `kind` product's two operands and its result.
    pub fn operand_lens(&self, kind: ConvKind) -> [usize; 3] {
        let input = self.n * self.c * self.h * self.w;
        let weight = self.weight_len();
        let output = self.n * self.o * self.oh * self.ow;
        match kind {
            ConvKind::Forward => [input, weight, output],
            ConvKind::InputGrad => [output, weight, input],
            ConvKind::WeightGrad => [input, output, weight],
        }
    }
}

/// A convolution product through a runtime kernel; all buffers contiguous. The samples are
/// split into `ways` groups that may run on different threads, each with its own part of
/// `scratch`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvKernel {
    pub kind: ConvKind,
    pub shape: ConvGeometry,
    pub args: [BufferId; 2],
    pub out: BufferId,
    pub ways: usize,
    /// `ways` parts of [`scratch_part`](Self::scratch_part) elements each.
    pub scratch: BufferId,
}

impl ConvKernel {
    /// One group's scratch: an im2col matrix and, for a weight gradient summed over groups,
    /// the group's partial sum.
    pub fn scratch_part(kind: ConvKind, shape: &ConvGeometry, ways: usize) -> usize {
        let partial = if kind == ConvKind::WeightGrad && ways > 1 {
            shape.weight_len()
        } else {
            0
        };
        shape.columns_len() + partial
    }
}

/// One step of a lowered program.
#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    /// `out[i] = expr[i]` for every index `i` of `dims`.
    Map {
        dims: Vec<usize>,
        out: Place,
        expr: Expr,
    },
    /// `out[i] = op(out[i], expr[i])` for every index `i` of `dims`, in order; the out map has
    /// stride 0 along the reduced axes, and `out` was filled with the identity beforehand.
    Reduce {
        op: ReduceOp,
        dims: Vec<usize>,
        out: Place,
        expr: Expr,
    },
    MatMul(MatMulKernel),
    Conv(ConvKernel),
    /// A loop: the `body` kernels that follow run `trips` times, with the iteration index of
    /// scan `id` moving the views of that scan (see [`View`]).
    Scan(ScanKernel),
}

/// The head of a scan's loop in the kernel list.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanKernel {
    /// The scan's number in its function: the views it moves name it.
    pub id: usize,
    pub trips: usize,
    /// Iterations from `trips − 1` down to 0.
    pub reverse: bool,
    /// How many kernels after this one form the loop's body (nested loops included).
    pub body: usize,
}

/// A buffer that is one iteration's slice of another: at iteration t of scan `scan` it is
/// the `len` elements of `of` that start at `t · stride` (a stacked input's or output's row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub of: BufferId,
    pub scan: usize,
    pub stride: usize,
}

/// What one run of a kernel costs: floating-point operations and bytes moved to and from
/// its buffers (each buffer's touched elements once: what a kernel streams when its working
/// set does not fit in cache).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub flops: u64,
    pub bytes: u64,
    /// Whether the kernel is a matrix product or a convolution.
    pub product: bool,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, other: Cost) {
        self.flops += other.flops;
        self.bytes += other.bytes;
    }
}

impl Kernel {
    /// One run's cost.
    pub fn cost(&self) -> Cost {
        // Elements each buffer has touched: at most the accesses' extent, and at most the
        // elements the kernel visits (a part of a buffer is not the whole of it).
        let visited = match self {
            Kernel::Map { dims, .. } | Kernel::Reduce { dims, .. } => dims.iter().product(),
            Kernel::MatMul(_) | Kernel::Conv(_) => usize::MAX,
            Kernel::Scan(_) => return Cost::default(),
        };
        let mut touched: HashMap<BufferId, usize> = HashMap::new();
        self.for_each_access(|b, extent, _| {
            let e = touched.entry(b).or_default();
            *e = (*e).max(extent.min(visited));
        });
        let bytes = touched.values().map(|&e| 4 * e as u64).sum();
        let (flops, product) = match self {
            Kernel::Map { dims, expr, .. } => (dims.iter().product::<usize>() * expr.ops(), false),
            Kernel::Reduce { dims, expr, .. } => {
                (dims.iter().product::<usize>() * (expr.ops() + 1), false)
            }
            Kernel::MatMul(mm) => (2 * mm.batch * mm.m * mm.n * mm.k, true),
            Kernel::Conv(conv) => {
                let s = conv.shape;
                (2 * s.n * s.o * s.oh * s.ow * s.group_patch(), true)
            }
            Kernel::Scan(_) => (0, false),
        };
        Cost {
            flops: flops as u64,
            bytes,
            product,
        }
    }

    /// The kernel in words: what it writes, its shape, and its work.
    pub fn describe(&self, buffers: &[BufferSpec]) -> String {
        let label = |b: BufferId| buffers[b].label.as_str();
        match self {
            Kernel::Map { dims, out, expr } => format!(
                "map {dims:?} -> {} ({} ops per element)",
                label(out.buffer),
                expr.ops()
            ),
            Kernel::Reduce { op, dims, out, .. } => {
                format!("reduce_{op:?} {dims:?} -> {}", label(out.buffer)).to_lowercase()
            }
            Kernel::MatMul(mm) => format!(
                "matmul {}x[{}, {}]x[{}, {}] -> {}",
                mm.batch,
                mm.m,
                mm.k,
                mm.k,
                mm.n,
                label(mm.c)
            ),
            Kernel::Conv(conv) => format!(
                "conv {:?} {}x{}x{}x{} with {}x{}x{}x{} -> {}",
                conv.kind,
                conv.shape.n,
                conv.shape.c,
                conv.shape.h,
                conv.shape.w,
                conv.shape.o,
                conv.shape.c,
                conv.shape.kh,
                conv.shape.kw,
                label(conv.out)
            ),
            Kernel::Scan(scan) => format!(
                "scan {} of {} iterations over the next {} kernels",
                scan.id, scan.trips, scan.body
            ),
        }
    }

    /// Calls `visit(buffer, extent, written)` for each buffer access: `extent` is one past the
    /// largest element position touched.
    pub fn for_each_access(&self, mut visit: impl FnMut(BufferId, usize, bool)) {
        match self {
            Kernel::Map { dims, out, expr }
            | Kernel::Reduce {
                dims, out, expr, ..
            } => {
                expr.for_each_load(&mut |b, map| visit(b, map.extent(dims), false));
                if matches!(self, Kernel::Reduce { .. }) {
                    visit(out.buffer, out.map.extent(dims), false);
                }
                visit(out.buffer, out.map.extent(dims), true);
            }
            Kernel::MatMul(mm) => {
                let operand = |x: &MatOperand, rows: usize, cols: usize| {
                    Affine {
                        offset: x.offset,
                        strides: vec![x.batch, x.rows, x.cols],
                    }
                    .extent(&[mm.batch, rows, cols])
                };
                visit(mm.a.buffer, operand(&mm.a, mm.m, mm.k), false);
                visit(mm.b.buffer, operand(&mm.b, mm.k, mm.n), false);
                visit(mm.c, mm.batch * mm.m * mm.n, true);
            }
            Kernel::Conv(conv) => {
                let s = conv.shape;
                let [a, b, out] = s.operand_lens(conv.kind);
                visit(conv.args[0], a, false);
                visit(conv.args[1], b, false);
                let part = ConvKernel::scratch_part(conv.kind, &s, conv.ways);
                visit(conv.scratch, part * conv.ways, true);
                visit(conv.out, out, true);
            }
            Kernel::Scan(_) => {}
        }
    }
}

/// How the parts of a split loop body (see `opt::split`), each running the same kernels on
/// its own block of samples, see a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Share {
    /// One buffer for everyone: read whole by the parts, or not touched by them.
    #[default]
    Whole,
    /// Part p reads and writes block p of `parts` equal blocks (per-sample state and data).
    Blocks,
    /// A temporary of the parts: each has a copy of its own.
    Private,
}

/// A buffer of the lowered form: its length in f32 elements and what it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferSpec {
    pub label: String,
    /// Length in elements: a `Blocks` buffer's whole length (its blocks are `len / parts`), a
    /// `Private` buffer's for one copy.
    pub len: usize,
    /// Live for the whole function (leaves, state, outputs), not only between its first and
    /// last use.
    pub pinned: bool,
    pub share: Share,
    /// A view of another buffer moved by a scan's iterations, not memory of its own.
    pub view: Option<View>,
}

/// The buffers and kernels of one compiled function, built by lowering one or more programs.
#[derive(Clone, Debug, Default)]
pub struct Lowered {
    pub buffers: Vec<BufferSpec>,
    pub kernels: Vec<Kernel>,
    /// Groups a convolution's samples are split into (threads that may share it); 0 or 1:
    /// one group.
    pub conv_ways: usize,
    /// Parts a split loop body or scan runs as (1: none split), and the kernels each split
    /// region runs (a loop's body, or a scan's head and body).
    pub parts: usize,
    pub part_kernels: Vec<std::ops::Range<usize>>,
    /// The head kernel of each scan split into parts (each region of `part_kernels` that is a
    /// scan's).
    pub split_scans: Vec<usize>,
    /// Parts a scan whose batch rows are independent may run as (0 or 1: scans stay whole),
    /// and the least work of a scan split so (`JitOptions::split_scan_flops`).
    pub scan_parts: usize,
    pub split_scan_flops: u64,
    /// Scans whose bodies are being lowered (a scan inside another runs whole: its part
    /// would not know the outer iteration).
    pub scan_depth: usize,
    /// New buffers are the parts' private temporaries (set while lowering the parts' body).
    pub private: bool,
    /// Map kernels that also check what they write: kernel → a scalar flag buffer that the
    /// kernel sets to NaN when a value it writes is not finite (and leaves alone otherwise).
    pub checks: HashMap<usize, BufferId>,
    /// The buffers each [`Segment::Exchange`](super::codegen::Segment::Exchange) hands to its
    /// exchange, by the segment's index.
    pub exchanges: Vec<(Vec<BufferId>, super::runtime::Exchange)>,
    /// Scans lowered so far (their kernels' ids are 0..scans).
    pub scans: usize,
}

impl Lowered {
    pub fn buffer(&mut self, label: impl Into<String>, len: usize, pinned: bool) -> BufferId {
        let share = if self.private {
            Share::Private
        } else {
            Share::Whole
        };
        self.buffers.push(BufferSpec {
            label: label.into(),
            len,
            pinned,
            share,
            view: None,
        });
        self.buffers.len() - 1
    }

    /// A view of `view.of`: `len` elements at `t · view.stride` in iteration t of the scan.
    pub fn view(&mut self, label: impl Into<String>, len: usize, view: View) -> BufferId {
        let id = self.buffer(label, len, false);
        self.buffers[id].view = Some(view);
        id
    }

    /// Whether buffer `b` is a view moved by a scan.
    pub fn is_view(&self, b: BufferId) -> bool {
        self.buffers[b].view.is_some()
    }

    /// Whether kernel `k` runs in the parts of a split loop body or scan.
    pub fn in_parts(&self, k: usize) -> bool {
        self.parts > 1 && self.part_kernels.iter().any(|r| r.contains(&k))
    }

    /// Appends the kernels of `program`'s outputs. `leaves` holds the buffer of every leaf the
    /// outputs need; `targets[i]`, when given, is the buffer output i must end up in. Returns
    /// the buffer holding each output.
    pub fn lower(
        &mut self,
        program: &Program,
        leaves: &HashMap<ValueId, BufferId>,
        targets: &[Option<BufferId>],
    ) -> Vec<BufferId> {
        let mut lowering = Lowering::new(self, program, targets);
        for id in program.ids() {
            if lowering.needed[id.index()] {
                lowering.lower_node(id, leaves);
            }
        }
        let mut result = Vec::new();
        for (i, output) in program.outputs.iter().enumerate() {
            if let Op::Transpose(_) = program.node(output.value).op {
                let join = program.node(output.value).args[0];
                if let Some(kernels) = lowering.deferred.remove(&join) {
                    lowering.out.kernels.extend(kernels);
                }
            }
            let buffer = lowering.buffer_of(output.value);
            match targets.get(i).copied().flatten() {
                Some(target) if target != buffer => {
                    let dims = program.shape(output.value).dims().to_vec();
                    lowering.copy(buffer, target, &dims);
                    result.push(target);
                }
                _ => result.push(buffer),
            }
        }
        result
    }
}

/// The nodes of a program that its outputs depend on.
pub fn needed_nodes(program: &Program) -> Vec<bool> {
    let mut needed = vec![false; program.nodes.len()];
    for o in &program.outputs {
        needed[o.value.index()] = true;
    }
    for id in program.ids().rev() {
        if needed[id.index()] {
            for a in &program.node(id).args {
                needed[a.index()] = true;
            }
        }
    }
    needed
}

/// The state of lowering one program.
struct Lowering<'a> {
    out: &'a mut Lowered,
    program: &'a Program,
    needed: Vec<bool>,
    /// How many needed nodes read each node.
    users: Vec<usize>,
    /// Nodes never evaluated again by each user (see [`Expr::cheap_to_repeat`]): outputs,
    /// written where they stand, and operands of a transcendental function, which runs
    /// sixteen lanes at a time only on a row read from memory (see `wide`).
    fixed: Vec<bool>,
    /// Each lowered node's value.
    values: Vec<Option<Expr>>,
    /// Buffers that given nodes must be materialised into (outputs with fixed homes).
    homes: HashMap<ValueId, BufferId>,
    /// Where a join (concat, pad) that an output only transposes is written: that output's
    /// home, laid out so that the transpose reads it in row-major order (see `placed_joins`).
    placed: HashMap<ValueId, Place>,
    /// The kernels writing each placed join, held back until its output's turn: written where
    /// the join stands, they would overwrite a loop's old state before the other outputs'
    /// kernels have read it.
    deferred: HashMap<ValueId, Vec<Kernel>>,
    /// The buffers of each lowered scan's results, by the scan node.
    scan_results: HashMap<ValueId, Vec<BufferId>>,
}

impl<'a> Lowering<'a> {
    fn new(out: &'a mut Lowered, program: &'a Program, targets: &[Option<BufferId>]) -> Self {
        let needed = needed_nodes(program);
        let mut users = vec![0; program.nodes.len()];
        for id in program.ids().filter(|id| needed[id.index()]) {
            for a in &program.node(id).args {
                users[a.index()] += 1;
            }
        }
        // An output is a user too: a value both written out and read by a node is computed
        // once, not once more inside its reader's loop.
        let mut fixed = vec![false; program.nodes.len()];
        for o in &program.outputs {
            users[o.value.index()] += 1;
            fixed[o.value.index()] = true;
        }
        for id in program.ids().filter(|id| needed[id.index()]) {
            let node = program.node(id);
            if let Op::Unary(op) = node.op {
                if super::wide::OPS.contains(&op) {
                    // Through the movement ops in between, which read their operand in place.
                    let mut operand = node.args[0];
                    fixed[operand.index()] = true;
                    while let Op::Reshape | Op::Transpose(_) | Op::Broadcast | Op::Slice { .. } =
                        program.node(operand).op
                    {
                        operand = program.node(operand).args[0];
                        fixed[operand.index()] = true;
                    }
                }
            }
        }
        let mut homes = HashMap::new();
        for (output, target) in program.outputs.iter().zip(targets) {
            let is_leaf = matches!(program.node(output.value).op, Op::Leaf(_));
            if let (Some(target), false) = (target, is_leaf) {
                homes.entry(output.value).or_insert(*target);
            }
        }
        let placed = placed_joins(program, &users, &homes);
        Lowering {
            out,
            program,
            needed,
            users,
            fixed,
            values: vec![None; program.nodes.len()],
            homes,
            placed,
            deferred: HashMap::new(),
            scan_results: HashMap::new(),
        }
    }

    /// Holds back the kernels from `first` on, which write join `id`, if it is placed in an
    /// output's home (see `deferred`).
    fn defer_placed(&mut self, id: ValueId, first: usize) {
        if self.placed.contains_key(&id) {
            let kernels = self.out.kernels.split_off(first);
            self.deferred.insert(id, kernels);
        }
    }

    /// Where join node `id` is written: its place in an output's home (see `placed_joins`),
    /// else a buffer of its own in row-major order.
    fn join_place(&mut self, id: ValueId) -> Place {
        if let Some(place) = self.placed.get(&id) {
            return place.clone();
        }
        Place {
            buffer: self.result_buffer(id),
            map: Affine::contiguous(&self.dims(id)),
        }
    }

    fn dims(&self, id: ValueId) -> Vec<usize> {
        self.program.shape(id).dims().to_vec()
    }

    fn value(&self, id: ValueId) -> Expr {
        self.values[id.index()]
            .clone()
            .expect("operands are lowered before their users")
    }

    /// A kernel setting every element of `buffer`, laid out as `dims`, to `value`.
    fn fill(&mut self, buffer: BufferId, dims: &[usize], value: f64) {
        self.out.kernels.push(Kernel::Map {
            dims: dims.to_vec(),
            out: Place {
                buffer,
                map: Affine::contiguous(dims),
            },
            expr: Expr::Const(value),
        });
    }

    /// A buffer for node `id`'s result: its home if it has one, else a fresh one.
    fn result_buffer(&mut self, id: ValueId) -> BufferId {
        if let Some(&home) = self.homes.get(&id) {
            return home;
        }
        let node = self.program.node(id);
        let label = match &node.name {
            Some(name) => format!("{id} {name}"),
            None => format!("{id} {}", node.op),
        };
        self.out.buffer(label, node.shape.numel(), false)
    }

    /// The buffer holding node `id`'s value, writing it to one first if it is not in memory
    /// in row-major order.
    fn buffer_of(&mut self, id: ValueId) -> BufferId {
        let dims = self.dims(id);
        let expr = self.value(id);
        if let Expr::Load { buffer, map } = &expr {
            // In a split body, a buffer read in blocks is one block long.
            let spec = &self.out.buffers[*buffer];
            let len = match spec.share {
                Share::Blocks if self.out.private => spec.len / self.out.parts.max(1),
                _ => spec.len,
            };
            let whole = len == dims.iter().product::<usize>();
            let home_ok = self.homes.get(&id).is_none_or(|h| h == buffer);
            if map.is_contiguous(&dims) && whole && home_ok {
                return *buffer;
            }
        }
        let buffer = self.result_buffer(id);
        self.out.kernels.push(Kernel::Map {
            out: Place {
                buffer,
                map: Affine::contiguous(&dims),
            },
            dims: dims.clone(),
            expr,
        });
        self.values[id.index()] = Some(contiguous_load(buffer, &dims));
        buffer
    }

    fn copy(&mut self, from: BufferId, to: BufferId, dims: &[usize]) {
        self.out.kernels.push(Kernel::Map {
            dims: dims.to_vec(),
            out: Place {
                buffer: to,
                map: Affine::contiguous(dims),
            },
            expr: contiguous_load(from, dims),
        });
    }

    fn lower_node(&mut self, id: ValueId, leaves: &HashMap<ValueId, BufferId>) {
        let node = self.program.node(id);
        let dims = self.dims(id);
        let args = node.args.clone();
        let expr = match &node.op {
            Op::Scan(scan) => {
                self.lower_scan(id, scan, &args);
                // A scan's results are read through `result` nodes; it has no value itself.
                Expr::Const(0.0)
            }
            Op::Result(i) => contiguous_load(self.scan_results[&args[0]][*i], &dims),
            Op::Leaf(_) => contiguous_load(leaves[&id], &dims),
            Op::Const(c) => Expr::Const(*c),
            Op::Iota { axis } => {
                let mut strides = vec![0; dims.len()];
                strides[*axis] = 1;
                Expr::Index(Affine { offset: 0, strides })
            }
            Op::Unary(op) => Expr::Unary(*op, Box::new(self.value(args[0]))),
            Op::Binary(op) => Expr::Binary(
                *op,
                Box::new(self.value(args[0])),
                Box::new(self.value(args[1])),
            ),
            Op::Where => Expr::Where(Box::new([
                self.value(args[0]),
                self.value(args[1]),
                self.value(args[2]),
            ])),
            Op::Reshape => {
                let from = self.dims(args[0]);
                match self.value(args[0]).remap(&|m| m.reshape(&from, &dims)) {
                    Some(e) => e,
                    None => contiguous_load(self.buffer_of(args[0]), &dims),
                }
            }
            Op::Transpose(perm) => self
                .value(args[0])
                .remap(&|m| Some(m.transpose(perm)))
                .expect("transposes are affine"),
            Op::Broadcast => {
                let from = self.dims(args[0]);
                let grows = dims.iter().product::<usize>() > from.iter().product::<usize>();
                if grows && !self.value(args[0]).is_view() {
                    self.buffer_of(args[0]);
                }
                self.value(args[0])
                    .remap(&|m| Some(m.broadcast(&from, &dims)))
                    .expect("broadcasts are affine")
            }
            Op::Slice { axis, start, .. } => self
                .value(args[0])
                .remap(&|m| Some(m.slice(*axis, *start)))
                .expect("slices are affine"),
            Op::Pad { axis, before, .. } => {
                let first = self.out.kernels.len();
                let place = self.join_place(id);
                // Zeros only where the operand does not go: a shift by one row writes one.
                let len = self.dims(args[0])[*axis];
                for (start, zeros) in [(0, *before), (*before + len, dims[*axis] - *before - len)] {
                    if zeros > 0 {
                        let mut slab = dims.clone();
                        slab[*axis] = zeros;
                        self.out.kernels.push(Kernel::Map {
                            dims: slab,
                            out: Place {
                                buffer: place.buffer,
                                map: Affine {
                                    offset: place.map.offset + start * place.map.strides[*axis],
                                    strides: place.map.strides.clone(),
                                },
                            },
                            expr: Expr::Const(0.0),
                        });
                    }
                }
                let expr = self.value(args[0]);
                self.write_part(&place, *axis, *before, args[0], expr);
                self.defer_placed(id, first);
                Expr::Load {
                    buffer: place.buffer,
                    map: place.map,
                }
            }
            Op::Concat { axis } => {
                let first = self.out.kernels.len();
                let place = self.join_place(id);
                let mut start = 0;
                for &a in &args {
                    let expr = self.value(a);
                    self.write_part(&place, *axis, start, a, expr);
                    start += self.program.shape(a).dims()[*axis];
                }
                self.defer_placed(id, first);
                Expr::Load {
                    buffer: place.buffer,
                    map: place.map,
                }
            }
            Op::Reduce(op, axes) if small_window(&self.dims(args[0]), axes) => {
                // A few elements per result (a pooling window): one expression combining them,
                // with no inner loop and no buffer of its own.
                unrolled_reduce(*op, &self.value(args[0]), &self.dims(args[0]), axes)
            }
            Op::Reduce(op, axes) if whole_and_large(&self.dims(args[0]), axes) => {
                // One partial result per outermost index, then those: the first kernel's
                // outermost axis is not reduced, so threads can share it, and the order of the
                // sums does not depend on how many do.
                let from = self.dims(args[0]);
                let expr = self.value(args[0]);
                let rows = from[0];
                let partial = self
                    .out
                    .buffer(format!("{id} partial results"), rows, false);
                let identity = identity_of(*op);
                self.fill(partial, &[rows], identity);
                let mut strides = vec![0; from.len()];
                strides[0] = 1;
                self.out.kernels.push(Kernel::Reduce {
                    op: *op,
                    dims: from,
                    out: Place {
                        buffer: partial,
                        map: Affine { offset: 0, strides },
                    },
                    expr,
                });
                let buffer = self.result_buffer(id);
                self.fill(buffer, &dims, identity);
                self.out.kernels.push(Kernel::Reduce {
                    op: *op,
                    dims: vec![rows],
                    out: Place {
                        buffer,
                        map: Affine {
                            offset: 0,
                            strides: vec![0],
                        },
                    },
                    expr: contiguous_load(partial, &[rows]),
                });
                contiguous_load(buffer, &dims)
            }
            Op::Reduce(op, axes) => {
                let from = self.dims(args[0]);
                let expr = self.value(args[0]);
                let buffer = self.result_buffer(id);
                let identity = identity_of(*op);
                self.fill(buffer, &dims, identity);
                let kept = contiguous_strides(&dims);
                let mut kept = kept.into_iter();
                let strides: Vec<usize> = (0..from.len())
                    .map(|i| {
                        if axes.contains(&i) {
                            0
                        } else {
                            kept.next().unwrap_or(0)
                        }
                    })
                    .collect();
                let (from, expr, strides) = kept_axis_outermost(axes, from, expr, strides);
                self.out.kernels.push(Kernel::Reduce {
                    op: *op,
                    dims: from,
                    out: Place {
                        buffer,
                        map: Affine { offset: 0, strides },
                    },
                    expr,
                });
                contiguous_load(buffer, &dims)
            }
            Op::MatMul => {
                let r = dims.len();
                let a_dims = self.dims(args[0]);
                let (m, k, n) = (a_dims[r - 2], a_dims[r - 1], dims[r - 1]);
                let batch = dims[..r - 2].iter().product();
                let a = self.mat_operand(args[0]);
                let b = self.mat_operand(args[1]);
                let c = self.result_buffer(id);
                self.out.kernels.push(Kernel::MatMul(MatMulKernel {
                    batch,
                    m,
                    k,
                    n,
                    a,
                    b,
                    c,
                }));
                contiguous_load(c, &dims)
            }
            Op::Conv2d(params) | Op::Conv2dInputGrad(params) | Op::Conv2dWeightGrad(params) => {
                let (kind, input, weight) = match node.op {
                    Op::Conv2d(_) => (ConvKind::Forward, self.dims(args[0]), self.dims(args[1])),
                    Op::Conv2dInputGrad(_) => {
                        (ConvKind::InputGrad, dims.clone(), self.dims(args[1]))
                    }
                    _ => (ConvKind::WeightGrad, self.dims(args[0]), dims.clone()),
                };
                let shape = ConvGeometry::new(&input, &weight, *params);
                let a = self.call_operand(args[0]);
                let b = self.call_operand(args[1]);
                let (out, home) = self.call_result(id);
                let ways = self.out.conv_ways.clamp(1, shape.n.max(1));
                let part = ConvKernel::scratch_part(kind, &shape, ways);
                let scratch = self.out.buffer(format!("{id} im2col"), part * ways, false);
                self.out.kernels.push(Kernel::Conv(ConvKernel {
                    kind,
                    shape,
                    args: [a, b],
                    out,
                    ways,
                    scratch,
                }));
                self.settle_call_result(out, home, &dims)
            }
        };
        let computed = !matches!(node.op, Op::Leaf(_) | Op::Const(_) | Op::Iota { .. });
        let shared = self.users[id.index()] > 1
            && !expr.is_view()
            && (self.fixed[id.index()] || !expr.cheap_to_repeat(&dims));
        self.values[id.index()] = Some(expr);
        if computed && (shared || self.value(id).ops() > MAX_FUSED_OPS) {
            self.buffer_of(id);
        }
    }

    /// Writes `expr` (the value of `arg`) into the part of `buffer` (of shape `dims`) that
    /// starts at `start` along `axis`.
    /// Writes `arg`'s value `expr` into the join at `place`, from index `start` of `axis`.
    fn write_part(&mut self, place: &Place, axis: usize, start: usize, arg: ValueId, expr: Expr) {
        let part = self.dims(arg);
        self.out.kernels.push(Kernel::Map {
            out: Place {
                buffer: place.buffer,
                map: Affine {
                    offset: place.map.offset + start * place.map.strides[axis],
                    strides: place.map.strides.clone(),
                },
            },
            dims: part,
            expr,
        });
    }

    /// Node `id` (rank ≥ 2) as a strided batch of matrices, writing it to a buffer first when
    /// its batch axes cannot be walked with one stride. A scan's view (an iteration's row of a
    /// stacked value) is read where it is: the generated code moves the call's operand.
    fn mat_operand(&mut self, id: ValueId) -> MatOperand {
        let dims = self.dims(id);
        let r = dims.len();
        if let Expr::Load { buffer, map } = self.value(id) {
            if let Some(batch) = batch_stride(&dims[..r - 2], &map.strides[..r - 2]) {
                return MatOperand {
                    buffer,
                    offset: map.offset,
                    batch,
                    rows: map.strides[r - 2],
                    cols: map.strides[r - 1],
                };
            }
        }
        let buffer = self.buffer_of(id);
        let strides = contiguous_strides(&dims);
        MatOperand {
            buffer,
            offset: 0,
            batch: dims[r - 2] * dims[r - 1],
            rows: strides[r - 2],
            cols: strides[r - 1],
        }
    }

    /// The buffer holding node `id`'s value, contiguous and at a fixed place, for a runtime
    /// call: a scan's view is copied out first.
    fn call_operand(&mut self, id: ValueId) -> BufferId {
        let buffer = self.buffer_of(id);
        if !self.out.is_view(buffer) {
            return buffer;
        }
        let dims = self.dims(id);
        let fixed = self
            .out
            .buffer(format!("{id} fixed"), dims.iter().product(), false);
        self.copy(buffer, fixed, &dims);
        fixed
    }

    /// Where a runtime call writes node `id`'s result: its buffer, or, where that is a scan's
    /// view (an iteration's row of a stacked output), a fixed buffer first (returned with the
    /// view to copy it to).
    fn call_result(&mut self, id: ValueId) -> (BufferId, Option<BufferId>) {
        let buffer = self.result_buffer(id);
        if !self.out.is_view(buffer) {
            return (buffer, None);
        }
        let len = self.program.shape(id).numel();
        (
            self.out.buffer(format!("{id} fixed"), len, false),
            Some(buffer),
        )
    }

    /// The value of a runtime call's result written to `c`, copied to its view if it has one.
    fn settle_call_result(&mut self, c: BufferId, home: Option<BufferId>, dims: &[usize]) -> Expr {
        match home {
            Some(view) => {
                self.copy(c, view, dims);
                contiguous_load(view, dims)
            }
            None => contiguous_load(c, dims),
        }
    }

    /// A view of `len` elements of operand `arg`'s buffer that moves by `stride` elements per
    /// iteration of scan `scan`.
    fn operand_view(
        &mut self,
        label: String,
        arg: ValueId,
        scan: usize,
        len: usize,
        stride: usize,
    ) -> BufferId {
        let of = self.buffer_of(arg);
        self.out.view(label, len, View { of, scan, stride })
    }

    /// A scan: its carried values start in its result buffers; each iteration, the body reads
    /// them there, its stacked operands through views of their buffers, and writes the next
    /// carried values aside (copied over at the end of the iteration, once nothing reads the
    /// old ones; a value also stacked is written into its row) and its per-iteration outputs
    /// through views of their stacked results.
    ///
    /// A scan whose body treats the batch rows independently (see [`split_scan`]) runs as
    /// parts, each the whole loop on its own block of rows: its carried values, per-iteration
    /// slices and outputs are read and written in blocks, its temporaries are each part's own,
    /// and the parts never wait for each other between iterations.
    fn lower_scan(&mut self, id: ValueId, scan: &crate::ir::Scan, args: &[ValueId]) {
        let split = split_scan(self.out, scan);
        let body = split.as_ref().map_or(&scan.body, |s| &s.program);
        let blocks = |leaf: ValueId| split.as_ref().is_some_and(|s| s.restricted(leaf));
        let number = self.out.scans;
        self.out.scans += 1;
        let carries = scan.carries;
        let mut results = Vec::with_capacity(scan.results());
        let mut leaves: HashMap<ValueId, BufferId> = HashMap::new();
        for (k, &arg) in args.iter().enumerate() {
            let leaf = ValueId(k as u32);
            let len = scan.body.shape(leaf).numel();
            let name = body.node(leaf).name.clone().unwrap_or_default();
            let buffer = match scan.role(k) {
                crate::ir::ScanInput::Carried => {
                    let carried = self.out.buffer(format!("{id} {name}"), len, false);
                    let value = self.value(arg);
                    let dims = self.dims(arg);
                    self.out.kernels.push(Kernel::Map {
                        dims: dims.clone(),
                        out: Place {
                            buffer: carried,
                            map: Affine::contiguous(&dims),
                        },
                        expr: value,
                    });
                    results.push(carried);
                    carried
                }
                crate::ir::ScanInput::Stacked => {
                    self.operand_view(format!("{id} {name}"), arg, number, len, len)
                }
                // An invariant read in blocks: a view that does not move.
                crate::ir::ScanInput::Invariant if blocks(leaf) => {
                    self.operand_view(format!("{id} {name}"), arg, number, len, 0)
                }
                crate::ir::ScanInput::Invariant => self.buffer_of(arg),
            };
            if blocks(leaf) || (split.is_some() && k < carries) {
                self.out.buffers[buffer].share = Share::Blocks;
            }
            leaves.insert(leaf, buffer);
        }
        // Per-iteration outputs go into their stacked results, through views.
        let mut targets: Vec<Option<BufferId>> = vec![None; carries];
        for output in &scan.body.outputs[carries..] {
            let len = scan.body.shape(output.value).numel();
            let whole = self
                .out
                .buffer(format!("{id} {}", output.name), len * scan.trips, false);
            results.push(whole);
            let view = View {
                of: whole,
                scan: number,
                stride: len,
            };
            let view = self.out.view(format!("{id} {}[t]", output.name), len, view);
            if split.is_some() {
                self.out.buffers[view].share = Share::Blocks;
            }
            targets.push(Some(view));
        }
        let head = self.out.kernels.len();
        self.out.kernels.push(Kernel::Scan(ScanKernel {
            id: number,
            trips: scan.trips,
            reverse: scan.reverse,
            body: 0,
        }));
        // A split scan's body is lowered on one block, with temporaries of each part's own.
        let (conv_ways, private) = (self.out.conv_ways, self.out.private);
        if let Some(split) = &split {
            self.out.parts = split.parts;
            self.out.private = true;
            self.out.conv_ways = 1;
        }
        // The next carried values are written aside (copied over at the end of the iteration):
        // into the iteration's row of a per-iteration output returning the same value, else
        // into a buffer of their own.
        for k in 0..carries {
            let output = &body.outputs[k];
            let stacked = (carries..body.outputs.len())
                .find(|&j| body.outputs[j].value == output.value)
                .and_then(|j| targets[j]);
            let len = body.shape(output.value).numel();
            targets[k] = Some(stacked.unwrap_or_else(|| {
                self.out
                    .buffer(format!("{id} next {}", output.name), len, false)
            }));
        }
        self.out.scan_depth += 1;
        let written = self.out.lower(body, &leaves, &targets);
        self.out.scan_depth -= 1;
        for k in 0..carries {
            let dims = body.shape(body.outputs[k].value).dims().to_vec();
            self.copy(written[k], results[k], &dims);
        }
        self.out.private = private;
        self.out.conv_ways = conv_ways;
        let length = self.out.kernels.len() - head - 1;
        if let Kernel::Scan(kernel) = &mut self.out.kernels[head] {
            kernel.body = length;
        }
        if split.is_some() {
            self.out.part_kernels.push(head..head + 1 + length);
            self.out.split_scans.push(head);
        }
        self.scan_results.insert(id, results);
    }
}

/// `scan`'s body restricted to one of `out.scan_parts` blocks of batch rows, where its
/// iterations treat the rows independently (every carried value and output is split along
/// its first axis: see `opt::split`), every part's repeated work is small, and the scan does
/// enough work to be worth it (`split_scan_flops`). Not inside another scan or a region
/// already split, nor with a part count other than the function's.
fn split_scan(out: &Lowered, scan: &crate::ir::Scan) -> Option<crate::opt::split::Split> {
    let parts = out.scan_parts;
    if parts < 2 || out.private || out.scan_depth > 0 || (out.parts > 1 && out.parts != parts) {
        return None;
    }
    let flops = crate::ir::flops(&scan.body);
    if flops.saturating_mul(scan.trips as u64) < out.split_scan_flops {
        return None;
    }
    let split = crate::opt::split::split_rows(&scan.body, parts, |_| true)?;
    // Carried values are written by the parts in blocks: each must be read in blocks too.
    let read = needed_nodes(&scan.body);
    let carried_whole = (0..scan.carries).any(|k| read[k] && !split.restricted(ValueId(k as u32)));
    (!carried_whole && split.repeated_flops * 10 <= flops).then_some(split)
}

/// The kernels of `kernels[range]` that write `aside` (a value of shape `dims`) if they could
/// write `home` instead — in place of the old value there — without changing any result:
/// maps, each reading `home` only at the elements it writes, writing parts of `aside` that
/// cannot meet and together make all of it (a concat's parts, or one map over the whole),
/// with no other kernel after the first of them reading `home`, nor any reading `aside`.
pub fn in_place_writers(
    kernels: &[Kernel],
    range: std::ops::Range<usize>,
    aside: BufferId,
    home: BufferId,
    dims: &[usize],
) -> Option<Vec<usize>> {
    let touches = |k: usize, buffer: BufferId, write: bool| {
        let mut found = false;
        kernels[k].for_each_access(|b, _, written| found |= b == buffer && written == write);
        found
    };
    let writers: Vec<usize> = range.clone().filter(|&k| touches(k, aside, true)).collect();
    let first = *writers.first()?;
    let mut places = Vec::new();
    let mut elements = 0;
    for &w in &writers {
        let Kernel::Map { dims: d, out, expr } = &kernels[w] else {
            return None;
        };
        let mut elementwise = true;
        expr.for_each_load(&mut |b, map| elementwise &= b != home || *map == out.map);
        if !elementwise {
            return None;
        }
        places.push((&out.map, d));
        elements += d.iter().product::<usize>();
    }
    let apart = places
        .iter()
        .enumerate()
        .all(|(i, (a, d))| places[i + 1..].iter().all(|(b, e)| disjoint(a, d, b, e)));
    let whole = match places.as_slice() {
        [(map, d)] => d.as_slice() == dims && **map == Affine::contiguous(dims),
        _ => elements == dims.iter().product::<usize>(),
    };
    let read_later = (first..range.end)
        .any(|k| (!writers.contains(&k) && touches(k, home, false)) || touches(k, aside, false));
    (apart && whole && !read_later).then_some(writers)
}

/// Whether two places, with the maps `a` over `a_dims` and `b` over `b_dims`, can never be the
/// same element: the same strides, nested (each axis's elements fit between two steps of the
/// next outer one), so that every position has one coordinate per axis, and the two boxes of
/// coordinates apart along some axis (the columns of a buffer written in parts, or its leading
/// rows and the rest).
fn disjoint(a: &Affine, a_dims: &[usize], b: &Affine, b_dims: &[usize]) -> bool {
    if a.strides != b.strides || a_dims.len() != b_dims.len() {
        return false;
    }
    // (stride, extent in a, extent in b) of the axes either place moves along, outermost first.
    let mut axes: Vec<(usize, usize, usize)> = (0..a_dims.len())
        .filter(|&k| a.strides[k] > 0 && (a_dims[k] > 1 || b_dims[k] > 1))
        .map(|k| (a.strides[k], a_dims[k], b_dims[k]))
        .collect();
    axes.sort_unstable_by_key(|x| std::cmp::Reverse(x.0));
    // Each place's coordinates along the axes, outermost first, and what is left below the
    // innermost stride; `None` where a box would reach past the room the next outer axis
    // leaves it (its positions would not have one coordinate each).
    let boxes = |mut offset: usize, extent: fn(&(usize, usize, usize)) -> usize| {
        let mut corner = Vec::with_capacity(axes.len());
        for (k, axis) in axes.iter().enumerate() {
            let c = offset / axis.0;
            offset %= axis.0;
            if k > 0 && c + extent(axis) > axes[k - 1].0 / axis.0 {
                return None;
            }
            corner.push(c);
        }
        Some((corner, offset))
    };
    let (Some((ca, ra)), Some((cb, rb))) = (boxes(a.offset, |x| x.1), boxes(b.offset, |x| x.2))
    else {
        return false;
    };
    ra != rb
        || axes
            .iter()
            .zip(ca.iter().zip(&cb))
            .any(|(&(_, na, nb), (&ca, &cb))| ca + na <= cb || cb + nb <= ca)
}

/// Reductions over at most this many elements per result are unrolled into one expression.
const UNROLLED_WINDOW: usize = 8;

/// Whether a reduction of `axes` of `from` combines few enough elements to be unrolled.
/// A reduction over the leading axis into kept axes after it (a bias's gradient summed over
/// time and batch) with the first kept axis moved outermost, where that is not the innermost
/// axis: the threads can then share the loop over it, and each output row stays in cache while
/// the reduced rows stream past. Every output still combines its inputs in the same order.
fn kept_axis_outermost(
    axes: &[usize],
    from: Vec<usize>,
    expr: Expr,
    strides: Vec<usize>,
) -> (Vec<usize>, Expr, Vec<usize>) {
    let rank = from.len();
    let Some(k) = (0..rank).find(|a| !axes.contains(a)) else {
        return (from, expr, strides);
    };
    if !axes.contains(&0) || k + 1 == rank {
        return (from, expr, strides);
    }
    let order: Vec<usize> = std::iter::once(k)
        .chain((0..rank).filter(|&a| a != k))
        .collect();
    let permute = |v: &[usize]| order.iter().map(|&a| v[a]).collect::<Vec<usize>>();
    let expr = expr
        .remap(&|m| {
            Some(Affine {
                offset: m.offset,
                strides: permute(&m.strides),
            })
        })
        .expect("every map is permuted");
    (permute(&from), expr, permute(&strides))
}

/// The value a reduction starts from.
fn identity_of(op: ReduceOp) -> f64 {
    match op {
        ReduceOp::Sum => 0.0,
        ReduceOp::Max => f64::NEG_INFINITY,
    }
}

/// Whether a reduction over every axis of a value of `from` is large enough to be shared
/// between threads by its outermost axis (see the `Reduce` case of lowering).
fn whole_and_large(from: &[usize], axes: &[usize]) -> bool {
    from.len() >= 2
        && from[0] >= 2
        && (0..from.len()).all(|a| axes.contains(&a))
        && from.iter().product::<usize>() >= WHOLE_SHARED_MIN
}

/// Elements from which a reduction over every axis is computed as partial results (2^16).
const WHOLE_SHARED_MIN: usize = 1 << 16;

fn small_window(from: &[usize], axes: &[usize]) -> bool {
    let window: usize = axes.iter().map(|&a| from[a]).product();
    (2..=UNROLLED_WINDOW).contains(&window)
}

/// `op` over the reduced axes of `value` (an expression over `from`) as one expression over
/// the kept axes: the value at every position of the window, combined in row-major order —
/// the order the reduction loop would take.
fn unrolled_reduce(op: ReduceOp, value: &Expr, from: &[usize], axes: &[usize]) -> Expr {
    let window: Vec<usize> = axes.iter().map(|&a| from[a]).collect();
    let count: usize = window.iter().product();
    let combine = match op {
        ReduceOp::Sum => BinaryOp::Add,
        ReduceOp::Max => BinaryOp::Max,
    };
    let mut terms = (0..count).map(|mut flat| {
        // The window position of term `flat`, last axis fastest.
        let mut at = vec![0; window.len()];
        for k in (0..window.len()).rev() {
            at[k] = flat % window[k];
            flat /= window[k];
        }
        value
            .remap(&|map| {
                let mut offset = map.offset;
                for (&axis, &i) in axes.iter().zip(&at) {
                    offset += i * map.strides[axis];
                }
                let strides = (0..from.len())
                    .filter(|a| !axes.contains(a))
                    .map(|a| map.strides[a])
                    .collect();
                Some(Affine { offset, strides })
            })
            .expect("fixing an index keeps a map affine")
    });
    let first = terms.next().expect("a window has elements");
    terms.fold(first, |acc, term| {
        Expr::Binary(combine, Box::new(acc), Box::new(term))
    })
}

/// Joins (concat, pad) read only by a transpose that is an output with a home: each is
/// written straight into that home, through the inverse of the transpose, instead of into a
/// buffer of its own that the output then copies. A relaxation over a split loop stores its
/// stacked state sample-major and writes its next value as such a transpose
/// (`opt::split::sample_major`): the LSTM's pre-activation error, `[T, B, 4H]` joined from its
/// four gates, was a whole copy a step (a tenth of its fixed-mode step at S = 200).
fn placed_joins(
    program: &Program,
    users: &[usize],
    homes: &HashMap<ValueId, BufferId>,
) -> HashMap<ValueId, Place> {
    let mut placed = HashMap::new();
    for (&output, &home) in homes {
        let node = program.node(output);
        let Op::Transpose(perm) = &node.op else {
            continue;
        };
        let join = node.args[0];
        let joins = matches!(program.node(join).op, Op::Concat { .. } | Op::Pad { .. });
        // The output's one user is being an output; the join's, the transpose.
        if !joins || users[output.index()] != 1 || users[join.index()] != 1 {
            continue;
        }
        // Output axis i is the join's axis perm[i], laid out row-major in the home.
        let out_strides = contiguous_strides(node.shape.dims());
        let mut strides = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            strides[p] = out_strides[i];
        }
        placed.insert(
            join,
            Place {
                buffer: home,
                map: Affine { offset: 0, strides },
            },
        );
    }
    placed
}

fn contiguous_load(buffer: BufferId, dims: &[usize]) -> Expr {
    Expr::Load {
        buffer,
        map: Affine::contiguous(dims),
    }
}

/// The one stride that walks the batch axes in row-major order, if there is one.
fn batch_stride(dims: &[usize], strides: &[usize]) -> Option<usize> {
    let axes: Vec<(usize, usize)> = dims
        .iter()
        .zip(strides)
        .filter(|(&d, _)| d != 1)
        .map(|(&d, &s)| (d, s))
        .collect();
    if axes.windows(2).any(|w| w[0].1 != w[1].0 * w[1].1) {
        return None;
    }
    Some(axes.last().map_or(0, |&(_, s)| s))
}

/// Whether a program's leaf is needed, and its kind (for the run-time checks).
pub fn needed_leaves(program: &Program) -> Vec<(ValueId, LeafKind)> {
    let needed = needed_nodes(program);
    program
        .ids()
        .filter(|id| needed[id.index()])
        .filter_map(|id| match program.node(id).op {
            Op::Leaf(kind) => Some((id, kind)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels of `text`'s program, with a buffer for each leaf.
    fn kernels_of(text: &str) -> Vec<Kernel> {
        let program = crate::ir::from_text(text).expect("parses");
        let mut lowered = Lowered::default();
        let leaves = program
            .ids()
            .filter(|&id| matches!(program.node(id).op, Op::Leaf(_)))
            .map(|id| {
                let len = program.shape(id).numel();
                (id, lowered.buffer(format!("{id}"), len, true))
            })
            .collect();
        lowered.lower(&program, &leaves, &[]);
        lowered.kernels
    }

    /// A cheap value of one operand read by two users is evaluated by each, not written to a
    /// buffer first; one of two full operands, one that feeds a transcendental function or
    /// one the program returns is written once.
    #[test]
    fn cheap_shared_values_are_evaluated_again() {
        let program = |value: &str, users: &str| {
            format!(
                "program p {{\n  %0 = input x : [8, 16]\n  %1 = input y : [8, 16]\n  \
                 %2 = input m : [16]\n  %3 = broadcast %2 : [8, 16]\n  \
                 %4 = {value} : [8, 16]\n{users}}}\n"
            )
        };
        let two_sums = "  %5 = reduce_sum[axes=[1]] %4 : [8]\n  \
                        %6 = reduce_max[axes=[1]] %4 : [8]\n  return s = %5\n  return t = %6\n";
        let maps = |kernels: &[Kernel]| {
            kernels
                .iter()
                .filter(|k| matches!(k, Kernel::Map { .. }))
                .count()
        };
        // Each reduction evaluates x − m itself: no map writes it (only the outputs' fills).
        let repeated = kernels_of(&program("sub %0, %3", two_sums));
        let written = kernels_of(&program("sub %0, %1", two_sums));
        assert_eq!(maps(&written), maps(&repeated) + 1);
        let costly = kernels_of(&program("div %0, %3", two_sums));
        assert_eq!(maps(&costly), maps(&written));
        let transcendental = "  %5 = exp %4 : [8, 16]\n  %6 = reduce_sum[axes=[1]] %4 : [8]\n  \
                              return s = %5\n  return t = %6\n";
        let feeds_exp = kernels_of(&program("sub %0, %3", transcendental));
        let returned = "  %5 = reduce_sum[axes=[1]] %4 : [8]\n  return s = %5\n  return d = %4\n";
        let output = kernels_of(&program("sub %0, %3", returned));
        for kernels in [&feeds_exp, &output] {
            let writes_value = kernels.iter().any(|k| match k {
                Kernel::Map { expr, .. } => matches!(expr, Expr::Binary(BinaryOp::Sub, ..)),
                _ => false,
            });
            assert!(writes_value, "{kernels:?}");
        }
    }

    #[test]
    fn reshape_merges_and_splits_contiguous_axes() {
        let m = Affine::contiguous(&[2, 3, 4]);
        let r = m.reshape(&[2, 3, 4], &[6, 4]).expect("merge");
        assert_eq!(r.strides, vec![4, 1]);
        let r = m.reshape(&[2, 3, 4], &[2, 12, 1]).expect("merge with unit");
        assert_eq!(r.strides, vec![12, 1, 0]);
    }

    #[test]
    fn reshape_of_a_transpose_is_not_affine() {
        let m = Affine::contiguous(&[2, 3]).transpose(&[1, 0]);
        assert!(m.reshape(&[3, 2], &[6]).is_none());
        // Splitting one axis of a transposed view stays affine.
        let r = m.reshape(&[3, 2], &[3, 2, 1]).expect("unit axis");
        assert_eq!(r.strides[..2], [1, 3]);
    }

    #[test]
    fn column_parts_of_one_buffer_are_apart() {
        // [32, 64] parts of a [32, 256] buffer: rows 256 apart, parts 64 apart.
        let part = |offset| Affine {
            offset,
            strides: vec![256, 1],
        };
        let d = [32, 64];
        assert!(disjoint(&part(0), &d, &part(64), &d));
        assert!(disjoint(&part(192), &d, &part(64), &d));
        assert!(!disjoint(&part(0), &d, &part(32), &d));
        // Rows apart along the outer axis: apart only where the extents do not meet.
        assert!(disjoint(&part(0), &d, &part(32 * 256), &d));
        assert!(!disjoint(&part(0), &d, &part(31 * 256), &d));
        // Different strides are never known to be apart.
        let other = Affine {
            offset: 4096,
            strides: vec![64, 1],
        };
        assert!(!disjoint(&part(0), &d, &other, &d));
        // Parts of different shapes: the leading 198 rows of a [199, 16, 64] block stored
        // sample-major ([16, 199, 64]: rows 64 apart, samples 199 · 64) and its last row.
        let stacked = |offset| Affine {
            offset,
            strides: vec![64, 199 * 64, 1],
        };
        let (lead, last) = ([198, 16, 64], [1, 16, 64]);
        assert!(disjoint(&stacked(0), &lead, &stacked(198 * 64), &last));
        assert!(!disjoint(&stacked(0), &lead, &stacked(197 * 64), &last));
        // A box reaching past its room (row 199 of 199) is not known to be apart.
        assert!(!disjoint(
            &stacked(0),
            &lead,
            &stacked(198 * 64),
            &[2, 16, 64]
        ));
        // Columns of the last row against a block of the rest, different widths.
        assert!(disjoint(&part(0), &[31, 256], &part(31 * 256 + 8), &[1, 8]));
    }

    #[test]
    fn broadcast_strides_are_zero() {
        let m = Affine::contiguous(&[3, 1]);
        assert_eq!(m.broadcast(&[3, 1], &[2, 3, 5]).strides, vec![0, 1, 0]);
    }
}
