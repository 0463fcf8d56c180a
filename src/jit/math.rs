//! Inline approximations of the transcendental functions, emitted as Cranelift IR for one
//! lane (`f32`) or four (`f32x4`).
//!
//! Cranelift has no `exp` or `log` instruction. These are the Cephes single-precision
//! algorithms (range reduction, then a short polynomial), within a few ulp of libm over the
//! normal range; results that would be subnormal are flushed to zero. They are branch-free, so
//! the same code serves the SIMD main loop and its scalar tail, and they are several times
//! faster than a call per lane into Rust's libm.

// The coefficients are quoted as Cephes publishes them.
#![allow(clippy::excessive_precision)]

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, Endianness, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// The value types of one evaluation: scalar or four lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lanes {
    pub float: Type,
    pub int: Type,
    pub width: usize,
}

impl Lanes {
    pub const SCALAR: Lanes = Lanes {
        float: types::F32,
        int: types::I32,
        width: 1,
    };
    pub const VECTOR: Lanes = Lanes {
        float: types::F32X4,
        int: types::I32X4,
        width: 4,
    };

    fn is_vector(self) -> bool {
        self.width > 1
    }
}

fn lane_flags() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

/// A float constant in every lane.
pub fn float(b: &mut FunctionBuilder, lanes: Lanes, c: f32) -> Value {
    let s = b.ins().f32const(c);
    if lanes.is_vector() {
        b.ins().splat(lanes.float, s)
    } else {
        s
    }
}

fn int(b: &mut FunctionBuilder, lanes: Lanes, c: i32) -> Value {
    let s = b.ins().iconst(types::I32, i64::from(c));
    if lanes.is_vector() {
        b.ins().splat(lanes.int, s)
    } else {
        s
    }
}

fn to_bits(b: &mut FunctionBuilder, lanes: Lanes, x: Value) -> Value {
    b.ins().bitcast(lanes.int, lane_flags(), x)
}

fn from_bits(b: &mut FunctionBuilder, lanes: Lanes, x: Value) -> Value {
    b.ins().bitcast(lanes.float, lane_flags(), x)
}

/// `cond ? x : y` lane by lane, where `cond` is the result of an `fcmp` on these lanes.
pub fn select(b: &mut FunctionBuilder, lanes: Lanes, cond: Value, x: Value, y: Value) -> Value {
    if lanes.is_vector() {
        let mask = b.ins().bitcast(lanes.float, lane_flags(), cond);
        b.ins().bitselect(mask, x, y)
    } else {
        b.ins().select(cond, x, y)
    }
}

/// `a <cc> b ? x : y` lane by lane.
#[allow(clippy::too_many_arguments)]
pub fn select_cmp(
    b: &mut FunctionBuilder,
    lanes: Lanes,
    cc: FloatCC,
    lhs: Value,
    rhs: Value,
    x: Value,
    y: Value,
) -> Value {
    let cond = b.ins().fcmp(cc, lhs, rhs);
    select(b, lanes, cond, x, y)
}

/// Horner's rule: `((c0·x + c1)·x + c2)·x + ...`.
fn polynomial(b: &mut FunctionBuilder, lanes: Lanes, x: Value, coefficients: &[f32]) -> Value {
    let mut acc = float(b, lanes, coefficients[0]);
    for &c in &coefficients[1..] {
        let scaled = b.ins().fmul(acc, x);
        let c = float(b, lanes, c);
        acc = b.ins().fadd(scaled, c);
    }
    acc
}

/// `max(a, b)` as Rust's `f32::max`: a NaN operand yields the other.
pub fn max(b: &mut FunctionBuilder, lanes: Lanes, x: Value, y: Value) -> Value {
    let greater = b.ins().fcmp(FloatCC::GreaterThan, x, y);
    let y_nan = b.ins().fcmp(FloatCC::Unordered, y, y);
    let take_x = b.ins().bor(greater, y_nan);
    select(b, lanes, take_x, x, y)
}

/// e^x: x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by a degree-6 polynomial, 2^n from its bits.
pub fn exp(b: &mut FunctionBuilder, lanes: Lanes, x: Value) -> Value {
    const HI: f32 = 88.722_84; // ln(f32::MAX)
    const LO: f32 = -87.0; // below this the result is subnormal: flushed to 0
    let hi = float(b, lanes, HI);
    let lo = float(b, lanes, LO);
    let clamped = b.ins().fmin(x, hi);
    let clamped = b.ins().fmax(clamped, lo);
    // n = floor(x·log2(e) + 1/2)
    let log2e = float(b, lanes, std::f32::consts::LOG2_E);
    let half = float(b, lanes, 0.5);
    let t = b.ins().fmul(clamped, log2e);
    let t = b.ins().fadd(t, half);
    let n = b.ins().floor(t);
    // r = x − n·ln 2, with ln 2 split in two so that n·C1 is exact.
    let c1 = float(b, lanes, 0.693_359_4);
    let c2 = float(b, lanes, -2.121_944_4e-4);
    let nc1 = b.ins().fmul(n, c1);
    let r = b.ins().fsub(clamped, nc1);
    let nc2 = b.ins().fmul(n, c2);
    let r = b.ins().fsub(r, nc2);
    // e^r = 1 + r + r²·P(r)
    let p = polynomial(
        b,
        lanes,
        r,
        &[
            1.987_569_1e-4,
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5.000_000_1e-1,
        ],
    );
    let r2 = b.ins().fmul(r, r);
    let p = b.ins().fmul(p, r2);
    let p = b.ins().fadd(p, r);
    let one = float(b, lanes, 1.0);
    let y = b.ins().fadd(p, one);
    // y·2^n as y·2^(n−1)·2, so that n = 128 (just below overflow) stays representable.
    let n = b.ins().fcvt_to_sint_sat(lanes.int, n);
    let bias = int(b, lanes, 126);
    let biased = b.ins().iadd(n, bias);
    let bits = b.ins().ishl_imm_u(biased, 23);
    let scale = from_bits(b, lanes, bits);
    let y = b.ins().fmul(y, scale);
    let two = float(b, lanes, 2.0);
    let y = b.ins().fmul(y, two);
    let inf = float(b, lanes, f32::INFINITY);
    let zero = float(b, lanes, 0.0);
    let y = select_cmp(b, lanes, FloatCC::GreaterThan, x, hi, inf, y);
    select_cmp(b, lanes, FloatCC::LessThan, x, lo, zero, y)
}

/// ln x: x = m·2^e with m in [√½, √2), ln m by a degree-9 polynomial in m − 1.
pub fn log(b: &mut FunctionBuilder, lanes: Lanes, x: Value) -> Value {
    let bits = to_bits(b, lanes, x);
    // The exponent of x as a float in [0.5, 1): e = biased exponent − 126.
    let exponent = b.ins().ushr_imm_u(bits, 23);
    let bias = int(b, lanes, 126);
    let exponent = b.ins().isub(exponent, bias);
    let e = b.ins().fcvt_from_sint(lanes.float, exponent);
    let mantissa_mask = int(b, lanes, 0x007f_ffff);
    let half_bits = int(b, lanes, 0x3f00_0000);
    let m = b.ins().band(bits, mantissa_mask);
    let m = b.ins().bor(m, half_bits);
    let m = from_bits(b, lanes, m);
    // Below √½, use 2m and e − 1 so that m − 1 is small.
    let sqrt_half = float(b, lanes, std::f32::consts::FRAC_1_SQRT_2);
    let one = float(b, lanes, 1.0);
    let zero = float(b, lanes, 0.0);
    let low = b.ins().fcmp(FloatCC::LessThan, m, sqrt_half);
    let borrow = select(b, lanes, low, one, zero);
    let e = b.ins().fsub(e, borrow);
    let doubled = b.ins().fadd(m, m);
    let m = select(b, lanes, low, doubled, m);
    let m = b.ins().fsub(m, one);
    let z = b.ins().fmul(m, m);
    let p = polynomial(
        b,
        lanes,
        m,
        &[
            7.037_683_6e-2,
            -1.151_461e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_4e-1,
            -2.499_999_4e-1,
            3.333_333e-1,
        ],
    );
    let y = b.ins().fmul(p, m);
    let y = b.ins().fmul(y, z);
    let c2 = float(b, lanes, -2.121_944_4e-4);
    let ec2 = b.ins().fmul(e, c2);
    let y = b.ins().fadd(y, ec2);
    let half = float(b, lanes, 0.5);
    let hz = b.ins().fmul(z, half);
    let y = b.ins().fsub(y, hz);
    let r = b.ins().fadd(m, y);
    let c1 = float(b, lanes, 0.693_359_4);
    let ec1 = b.ins().fmul(e, c1);
    let r = b.ins().fadd(r, ec1);
    // ln 0 = −∞, ln ∞ = ∞, ln of a negative number or NaN = NaN.
    let inf = float(b, lanes, f32::INFINITY);
    let neg_inf = float(b, lanes, f32::NEG_INFINITY);
    let nan = float(b, lanes, f32::NAN);
    let r = select_cmp(b, lanes, FloatCC::Equal, x, inf, inf, r);
    let r = select_cmp(b, lanes, FloatCC::Equal, x, zero, neg_inf, r);
    select_cmp(b, lanes, FloatCC::UnorderedOrLessThan, x, zero, nan, r)
}

/// tanh x: an odd polynomial for |x| < 0.625, else 1 − 2/(e^{2|x|} + 1) with x's sign.
pub fn tanh(b: &mut FunctionBuilder, lanes: Lanes, x: Value) -> Value {
    let z = b.ins().fmul(x, x);
    let p = polynomial(
        b,
        lanes,
        z,
        &[
            -5.704_988_7e-3,
            2.063_908_9e-2,
            -5.373_971_6e-2,
            1.333_144_2e-1,
            -3.333_328_2e-1,
        ],
    );
    let p = b.ins().fmul(p, z);
    let p = b.ins().fmul(p, x);
    let small = b.ins().fadd(p, x);
    // |x| ≥ 9 rounds to ±1; clamping keeps e^{2|x|} finite.
    let ax = b.ins().fabs(x);
    let nine = float(b, lanes, 9.0);
    let ax_clamped = b.ins().fmin(ax, nine);
    let two_ax = b.ins().fadd(ax_clamped, ax_clamped);
    let e = exp(b, lanes, two_ax);
    let one = float(b, lanes, 1.0);
    let two = float(b, lanes, 2.0);
    let denominator = b.ins().fadd(e, one);
    let q = b.ins().fdiv(two, denominator);
    let large = b.ins().fsub(one, q);
    let negated = b.ins().fneg(large);
    let zero = float(b, lanes, 0.0);
    let large = select_cmp(b, lanes, FloatCC::LessThan, x, zero, negated, large);
    let bound = float(b, lanes, 0.625);
    select_cmp(b, lanes, FloatCC::LessThan, ax, bound, small, large)
}

/// σ(x) = 1 / (1 + e^−x); e^−x overflowing to ∞ gives exactly 0.
pub fn sigmoid(b: &mut FunctionBuilder, lanes: Lanes, x: Value) -> Value {
    let neg = b.ins().fneg(x);
    let e = exp(b, lanes, neg);
    let one = float(b, lanes, 1.0);
    let denominator = b.ins().fadd(e, one);
    b.ins().fdiv(one, denominator)
}
