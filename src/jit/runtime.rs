//! Runtime kernels the generated code calls: matrix products and convolutions through a tuned
//! GEMM (the `gemm` crate: AVX-512 micro-kernels, and the fastest of the crates measured on
//! this project's products), and the scalar transcendental functions that have no inline
//! approximation.
//!
//! Generated code passes the arena's base and a descriptor — a `#[repr(C)]` struct the
//! compiled function owns, holding element offsets into the arena — so that the same code and
//! descriptors serve every run. Each kernel returns 0, or a non-zero status when a checked
//! descriptor would reach outside the arena.
//!
//! The kernels on floats are generic over the element type ([`FloatCalls`]): f32 code calls
//! their f32 instances, f64 code their f64 ones (GEMM's general path: the narrow product
//! kernel is f32's alone). A job's exchange carries f32 only.

use super::lower::{ConvGeometry, ConvKernel, ConvKind, MatOperand};
use super::team;
use super::Float;
use crate::interp;
use crate::ir::UnaryOp;
use crate::sema::Dtype;

/// Products with fewer multiply-adds than this run on the calling thread alone: below it,
/// sharing the product costs more than it saves. With AVX-512 kernels a 64×64 @ 64×64 product
/// takes a few microseconds on one core, about what handing half of it over costs: the deep
/// residual example's 64×64 products (and their 4096-element maps, see
/// `codegen::SHARED_MIN_ELEMENTS`) kept on one thread took its BP step from 2.1 to 1.55 ms on
/// a 2-vCPU Xeon, the other examples unchanged within noise.
const SHARED_MIN_MACS: usize = 1 << 19;

/// Rows or columns of a shared product's pieces come in multiples of this, the width of the
/// GEMM micro-kernels, so that no piece has a ragged edge it need not have.
const PIECE_ALIGN: usize = 16;

/// Status returned when a checked kernel would leave its arena.
pub const OUT_OF_ARENA: i32 = 1;

/// Whether matrix products and convolutions time themselves (see [`time_products`]).
/// Raised (non-zero) to make every compiled loop end its function with
/// [`codegen::INTERRUPTED`](super::codegen::INTERRUPTED) at its next poll; see
/// [`interrupt`].
pub static INTERRUPT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Asks the compiled loops running now, and any started later, to stop (`true`), or lets
/// them run again (`false`). A step so stopped fails with `JitError::Interrupted` before
/// anything after its loop (the learning, the optimiser's update) has run.
pub fn interrupt(stop: bool) {
    INTERRUPT.store(i32::from(stop), std::sync::atomic::Ordering::SeqCst);
}

static TIMING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

thread_local! {
    /// Time this thread has spent in matrix products and convolutions while timing was on.
    static PRODUCT_TIME: std::cell::Cell<std::time::Duration> =
        const { std::cell::Cell::new(std::time::Duration::ZERO) };
}

/// Turns the timing of matrix products and convolutions on or off (for all threads).
pub fn time_products(on: bool) {
    TIMING.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The time the calling thread has spent in products since the last call, while timing was
/// on (a call on a thread that runs a step measures the products that step waited for).
pub fn take_product_time() -> std::time::Duration {
    PRODUCT_TIME.with(|t| t.replace(std::time::Duration::ZERO))
}

/// Profiling on one thread: the kernel being timed and since when, and every kernel's total
/// time and number of runs so far.
type KernelTimes = (Option<(usize, std::time::Instant)>, Vec<KernelTime>);

/// One kernel's time on a thread while profiling, and how many times it ran there.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelTime {
    pub time: std::time::Duration,
    pub runs: u64,
}

thread_local! {
    static KERNEL_TIMES: std::cell::RefCell<KernelTimes> =
        const { std::cell::RefCell::new((None, Vec::new())) };
}

/// Profiling: kernel `kernel` starts on this thread (a negative one: the last one ended).
pub extern "C" fn tick(kernel: i64) {
    let now = std::time::Instant::now();
    KERNEL_TIMES.with(|t| {
        let (running, times) = &mut *t.borrow_mut();
        if let Some((k, since)) = running.take() {
            if times.len() <= k {
                times.resize(k + 1, KernelTime::default());
            }
            times[k].time += now - since;
            times[k].runs += 1;
        }
        *running = usize::try_from(kernel).ok().map(|k| (k, now));
    });
}

/// Each kernel's time and runs on the calling thread since the last call, by kernel index
/// (profiling).
pub fn take_kernel_times() -> Vec<KernelTime> {
    KERNEL_TIMES.with(|t| std::mem::take(&mut t.borrow_mut().1))
}

/// Runs `f`, adding its duration to the calling thread's product time when timing is on.
fn timed<T>(f: impl FnOnce() -> T) -> T {
    if !TIMING.load(std::sync::atomic::Ordering::Relaxed) {
        return f();
    }
    let start = std::time::Instant::now();
    let result = f();
    PRODUCT_TIME.with(|t| t.set(t.get() + start.elapsed()));
    result
}

/// Subnormal results flushed to zero while compiled code runs (x86's FTZ), as the inline `exp`
/// already does for its own results. On x86 an operation that produces or reads a subnormal
/// takes a microcode assist of a hundred cycles or more; a value that decays towards zero step
/// after step (an unused weight under weight decay, a converged error) otherwise becomes
/// subnormal and slows every later step many times over (measured: a step whose weights had
/// decayed to subnormals ran 16× slower; flushed, the weights stop at 0). Subnormal operands
/// are still read as they are (no DAZ): `log` of a subnormal input stays finite. Results below
/// 1.2e-38 in magnitude are all this changes.
pub struct FlushSubnormals {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

/// MXCSR's flush-to-zero bit.
#[cfg(target_arch = "x86_64")]
const FTZ: u32 = 0x8000;

impl FlushSubnormals {
    /// Turns flushing on for the calling thread until the guard is dropped.
    pub fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let saved = read_mxcsr();
            write_mxcsr(saved | FTZ);
            FlushSubnormals { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        FlushSubnormals {}
    }

    /// Turns flushing on for the calling thread for good (the team's helper threads, which
    /// run nothing but compiled pieces and products).
    pub fn forever() {
        std::mem::forget(Self::new());
    }
}

impl Default for FlushSubnormals {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FlushSubnormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        write_mxcsr(self.saved);
    }
}

#[cfg(target_arch = "x86_64")]
fn read_mxcsr() -> u32 {
    let mut csr: u32 = 0;
    // SAFETY: stmxcsr stores the 32-bit control register to the address given.
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
    }
    csr
}

#[cfg(target_arch = "x86_64")]
fn write_mxcsr(csr: u32) {
    // SAFETY: ldmxcsr loads the control register; only the rounding, masking and flushing
    // bits of a value read from it are changed.
    unsafe {
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags));
    }
}

/// A raw pointer that may cross to a helper thread: each piece of a shared product writes
/// rows or columns of the result no other piece touches.
#[derive(Clone, Copy)]
pub(super) struct Shared<T>(pub(super) T);
// SAFETY: see the type's comment; the operands are only read.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T: Copy> Shared<T> {
    pub(super) fn get(&self) -> T {
        self.0
    }
}

/// A matrix in memory: its first element and its element strides (row, column).
#[derive(Clone, Copy)]
struct Strided<P> {
    at: P,
    strides: (isize, isize),
}

impl<P: Copy> Strided<P> {
    fn new(at: P, strides: (isize, isize)) -> Self {
        Strided { at, strides }
    }
}

impl<T> Strided<*const T> {
    /// The same matrix from row `r` and column `c` on.
    unsafe fn from(self, r: usize, c: usize) -> Self {
        let (rs, cs) = self.strides;
        Strided::new(
            self.at.offset(r as isize * rs + c as isize * cs),
            self.strides,
        )
    }
}

impl<T> Strided<*mut T> {
    unsafe fn from(self, r: usize, c: usize) -> Self {
        let (rs, cs) = self.strides;
        Strided::new(
            self.at.offset(r as isize * rs + c as isize * cs),
            self.strides,
        )
    }
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`, or `dst += ...` when `accumulate`, with element
/// strides (row, column) for each matrix. Large products are split along their longer side
/// between up to `threads` threads (see `team`); those whose inner dimension dwarfs the
/// result along it too (see [`LONG_INNER`]).
///
/// # Safety
/// Every addressed element must lie inside live allocations.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided<T: Float>(
    (m, k, n): (usize, usize, usize),
    dst: *mut T,
    dst_strides: (isize, isize),
    lhs: *const T,
    lhs_strides: (isize, isize),
    rhs: *const T,
    rhs_strides: (isize, isize),
    accumulate: bool,
    threads: usize,
) {
    let dst = Strided::new(dst, dst_strides);
    let (lhs, rhs) = (
        Strided::new(lhs, lhs_strides),
        Strided::new(rhs, rhs_strides),
    );
    let ways = threads.min(team::size());
    if LONG_INNER.applies(m, k, n) {
        return long_inner_product((m, k, n), dst, lhs, rhs, accumulate, ways);
    }
    if ways <= 1 || m * n * k < SHARED_MIN_MACS {
        return product_on_caller((m, k, n), dst, lhs, rhs, accumulate);
    }
    split_product((m, k, n), dst, lhs, rhs, accumulate, ways);
}

/// [`gemm_strided`]'s product on the calling thread.
///
/// # Safety
/// As for [`gemm_strided`].
unsafe fn product_on_caller<T: Float>(
    (m, k, n): (usize, usize, usize),
    dst: Strided<*mut T>,
    lhs: Strided<*const T>,
    rhs: Strided<*const T>,
    accumulate: bool,
) {
    let ((dst_rs, dst_cs), (lhs_rs, lhs_cs), (rhs_rs, rhs_cs)) =
        (dst.strides, lhs.strides, rhs.strides);
    if k == 0 {
        if !accumulate {
            for i in 0..m as isize {
                for j in 0..n as isize {
                    *dst.at.offset(i * dst_rs + j * dst_cs) = T::zero();
                }
            }
        }
        return;
    }
    // The narrow kernel is f32's; f64 products all take the general path.
    if T::DTYPE == Dtype::F32 && narrow::applies(n, dst_cs, rhs_cs) {
        return narrow::product(
            (m, k, n),
            (dst.at.cast(), dst_rs),
            (lhs.at.cast(), lhs_rs, lhs_cs),
            (rhs.at.cast(), rhs_rs),
            accumulate,
        );
    }
    gemm::gemm(
        m,
        n,
        k,
        dst.at,
        dst_cs,
        dst_rs,
        accumulate,
        lhs.at,
        lhs_cs,
        lhs_rs,
        rhs.at,
        rhs_cs,
        rhs_rs,
        T::one(),
        T::one(),
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// [`gemm_strided`]'s product split along the longer side of the result into `ways` aligned
/// pieces — rows of dst and lhs, or columns of dst and rhs — shared with the team. Every
/// entry is the same sum as on one thread.
///
/// # Safety
/// As for [`gemm_strided`].
unsafe fn split_product<T: Float>(
    (m, k, n): (usize, usize, usize),
    dst: Strided<*mut T>,
    lhs: Strided<*const T>,
    rhs: Strided<*const T>,
    accumulate: bool,
    ways: usize,
) {
    let by_rows = m >= n;
    let side = if by_rows { m } else { n };
    let width = side.div_ceil(ways).div_ceil(PIECE_ALIGN) * PIECE_ALIGN;
    let (dst, lhs, rhs) = (Shared(dst), Shared(lhs), Shared(rhs));
    team::run(side.div_ceil(width), &|i| {
        let start = i * width;
        let len = width.min(side - start);
        let (dst, lhs, rhs) = (dst.get(), lhs.get(), rhs.get());
        // SAFETY: each piece addresses a sub-block of the caller's matrices.
        if by_rows {
            product_on_caller(
                (len, k, n),
                dst.from(start, 0),
                lhs.from(start, 0),
                rhs,
                accumulate,
            );
        } else {
            product_on_caller(
                (m, k, len),
                dst.from(0, start),
                lhs,
                rhs.from(0, start),
                accumulate,
            );
        }
    });
}

/// Which products split their inner dimension: at least `min_inner` long and `ratio` times
/// the longer side of the result.
struct LongInner {
    min_inner: usize,
    ratio: usize,
}

/// A weight's gradient summed over every row of a stacked loop — the LSTM's
/// `[137, 32000] × [32000, 256]` at S = 500 — has a small result and a long inner dimension.
/// Split along the result's columns, each thread packs the whole left operand and the
/// 73-column read-out's gradient splits 48 + 25; split along k, each thread packs half of
/// each operand into a full-size partial result. Measured on a 2-vCPU Xeon (AVX-512), the
/// two products took 9.3 and 2.0 ms by columns, 8.7 and 1.6 ms by k.
const LONG_INNER: LongInner = LongInner {
    min_inner: 8192,
    ratio: 16,
};

impl LongInner {
    fn applies(&self, m: usize, k: usize, n: usize) -> bool {
        k >= self.min_inner && k >= self.ratio * m.max(n)
    }
}

/// A product [`LONG_INNER`] applies to, as [`K_PARTS`] products over consecutive ranges of k
/// summed in order: the first into `dst`, the others into scratch results added to it. The
/// parts and their order do not depend on the threads, so every entry is the same sum on
/// one thread or several; each part is split further by [`split_product`] on a team larger
/// than the parts.
///
/// # Safety
/// As for [`gemm_strided`].
unsafe fn long_inner_product<T: Float>(
    (m, k, n): (usize, usize, usize),
    dst: Strided<*mut T>,
    lhs: Strided<*const T>,
    rhs: Strided<*const T>,
    accumulate: bool,
    ways: usize,
) {
    let part_len = k.div_ceil(K_PARTS);
    let mut scratch = vec![T::zero(); (K_PARTS - 1) * m * n];
    let scratch_at = Shared(scratch.as_mut_ptr());
    let (shared_dst, lhs, rhs) = (Shared(dst), Shared(lhs), Shared(rhs));
    let per_part = (ways / K_PARTS).max(1);
    let part = |p: usize| {
        let start = p * part_len;
        let len = part_len.min(k - start);
        let (into, accumulate) = if p == 0 {
            (shared_dst.get(), accumulate)
        } else {
            let at = scratch_at.get().add((p - 1) * m * n);
            (Strided::new(at, (n as isize, 1)), false)
        };
        let (lhs, rhs) = (lhs.get().from(0, start), rhs.get().from(start, 0));
        // SAFETY: each part reads its own columns of lhs and rows of rhs, and writes `dst`
        // or its own scratch result.
        if per_part > 1 && m * n * len >= SHARED_MIN_MACS {
            split_product((m, len, n), into, lhs, rhs, accumulate, per_part);
        } else {
            product_on_caller((m, len, n), into, lhs, rhs, accumulate);
        }
    };
    if ways > 1 {
        team::run(K_PARTS, &part);
    } else {
        (0..K_PARTS).for_each(part);
    }
    let (dst_rs, dst_cs) = dst.strides;
    for p in 1..K_PARTS {
        let partial = &scratch[(p - 1) * m * n..p * m * n];
        for i in 0..m {
            for j in 0..n {
                let entry = dst.at.offset(i as isize * dst_rs + j as isize * dst_cs);
                *entry = *entry + partial[i * n + j];
            }
        }
    }
}

/// The ranges of k a long-inner product is summed in.
const K_PARTS: usize = 2;

/// Products whose result has at most 16 columns — a classifier's output layer,
/// `[32, 256] × [256, 10]` at every relaxation step — on AVX-512: each row of the right
/// operand is one masked vector, and eight rows of the result accumulate in registers while
/// the left operand's entries are broadcast. GEMM's micro-kernels, 16 or more columns wide,
/// run such products at a fifth of their rate (24 against 130 GFLOP/s measured on that
/// shape). Each entry is summed over `k` in order, in single precision with fused
/// multiply-adds.
mod narrow {
    /// The widest result the kernel computes: one AVX-512 vector of f32.
    const MAX_COLUMNS: usize = 16;

    /// Whether a product of `n` result columns, with these column strides of the result and
    /// the right operand, runs here: narrow, both rows contiguous, and the CPU has AVX-512.
    pub fn applies(n: usize, dst_cs: isize, rhs_cs: isize) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            n <= MAX_COLUMNS
                && (dst_cs == 1 || n == 1)
                && (rhs_cs == 1 || n == 1)
                && std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (n, dst_cs, rhs_cs);
            false
        }
    }

    /// `dst (m×n) = lhs (m×k) · rhs (k×n)`, or `+=` when `accumulate`; strides in elements.
    ///
    /// # Safety
    /// [`applies`] held for these columns and strides, and every addressed element lies
    /// inside live allocations.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn product(
        (m, k, n): (usize, usize, usize),
        (dst, dst_rs): (*mut f32, isize),
        (lhs, lhs_rs, lhs_cs): (*const f32, isize, isize),
        (rhs, rhs_rs): (*const f32, isize),
        accumulate: bool,
    ) {
        let mut i = 0;
        while i + 8 <= m {
            rows::<8>(
                i,
                k,
                n,
                (dst, dst_rs),
                (lhs, lhs_rs, lhs_cs),
                (rhs, rhs_rs),
                accumulate,
            );
            i += 8;
        }
        while i < m {
            rows::<1>(
                i,
                k,
                n,
                (dst, dst_rs),
                (lhs, lhs_rs, lhs_cs),
                (rhs, rhs_rs),
                accumulate,
            );
            i += 1;
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub unsafe fn product(
        _: (usize, usize, usize),
        _: (*mut f32, isize),
        _: (*const f32, isize, isize),
        _: (*const f32, isize),
        _: bool,
    ) {
        unreachable!("narrow products run only where `applies` held")
    }

    /// Rows `i..i + R` of the result. Masked loads and stores touch only the `n` columns.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize>(
        i: usize,
        k: usize,
        n: usize,
        (dst, dst_rs): (*mut f32, isize),
        (lhs, lhs_rs, lhs_cs): (*const f32, isize, isize),
        (rhs, rhs_rs): (*const f32, isize),
        accumulate: bool,
    ) {
        use std::arch::x86_64::*;
        let mask: __mmask16 = ((1u32 << n) - 1) as __mmask16;
        let row = |r: usize| (i + r) as isize;
        let mut acc = [_mm512_setzero_ps(); R];
        if accumulate {
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_maskz_loadu_ps(mask, dst.offset(row(r) * dst_rs));
            }
        }
        for kk in 0..k as isize {
            let b = _mm512_maskz_loadu_ps(mask, rhs.offset(kk * rhs_rs));
            for (r, a) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*lhs.offset(row(r) * lhs_rs + kk * lhs_cs));
                *a = _mm512_fmadd_ps(x, b, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(dst.offset(row(r) * dst_rs), mask, *a);
        }
    }
}

/// A batched matrix product, as the generated code sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MatMulDesc {
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub a: [usize; 4],
    pub b: [usize; 4],
    /// The contiguous `[batch, m, n]` result's offset.
    pub c: usize,
    pub threads: usize,
    /// The arena's length when accesses are to be checked, else 0.
    pub checked_len: usize,
}

impl MatMulDesc {
    pub fn new(
        (batch, m, k, n): (usize, usize, usize, usize),
        a: (usize, MatOperand),
        b: (usize, MatOperand),
        c: usize,
        threads: usize,
        checked_len: usize,
    ) -> Self {
        let operand = |(base, x): (usize, MatOperand)| [base + x.offset, x.batch, x.rows, x.cols];
        MatMulDesc {
            batch,
            m,
            k,
            n,
            a: operand(a),
            b: operand(b),
            c,
            threads,
            checked_len,
        }
    }

    fn extents(&self) -> [usize; 3] {
        let last = |x: &[usize; 4], rows: usize, cols: usize| {
            x[0] + (self.batch - 1) * x[1] + (rows - 1) * x[2] + (cols - 1) * x[3] + 1
        };
        [
            last(&self.a, self.m, self.k),
            last(&self.b, self.k, self.n),
            self.c + self.batch * self.m * self.n,
        ]
    }
}

/// Runs a [`MatMulDesc`] on the arena at `arena`.
///
/// # Safety
/// `desc` must point to a valid descriptor whose offsets lie inside the arena.
pub unsafe extern "C" fn matmul<T: Float>(desc: *const MatMulDesc, arena: *mut T) -> i32 {
    timed(|| matmul_untimed(&*desc, arena))
}

/// [`matmul`] without the timing.
///
/// # Safety
/// As for [`matmul`].
unsafe fn matmul_untimed<T: Float>(d: &MatMulDesc, arena: *mut T) -> i32 {
    if d.batch * d.m * d.n == 0 {
        return 0;
    }
    if d.checked_len > 0 && d.extents().iter().any(|&e| e > d.checked_len) {
        return OUT_OF_ARENA;
    }
    for b in 0..d.batch {
        gemm_strided(
            (d.m, d.k, d.n),
            arena.add(d.c + b * d.m * d.n),
            (d.n as isize, 1),
            arena.add(d.a[0] + b * d.a[1]),
            (d.a[2] as isize, d.a[3] as isize),
            arena.add(d.b[0] + b * d.b[1]),
            (d.b[2] as isize, d.b[3] as isize),
            false,
            d.threads,
        );
    }
    0
}

/// A convolution product, as the generated code sees it: offsets of the two operands, the
/// result and the scratch space of `ways` sample groups.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConvDesc {
    pub kind: ConvKind,
    pub shape: ConvGeometry,
    pub args: [usize; 2],
    pub out: usize,
    pub scratch: usize,
    pub ways: usize,
    pub checked_len: usize,
}

impl ConvDesc {
    fn extents(&self) -> [usize; 4] {
        let s = &self.shape;
        let [a, b, out] = s.operand_lens(self.kind);
        [
            self.args[0] + a,
            self.args[1] + b,
            self.out + out,
            self.scratch + self.ways * ConvKernel::scratch_part(self.kind, s, self.ways),
        ]
    }
}

/// Runs a [`ConvDesc`] on the arena at `arena`. Each sample is one im2col and one GEMM:
///
/// - forward:     out[n]  = W · cols(x[n]),       W as `[O, C·KH·KW]`
/// - weight grad: dW     += G[n] · cols(x[n])ᵀ,   G[n] as `[O, OH·OW]`
/// - input grad:  dx[n]   = col2im(Wᵀ · G[n])
///
/// The samples are split into `ways` contiguous groups shared between threads (see `team`),
/// each with its own im2col matrix; a weight gradient sums the groups' partial sums at the end.
///
/// # Safety
/// `desc` must point to a valid descriptor whose offsets lie inside the arena.
pub unsafe extern "C" fn conv<T: Float>(desc: *const ConvDesc, arena: *mut T) -> i32 {
    timed(|| conv_untimed(&*desc, arena))
}

/// [`conv`] without the timing.
///
/// # Safety
/// As for [`conv`].
unsafe fn conv_untimed<T: Float>(d: &ConvDesc, arena: *mut T) -> i32 {
    if d.checked_len > 0 && d.extents().iter().any(|&e| e > d.checked_len) {
        return OUT_OF_ARENA;
    }
    let s = d.shape;
    let ways = d.ways.max(1);
    let per_group = s.n.div_ceil(ways);
    let part = ConvKernel::scratch_part(d.kind, &s, ways);
    let arena = Shared(arena);
    team::run(ways, &|group| {
        let samples = (group * per_group).min(s.n)..((group + 1) * per_group).min(s.n);
        let base = arena.get();
        // SAFETY: the groups' samples, scratch parts and (forward, input grad) outputs are
        // disjoint; the weight gradient's groups write their own partial sums.
        let scratch = base.add(d.scratch + group * part);
        let columns = std::slice::from_raw_parts_mut(scratch, s.columns_len());
        let sum = if ways > 1 {
            scratch.add(s.columns_len())
        } else {
            base.add(d.out)
        };
        conv_samples(d, base, samples, columns, sum);
    });
    if d.kind == ConvKind::WeightGrad && ways > 1 {
        let base = arena.get();
        let out = std::slice::from_raw_parts_mut(base.add(d.out), s.weight_len());
        out.fill(T::zero());
        for group in 0..ways {
            let partial = base.add(d.scratch + group * part + s.columns_len());
            let partial = std::slice::from_raw_parts(partial, s.weight_len());
            out.iter_mut().zip(partial).for_each(|(o, &p)| *o = *o + p);
        }
    }
    0
}

/// The convolution of `samples` on one thread, with `columns` for one im2col matrix; a weight
/// gradient is summed into `sum` (zeroed first).
///
/// # Safety
/// As for [`conv`]; `sum` has room for the weight.
unsafe fn conv_samples<T: Float>(
    d: &ConvDesc,
    arena: *mut T,
    samples: std::ops::Range<usize>,
    columns: &mut [T],
    sum: *mut T,
) {
    let s = d.shape;
    // Group g's product: output channels g·og.., weight rows g·og.., im2col rows g·patch...
    let (og, patch) = (s.group_outputs(), s.group_patch());
    let pixels = s.oh * s.ow;
    let input_len = s.c * s.h * s.w;
    match d.kind {
        ConvKind::Forward => {
            for n in samples {
                let x = std::slice::from_raw_parts(arena.add(d.args[0] + n * input_len), input_len);
                im2col(&s, x, columns);
                for g in 0..s.groups {
                    gemm_strided(
                        (og, patch, pixels),
                        arena.add(d.out + (n * s.o + g * og) * pixels),
                        (pixels as isize, 1),
                        arena.add(d.args[1] + g * og * patch),
                        (patch as isize, 1),
                        columns.as_ptr().add(g * patch * pixels),
                        (pixels as isize, 1),
                        false,
                        1,
                    );
                }
            }
        }
        ConvKind::WeightGrad => {
            std::slice::from_raw_parts_mut(sum, s.weight_len()).fill(T::zero());
            for n in samples {
                let x = std::slice::from_raw_parts(arena.add(d.args[0] + n * input_len), input_len);
                im2col(&s, x, columns);
                for g in 0..s.groups {
                    gemm_strided(
                        (og, pixels, patch),
                        sum.add(g * og * patch),
                        (patch as isize, 1),
                        arena.add(d.args[1] + (n * s.o + g * og) * pixels),
                        (pixels as isize, 1),
                        columns.as_ptr().add(g * patch * pixels),
                        (1, pixels as isize),
                        true,
                        1,
                    );
                }
            }
        }
        ConvKind::InputGrad => {
            for n in samples {
                for g in 0..s.groups {
                    gemm_strided(
                        (patch, og, pixels),
                        columns.as_mut_ptr().add(g * patch * pixels),
                        (pixels as isize, 1),
                        arena.add(d.args[1] + g * og * patch),
                        (1, patch as isize),
                        arena.add(d.args[0] + (n * s.o + g * og) * pixels),
                        (pixels as isize, 1),
                        false,
                        1,
                    );
                }
                let dx =
                    std::slice::from_raw_parts_mut(arena.add(d.out + n * input_len), input_len);
                col2im(&s, columns, dx);
            }
        }
    }
}

fn im2col<T: Float>(s: &ConvGeometry, input: &[T], columns: &mut [T]) {
    columns.fill(T::zero());
    s.for_each_run(|entry, pixel, len| {
        let out = &mut columns[entry..entry + len];
        if s.sw == 1 {
            // Runs are a few elements long (an output row): a loop, not a call to memcpy.
            for (o, &x) in out.iter_mut().zip(&input[pixel..pixel + len]) {
                *o = x;
            }
        } else {
            let read = input[pixel..].iter().step_by(s.sw);
            out.iter_mut().zip(read).for_each(|(o, &x)| *o = x);
        }
    });
}

/// The adjoint of `im2col`: sums each matrix entry onto the input element it read.
fn col2im<T: Float>(s: &ConvGeometry, columns: &[T], input: &mut [T]) {
    input.fill(T::zero());
    s.for_each_run(|entry, pixel, len| {
        let from = &columns[entry..entry + len];
        if s.sw == 1 {
            for (x, &c) in input[pixel..pixel + len].iter_mut().zip(from) {
                *x = *x + c;
            }
        } else {
            let to = input[pixel..].iter_mut().step_by(s.sw);
            to.zip(from).for_each(|(x, &c)| *x = *x + c);
        }
    });
}

/// A shared kernel's own function: runs its outermost indices `lo..hi` on the arena and
/// returns 0, or the status of a failed check.
pub type Piece = unsafe extern "C" fn(arena: *mut u8, lo: i64, hi: i64) -> i32;

/// Runs a shared elementwise kernel: its outermost axis of `extent` indices cut into `pieces`
/// parts, shared between threads (see `team`). Returns the first non-zero status of a part.
///
/// # Safety
/// `piece` must be a compiled kernel function over this arena.
pub unsafe extern "C" fn parallel(piece: Piece, arena: *mut u8, extent: i64, pieces: i64) -> i32 {
    let extent = extent.max(0) as usize;
    let pieces = (pieces.max(1) as usize).min(extent.max(1));
    let status = std::sync::atomic::AtomicI32::new(0);
    let arena = Shared(arena);
    team::run(pieces, &|part| {
        let (lo, hi) = (part * extent / pieces, (part + 1) * extent / pieces);
        // SAFETY: the parts write disjoint outer indices of the kernel's output.
        let s = piece(arena.get(), lo as i64, hi as i64);
        if s != 0 {
            status.store(s, std::sync::atomic::Ordering::Relaxed);
        }
    });
    status.into_inner()
}

/// A split loop body's function: `fn(arena, steps, part) -> status`.
pub type PartBody = unsafe extern "C" fn(*mut u8, i64, i64) -> i32;

/// Runs a split loop body: part p of `parts` on block p of the samples, all `steps` steps,
/// the parts shared between threads (see `team`). Returns the first non-zero status of a part.
///
/// # Safety
/// `body` must be a compiled split body over this arena.
pub unsafe extern "C" fn parts(body: PartBody, arena: *mut u8, steps: i64, parts: i64) -> i32 {
    let status = std::sync::atomic::AtomicI32::new(0);
    let arena = Shared(arena);
    team::run(parts.max(1) as usize, &|part| {
        // SAFETY: the parts write disjoint blocks and private copies (see `plan`).
        let s = body(arena.get(), steps, part as i64);
        if s != 0 {
            status.store(s, std::sync::atomic::Ordering::Relaxed);
        }
    });
    status.into_inner()
}

/// Scalar functions with no inline approximation, called once per lane: in f32, the
/// trigonometric functions and powers; in f64, every transcendental function, computed as the
/// interpreter computes it.
pub extern "C" fn unary<T: Float, const OP: u8>(x: T) -> T {
    interp::unary_fn(UNARY_OPS[OP as usize])(x)
}

pub extern "C" fn powf<T: Float>(x: T, p: T) -> T {
    x.powf(p)
}

/// The runtime functions whose element type is the code's dtype, instantiated for `T`.
pub struct FloatCalls {
    pub matmul: *const u8,
    pub conv: *const u8,
    pub powf: *const u8,
    /// `unary` for each of [`UNARY_OPS`].
    pub unary: [*const u8; 8],
}

impl FloatCalls {
    pub fn of<T: Float>() -> FloatCalls {
        FloatCalls {
            matmul: matmul::<T> as *const u8,
            conv: conv::<T> as *const u8,
            powf: powf::<T> as *const u8,
            unary: [
                unary::<T, 0> as *const u8,
                unary::<T, 1> as *const u8,
                unary::<T, 2> as *const u8,
                unary::<T, 3> as *const u8,
                unary::<T, 4> as *const u8,
                unary::<T, 5> as *const u8,
                unary::<T, 6> as *const u8,
                unary::<T, 7> as *const u8,
            ],
        }
    }
}

/// The unary operations `unary` computes, by its `OP`.
pub const UNARY_OPS: [UnaryOp; 8] = [
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Tan,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Erf,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// `dst (m×n) [+]= lhs (m×k, with `lhs_strides`) · rhs (k×n, row-major)` on `threads`
    /// threads, `dst` row-major.
    #[allow(clippy::too_many_arguments)]
    fn product(
        (m, k, n): (usize, usize, usize),
        mut dst: Vec<f32>,
        lhs: &[f32],
        lhs_strides: (isize, isize),
        rhs: &[f32],
        accumulate: bool,
        threads: usize,
    ) -> Vec<f32> {
        assert_eq!((dst.len(), lhs.len(), rhs.len()), (m * n, m * k, k * n));
        // SAFETY: the strides the tests pass address only elements of the three vectors.
        unsafe {
            gemm_strided(
                (m, k, n),
                dst.as_mut_ptr(),
                (n as isize, 1),
                lhs.as_ptr(),
                lhs_strides,
                rhs.as_ptr(),
                (n as isize, 1),
                accumulate,
                threads,
            )
        };
        dst
    }

    /// The shared product equals the one-thread product for shapes split by rows and by
    /// columns, sides that are not multiples of the piece width, transposed operands and
    /// accumulation.
    #[test]
    fn shared_products_equal_one_thread_products() {
        let shapes = [(300, 64, 37), (37, 64, 300), (64, 784, 256), (129, 33, 131)];
        for (m, k, n) in shapes {
            let lhs: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
            let rhs: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
            for transposed in [false, true] {
                // lhs read as m×k, either row-major or as the transpose of a k×m matrix.
                let lhs_strides = if transposed {
                    (1, m as isize)
                } else {
                    (k as isize, 1)
                };
                for accumulate in [false, true] {
                    let product = |threads: usize| {
                        let dst = (0..m * n).map(|i| (i % 3) as f32).collect();
                        product((m, k, n), dst, &lhs, lhs_strides, &rhs, accumulate, threads)
                    };
                    assert_eq!(product(1), product(4), "{m}×{k}×{n}");
                }
            }
        }
    }

    /// Products whose inner dimension is split ([`LONG_INNER`]) give the same bits on one
    /// thread and on several, and the f64 reference's entries to rounding: a transposed left
    /// operand (a stacked weight gradient's), a narrow result, an odd inner length,
    /// accumulation.
    #[test]
    fn long_inner_products_do_not_depend_on_the_threads() {
        for (m, k, n) in [(24, 9001, 40), (5, 16384, 3), (33, 8192, 512)] {
            assert!(LONG_INNER.applies(m, k, n), "{m}×{k}×{n}");
            let lhs: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
                .collect();
            let rhs: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5) % 11) as f32 * 0.3 - 1.4)
                .collect();
            for accumulate in [false, true] {
                let initial = |i: usize| (i % 3) as f32 * 0.7;
                let product = |threads: usize| {
                    let dst = (0..m * n).map(initial).collect();
                    product(
                        (m, k, n),
                        dst,
                        &lhs,
                        (1, m as isize),
                        &rhs,
                        accumulate,
                        threads,
                    )
                };
                let alone = product(1);
                assert_eq!(alone, product(4), "{m}×{k}×{n}");
                for i in 0..m {
                    for j in 0..n {
                        let mut want = if accumulate {
                            initial(i * n + j) as f64
                        } else {
                            0.0
                        };
                        for kk in 0..k {
                            want += lhs[kk * m + i] as f64 * rhs[kk * n + j] as f64;
                        }
                        let got = alone[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{got} {want}"
                        );
                    }
                }
            }
        }
    }

    /// Products of at most 16 result columns (the AVX-512 kernel where the CPU has one) give
    /// the f64 reference's entries to rounding: row counts around the kernel's block of
    /// eight, a transposed left operand, a single column, accumulation.
    #[test]
    fn narrow_products_equal_the_reference() {
        let shapes = [
            (37, 256, 10),
            (8, 5, 16),
            (3, 7, 1),
            (64, 10, 13),
            (17, 1, 2),
        ];
        for (m, k, n) in shapes {
            let lhs: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7) % 13) as f32 * 0.25 - 1.5)
                .collect();
            let rhs: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5) % 11) as f32 * 0.5 - 2.5)
                .collect();
            for transposed in [false, true] {
                let (rs, cs) = if transposed {
                    (1, m as isize)
                } else {
                    (k as isize, 1)
                };
                let at = |i: usize, kk: usize| lhs[(i as isize * rs + kk as isize * cs) as usize];
                for accumulate in [false, true] {
                    let start = |i: usize| (i % 3) as f32;
                    let dst = (0..m * n).map(start).collect();
                    let dst = product((m, k, n), dst, &lhs, (rs, cs), &rhs, accumulate, 1);
                    for i in 0..m {
                        for j in 0..n {
                            let mut want = if accumulate {
                                f64::from(start(i * n + j))
                            } else {
                                0.0
                            };
                            for kk in 0..k {
                                want += f64::from(at(i, kk)) * f64::from(rhs[kk * n + j]);
                            }
                            let got = f64::from(dst[i * n + j]);
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{m}x{k}x{n} transposed={transposed} accumulate={accumulate} \
                                 [{i}, {j}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Sums a step's exchanged values over the processes of a data-parallel job, in place (see
/// [`Stage::Exchange`](super::Stage::Exchange)). The JIT knows nothing of how: the caller
/// hands in the reduction. It may append to the buffer (and must leave the values it was
/// given, summed, in front).
#[derive(Clone)]
pub struct Exchange(pub std::sync::Arc<Sum>);

/// A sum over processes, in place.
pub type Sum = dyn Fn(&mut Vec<f32>) + Send + Sync;

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exchange")
    }
}

/// A [`Segment::Exchange`](super::codegen::Segment::Exchange): arena spans (offset, length)
/// gathered into one buffer, handed to the exchange in one call, and scattered back. The
/// buffer is kept between runs, so that a step allocates nothing.
pub struct ExchangeDesc {
    pub spans: Vec<(usize, usize)>,
    pub exchange: Exchange,
    pub fused: std::sync::Mutex<Vec<f32>>,
}

/// Runs an [`ExchangeDesc`] on the arena at `arena`.
///
/// # Safety
/// `desc` must point to a valid descriptor whose spans lie inside the arena.
pub unsafe extern "C" fn exchange(desc: *const ExchangeDesc, arena: *mut f32) -> i32 {
    let d = &*desc;
    let mut fused = d.fused.lock().unwrap_or_else(|e| e.into_inner());
    fused.clear();
    for &(at, len) in &d.spans {
        fused.extend_from_slice(std::slice::from_raw_parts(arena.add(at), len));
    }
    (d.exchange.0)(&mut fused);
    let mut from = 0;
    for &(at, len) in &d.spans {
        std::ptr::copy_nonoverlapping(fused.as_ptr().add(from), arena.add(at), len);
        from += len;
    }
    0
}
