//! Transcendental maps sixteen lanes at a time (AVX-512), for the rows the generated code hands
//! over.
//!
//! Cranelift's vectors are four lanes wide on x86-64, and an exponential costs some forty
//! instructions a vector: a recurrent network's gate maps (σ and tanh of every unit, every
//! iteration) spent more time there than in their products. A map that is nothing but one of
//! these functions of one contiguous row — `σ(z[.., i])`, `exp` of a softmax's shifted logits —
//! calls [`unary_row`] instead of running its own loop. The algorithms, coefficients and order
//! of operations are those of `math` (with fused multiply-adds, which every AVX-512 machine
//! has), so each lane's result is bit for bit what the four-lane code computes: which code
//! path a kernel takes never changes a result.

use crate::ir::UnaryOp;

/// The functions [`unary_row`] computes, by the code the generated call passes.
pub const OPS: [UnaryOp; 3] = [UnaryOp::Exp, UnaryOp::Sigmoid, UnaryOp::Tanh];

/// Rows shorter than this stay in the generated code (a call costs a few nanoseconds).
pub const MIN_ROW: usize = 16;

/// Whether this machine runs the sixteen-lane maps.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[i] = OPS[op](src[i])` for `i < n`; `dst` may be `src`.
///
/// # Safety
/// `src` and `dst` must hold `n` elements, and [`available`] must be true.
pub unsafe extern "C" fn unary_row(op: i64, dst: *mut f32, src: *const f32, n: i64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as the caller promises.
    unsafe {
        avx512::row(op, dst, src, n.max(0) as usize)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (op, dst, src, n);
        unreachable!("only called where available() holds")
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::jit::math::{
        EXP_HI, EXP_LO, EXP_P, LN2_HI, LN2_LO, ROUNDER, TANH_BOUND, TANH_P, TANH_Q, TANH_TINY,
    };
    use std::arch::x86_64::*;

    /// `x` limited to `[lo, hi]`; NaN stays NaN.
    #[target_feature(enable = "avx512f")]
    fn clamp(x: __m512, lo: f32, hi: f32) -> __m512 {
        let hi = _mm512_set1_ps(hi);
        let lo = _mm512_set1_ps(lo);
        let below_hi = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, hi), x, hi);
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(below_hi, lo), below_hi, lo)
    }

    /// Horner's rule with fused multiply-adds.
    #[target_feature(enable = "avx512f")]
    fn polynomial(x: __m512, coefficients: &[f32]) -> __m512 {
        let mut acc = _mm512_set1_ps(coefficients[0]);
        for &c in &coefficients[1..] {
            acc = _mm512_fmadd_ps(acc, x, _mm512_set1_ps(c));
        }
        acc
    }

    /// `math::exp`, sixteen lanes.
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let clamped = clamp(x, EXP_LO, EXP_HI);
        let rounder = _mm512_set1_ps(ROUNDER);
        let shifted = _mm512_fmadd_ps(clamped, _mm512_set1_ps(std::f32::consts::LOG2_E), rounder);
        let n = _mm512_sub_ps(shifted, rounder);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), clamped);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
        let p = polynomial(r, &EXP_P);
        let p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
        let y = _mm512_add_ps(p, _mm512_set1_ps(1.0));
        let bias = _mm512_set1_epi32(126i32.wrapping_sub(ROUNDER.to_bits() as i32));
        let biased = _mm512_add_epi32(_mm512_castps_si512(shifted), bias);
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased));
        let y = _mm512_mul_ps(y, scale);
        let y = _mm512_add_ps(y, y);
        let over = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(EXP_HI));
        let y = _mm512_mask_blend_ps(over, y, _mm512_set1_ps(f32::INFINITY));
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_LO));
        _mm512_mask_blend_ps(under, y, _mm512_setzero_ps())
    }

    /// `math::sigmoid`, sixteen lanes.
    #[target_feature(enable = "avx512f")]
    fn sigmoid(x: __m512) -> __m512 {
        let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
        let one = _mm512_set1_ps(1.0);
        _mm512_div_ps(one, _mm512_add_ps(e, one))
    }

    /// `math::tanh`, sixteen lanes.
    #[target_feature(enable = "avx512f")]
    fn tanh(x: __m512) -> __m512 {
        let clamped = clamp(x, -TANH_BOUND, TANH_BOUND);
        let z = _mm512_mul_ps(clamped, clamped);
        let p = _mm512_mul_ps(polynomial(z, &TANH_P), clamped);
        let ratio = _mm512_div_ps(p, polynomial(z, &TANH_Q));
        let tiny = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(x), _mm512_set1_ps(TANH_TINY));
        _mm512_mask_blend_ps(tiny, ratio, x)
    }

    #[target_feature(enable = "avx512f")]
    fn apply(op: i64, x: __m512) -> __m512 {
        match op {
            0 => exp(x),
            1 => sigmoid(x),
            _ => tanh(x),
        }
    }

    /// # Safety
    /// `src` and `dst` hold `n` elements; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row(op: i64, dst: *mut f32, src: *const f32, n: usize) {
        let mut i = 0;
        // SAFETY: every access is below `n`; the tail's are masked.
        unsafe {
            while i + 16 <= n {
                let x = _mm512_loadu_ps(src.add(i));
                _mm512_storeu_ps(dst.add(i), apply(op, x));
                i += 16;
            }
            if i < n {
                let mask: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
                let x = _mm512_maskz_loadu_ps(mask, src.add(i));
                _mm512_mask_storeu_ps(dst.add(i), mask, apply(op, x));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sixteen-lane functions against the interpreter's (libm), at ordinary and special
    /// values, every row length around a vector's; the in-place form too.
    #[test]
    fn rows_match_libm_and_keep_special_values() {
        if !available() {
            return;
        }
        let mut xs: Vec<f32> = (-400..400).map(|i| i as f32 * 0.05).collect();
        xs.extend([
            0.0,
            -0.0,
            1e-5,
            -3e-4,
            88.0,
            89.0,
            -87.5,
            -100.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        for (code, &op) in OPS.iter().enumerate() {
            let f = crate::interp::unary_fn::<f32>(op);
            for n in [1, 15, 16, 17, 33, xs.len()] {
                let mut out = vec![0.0f32; n];
                // SAFETY: both hold n elements; available() was checked.
                unsafe { unary_row(code as i64, out.as_mut_ptr(), xs.as_ptr(), n as i64) };
                for (&x, &y) in xs.iter().zip(&out) {
                    let want = f(x);
                    let close = (y.is_nan() && want.is_nan())
                        || y == want
                        || (y - want).abs() <= 2e-6 * want.abs() + 1e-37;
                    assert!(close, "{op:?}({x}) = {y}, libm says {want}");
                }
            }
            let mut in_place = xs.clone();
            let ptr = in_place.as_mut_ptr();
            // SAFETY: one buffer of len elements, read and written in place.
            unsafe { unary_row(code as i64, ptr, ptr, xs.len() as i64) };
            let mut apart = vec![0.0f32; xs.len()];
            // SAFETY: as above, two buffers.
            unsafe {
                unary_row(
                    code as i64,
                    apart.as_mut_ptr(),
                    xs.as_ptr(),
                    xs.len() as i64,
                )
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&in_place), bits(&apart), "{op:?} in place");
        }
    }
}
