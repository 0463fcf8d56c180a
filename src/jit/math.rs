//! Inline approximations of the transcendental functions, emitted as Cranelift IR for one
//! lane (`f32`) or four (`f32x4`).
//!
//! Cranelift has no `exp` or `log` instruction. `exp` and `log` are the Cephes single-precision
//! algorithms (range reduction, then a short polynomial); `tanh` is a rational approximation
//! (Eigen's: odd degree 13 over even degree 6, on a clamped argument) that needs neither
//! `exp` nor a branch. All are within a few ulp of libm over the normal range (tested: relative
//! error below 1e-6); results that would be subnormal are flushed to zero. They are
//! branch-free, so the same code serves the SIMD main loop and its scalar tail, and they are
//! several times faster than a call per lane into Rust's libm. Polynomials use fused
//! multiply-adds where the target has them, and clamps are compare-and-select, which keeps a
//! NaN argument NaN (Cranelift's `fmin`/`fmax` do too, at three times the instructions).
//!
//! They serve f32 code only: f64 code calls the runtime for every transcendental function
//! (`runtime::unary`), to the accuracy of Rust's libm, as the interpreter computes them.

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
    /// One f64 lane: the f64 code is scalar, its transcendental functions calls into the
    /// runtime.
    pub const SCALAR_F64: Lanes = Lanes {
        float: types::F64,
        int: types::I64,
        width: 1,
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
    constant(b, lanes, f64::from(c))
}

/// A constant in every lane, rounded to the lanes' type.
pub fn constant(b: &mut FunctionBuilder, lanes: Lanes, c: f64) -> Value {
    let s = if lanes.float.lane_type() == types::F64 {
        b.ins().f64const(c)
    } else {
        b.ins().f32const(c as f32)
    };
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

/// e^x overflows above `ln(f32::MAX)`.
pub const EXP_HI: f32 = 88.722_84;
/// Below this e^x is subnormal: flushed to 0.
pub const EXP_LO: f32 = -87.0;
/// Adding 1.5·2^23 rounds to an integer, which then sits in the low mantissa bits.
pub const ROUNDER: f32 = 12_582_912.0;
/// ln 2 in two parts, the first with few enough bits that n·LN2_HI is exact.
pub const LN2_HI: f32 = 0.693_359_4;
pub const LN2_LO: f32 = -2.121_944_4e-4;
/// e^r = 1 + r + r²·P(r) on |r| ≤ ln 2 / 2 (Cephes).
pub const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5.000_000_1e-1,
];
/// tanh x = x·P(x²) / Q(x²) on |x| ≤ TANH_BOUND (Eigen's).
pub const TANH_BOUND: f32 = 7.905_311;
pub const TANH_P: [f32; 7] = [
    -2.760_768_5e-16,
    2.000_187_9e-13,
    -8.604_671_5e-11,
    5.122_297e-8,
    1.485_722_4e-5,
    6.372_619_3e-4,
    4.893_524_6e-3,
];
pub const TANH_Q: [f32; 4] = [1.198_258_4e-6, 1.185_347e-4, 2.268_434_6e-3, 4.893_525e-3];
/// Below this |x|, tanh x is x.
pub const TANH_TINY: f32 = 4e-4;

/// `a·x + c`: one fused multiply-add where the target has one (`fma`), else two roundings.
fn mul_add(b: &mut FunctionBuilder, fma: bool, a: Value, x: Value, c: Value) -> Value {
    if fma {
        b.ins().fma(a, x, c)
    } else {
        let product = b.ins().fmul(a, x);
        b.ins().fadd(product, c)
    }
}

/// Horner's rule: `((c0·x + c1)·x + c2)·x + ...`.
fn polynomial(
    b: &mut FunctionBuilder,
    lanes: Lanes,
    fma: bool,
    x: Value,
    coefficients: &[f32],
) -> Value {
    let mut acc = float(b, lanes, coefficients[0]);
    for &c in &coefficients[1..] {
        let c = float(b, lanes, c);
        acc = mul_add(b, fma, acc, x, c);
    }
    acc
}

/// `x` limited to `[lo, hi]`; NaN stays NaN.
fn clamp(b: &mut FunctionBuilder, lanes: Lanes, x: Value, lo: f32, hi: f32) -> Value {
    let hi = float(b, lanes, hi);
    let lo = float(b, lanes, lo);
    let below_hi = select_cmp(b, lanes, FloatCC::GreaterThan, x, hi, hi, x);
    select_cmp(b, lanes, FloatCC::LessThan, below_hi, lo, lo, below_hi)
}

/// `max(a, b)` as Rust's `f32::max`: a NaN operand yields the other.
pub fn max(b: &mut FunctionBuilder, lanes: Lanes, x: Value, y: Value) -> Value {
    let greater = b.ins().fcmp(FloatCC::GreaterThan, x, y);
    let y_nan = b.ins().fcmp(FloatCC::Unordered, y, y);
    let take_x = b.ins().bor(greater, y_nan);
    select(b, lanes, take_x, x, y)
}

/// e^x: x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by a degree-6 polynomial, 2^n from its bits.
pub fn exp(b: &mut FunctionBuilder, lanes: Lanes, fma: bool, x: Value) -> Value {
    let clamped = clamp(b, lanes, x, EXP_LO, EXP_HI);
    // n = round(x·log2(e)), as a float and as the bits of `shifted`.
    let log2e = float(b, lanes, std::f32::consts::LOG2_E);
    let rounder = float(b, lanes, ROUNDER);
    let shifted = mul_add(b, fma, clamped, log2e, rounder);
    let n = b.ins().fsub(shifted, rounder);
    // r = x − n·ln 2, with ln 2 split in two so that n·C1 is exact.
    let minus_c1 = float(b, lanes, -LN2_HI);
    let minus_c2 = float(b, lanes, -LN2_LO);
    let r = mul_add(b, fma, n, minus_c1, clamped);
    let r = mul_add(b, fma, n, minus_c2, r);
    // e^r = 1 + r + r²·P(r)
    let p = polynomial(b, lanes, fma, r, &EXP_P);
    let r2 = b.ins().fmul(r, r);
    let p = mul_add(b, fma, p, r2, r);
    let one = float(b, lanes, 1.0);
    let y = b.ins().fadd(p, one);
    // y·2^n as y·2^(n−1)·2, so that n = 128 (just below overflow) stays representable:
    // 2^(n−1) has the biased exponent n + 126, and n = bits(shifted) − bits(ROUNDER).
    let bits = to_bits(b, lanes, shifted);
    let bias = int(b, lanes, 126i32.wrapping_sub(ROUNDER.to_bits() as i32));
    let biased = b.ins().iadd(bits, bias);
    let bits = b.ins().ishl_imm_u(biased, 23);
    let scale = from_bits(b, lanes, bits);
    let y = b.ins().fmul(y, scale);
    let y = b.ins().fadd(y, y);
    let hi = float(b, lanes, EXP_HI);
    let lo = float(b, lanes, EXP_LO);
    let inf = float(b, lanes, f32::INFINITY);
    let zero = float(b, lanes, 0.0);
    let y = select_cmp(b, lanes, FloatCC::GreaterThan, x, hi, inf, y);
    select_cmp(b, lanes, FloatCC::LessThan, x, lo, zero, y)
}

/// ln x: x = m·2^e with m in [√½, √2), ln m by a degree-9 polynomial in m − 1.
pub fn log(b: &mut FunctionBuilder, lanes: Lanes, fma: bool, x: Value) -> Value {
    // A subnormal x is first scaled by 2^23 into the normal range.
    let min_normal = float(b, lanes, f32::MIN_POSITIVE);
    let subnormal = b.ins().fcmp(FloatCC::LessThan, x, min_normal);
    let two_23 = float(b, lanes, 8_388_608.0);
    let scaled = b.ins().fmul(x, two_23);
    let normal = select(b, lanes, subnormal, scaled, x);
    let bits = to_bits(b, lanes, normal);
    // The exponent of x as a float in [0.5, 1): e = biased exponent − 126 (− 23 if scaled).
    let exponent = b.ins().ushr_imm_u(bits, 23);
    let bias = int(b, lanes, 126);
    let exponent = b.ins().isub(exponent, bias);
    let e = b.ins().fcvt_from_sint(lanes.float, exponent);
    let twenty_three = float(b, lanes, 23.0);
    let zero = float(b, lanes, 0.0);
    let unscale = select(b, lanes, subnormal, twenty_three, zero);
    let e = b.ins().fsub(e, unscale);
    let mantissa_mask = int(b, lanes, 0x007f_ffff);
    let half_bits = int(b, lanes, 0x3f00_0000);
    let m = b.ins().band(bits, mantissa_mask);
    let m = b.ins().bor(m, half_bits);
    let m = from_bits(b, lanes, m);
    // Below √½, use 2m and e − 1 so that m − 1 is small.
    let sqrt_half = float(b, lanes, std::f32::consts::FRAC_1_SQRT_2);
    let one = float(b, lanes, 1.0);
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
        fma,
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

/// tanh x = x·P(x²) / Q(x²) on x clamped to ±7.905311 (beyond which tanh rounds to ±1 within
/// a few ulp), and x itself where |x| < 4e-4.
pub fn tanh(b: &mut FunctionBuilder, lanes: Lanes, fma: bool, x: Value) -> Value {
    let clamped = clamp(b, lanes, x, -TANH_BOUND, TANH_BOUND);
    let z = b.ins().fmul(clamped, clamped);
    let p = polynomial(b, lanes, fma, z, &TANH_P);
    let p = b.ins().fmul(p, clamped);
    let q = polynomial(b, lanes, fma, z, &TANH_Q);
    let ratio = b.ins().fdiv(p, q);
    let ax = b.ins().fabs(x);
    let tiny = float(b, lanes, TANH_TINY);
    select_cmp(b, lanes, FloatCC::LessThan, ax, tiny, x, ratio)
}

/// σ(x) = 1 / (1 + e^−x); e^−x overflowing to ∞ gives exactly 0.
pub fn sigmoid(b: &mut FunctionBuilder, lanes: Lanes, fma: bool, x: Value) -> Value {
    let neg = b.ins().fneg(x);
    let e = exp(b, lanes, fma, neg);
    let one = float(b, lanes, 1.0);
    let denominator = b.ins().fadd(e, one);
    b.ins().fdiv(one, denominator)
}
