//! Parameter initialisation from the model's initialisers, seeded.
//!
//! Each parameter draws from its own random stream, derived from the seed and the parameter's
//! name, so adding a parameter to a model does not change the initial values of the others.

use crate::ir::{Init, LeafKind, Program, Shape};
use crate::npz::Arrays;
use ndarray::ArrayD;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

/// (fan in, fan out) of a weight: `[in, out]` for matrices, `[O, C, KH, KW]` for convolutions.
pub fn fans(shape: &Shape) -> (usize, usize) {
    let d = shape.dims();
    match d.len() {
        0 => (1, 1),
        1 => (d[0], d[0]),
        2 => (d[0], d[1]),
        _ => {
            let receptive: usize = d[2..].iter().product();
            (d[1] * receptive, d[0] * receptive)
        }
    }
}

/// A random stream for one named quantity under one seed.
pub fn stream(seed: u64, name: &str) -> ChaCha8Rng {
    // FNV-1a of the name, mixed with the seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(seed ^ h)
}

/// Draws one tensor from an initialiser.
pub fn sample(init: &Init, shape: &Shape, rng: &mut ChaCha8Rng) -> ArrayD<f32> {
    let dims = ndarray::IxDyn(shape.dims());
    let (fan_in, fan_out) = fans(shape);
    let mut draw = |dist: &dyn Fn(&mut ChaCha8Rng) -> f64| {
        ArrayD::from_shape_simple_fn(dims.clone(), || dist(rng) as f32)
    };
    match init {
        Init::Zeros => ArrayD::zeros(dims),
        Init::Ones => ArrayD::ones(dims),
        Init::Constant(c) => ArrayD::from_elem(dims, *c as f32),
        Init::Normal { mean, std } => match Normal::new(*mean, *std) {
            Ok(n) => draw(&|r| n.sample(r)),
            Err(_) => ArrayD::from_elem(dims, *mean as f32),
        },
        Init::Uniform { low, high } => match Uniform::new(*low, *high) {
            Ok(u) => draw(&|r| u.sample(r)),
            Err(_) => ArrayD::from_elem(dims, *low as f32),
        },
        // Glorot uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
        Init::Xavier => {
            let a = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
            match Uniform::new(-a, a) {
                Ok(u) => draw(&|r| u.sample(r)),
                Err(_) => ArrayD::zeros(dims),
            }
        }
        // He normal: N(0, 2 / fan_in)
        Init::He => match Normal::new(0.0, (2.0 / fan_in.max(1) as f64).sqrt()) {
            Ok(n) => draw(&|r| n.sample(r)),
            Err(_) => ArrayD::zeros(dims),
        },
        // U(-a, a), a = scale / sqrt(fan_in)
        Init::FanInUniform { scale } => {
            let a = scale.abs() / (fan_in.max(1) as f64).sqrt();
            match Uniform::new_inclusive(-a, a) {
                Ok(u) => draw(&|r| u.sample(r)),
                Err(_) => ArrayD::zeros(dims),
            }
        }
        Init::Orthogonal { gain } => orthogonal(shape, *gain, rng),
        // Bernoulli(1 − p) / (1 − p)
        Init::Dropout { p } => {
            let keep = 1.0 - p;
            draw(&|r| {
                if rand::Rng::random::<f64>(r) < keep {
                    1.0 / keep
                } else {
                    0.0
                }
            })
        }
    }
}

/// A (semi-)orthogonal tensor times `gain`, as PyTorch's `orthogonal_` makes it: the tensor is
/// a matrix of `rows` (its first axis) by `cols` (the rest); a standard normal matrix of
/// max(rows, cols) by min(rows, cols) is orthonormalised column by column (Gram–Schmidt,
/// twice for accuracy), giving orthonormal columns when rows >= cols and, transposed,
/// orthonormal rows otherwise. Shapes of rank below 2 are refused by the compiler.
fn orthogonal(shape: &Shape, gain: f64, rng: &mut ChaCha8Rng) -> ArrayD<f32> {
    let dims = shape.dims();
    let rows = dims.first().copied().unwrap_or(1);
    let cols: usize = dims.iter().skip(1).product();
    let (long, short) = (rows.max(cols), rows.min(cols));
    let normal = Normal::new(0.0, 1.0).expect("a unit normal");
    // `basis[j]`: column j of the long × short matrix.
    let mut basis: Vec<Vec<f64>> = (0..short)
        .map(|_| (0..long).map(|_| normal.sample(rng)).collect())
        .collect();
    for j in 0..short {
        let (done, rest) = basis.split_at_mut(j);
        let column = &mut rest[0];
        for _ in 0..2 {
            for earlier in done.iter() {
                let dot: f64 = earlier.iter().zip(column.iter()).map(|(a, b)| a * b).sum();
                for (x, e) in column.iter_mut().zip(earlier) {
                    *x -= dot * e;
                }
            }
        }
        let norm = column.iter().map(|x| x * x).sum::<f64>().sqrt();
        for x in column.iter_mut() {
            *x /= norm.max(f64::MIN_POSITIVE);
        }
    }
    let mut out = ArrayD::zeros(ndarray::IxDyn(dims));
    let flat = out.as_slice_mut().expect("fresh arrays are contiguous");
    for r in 0..rows {
        for c in 0..cols {
            let x = if rows >= cols {
                basis[c][r]
            } else {
                basis[r][c]
            };
            flat[r * cols + c] = (gain * x) as f32;
        }
    }
    out
}

/// Initial values of every parameter of a program.
pub fn init_params(program: &Program, seed: u64) -> Arrays {
    program
        .leaves(LeafKind::Param)
        .into_iter()
        .map(|(id, name)| {
            let init = program.inits.get(name).cloned().unwrap_or(Init::Zeros);
            let mut rng = stream(seed, name);
            (name.to_string(), sample(&init, program.shape(id), &mut rng))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// W Wᵀ (rows <= cols) or Wᵀ W (rows >= cols) of a matrix of `rows` by `cols`.
    fn gram(w: &ArrayD<f32>, rows: usize, cols: usize) -> Vec<Vec<f64>> {
        let at = |r: usize, c: usize| f64::from(w.as_slice().unwrap()[r * cols + c]);
        let n = rows.min(cols);
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        if rows >= cols {
                            (0..rows).map(|r| at(r, i) * at(r, j)).sum()
                        } else {
                            (0..cols).map(|c| at(i, c) * at(j, c)).sum()
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn orthogonal_matrices_have_orthonormal_rows_or_columns() {
        for (dims, gain) in [
            (vec![8, 5], 1.0),
            (vec![5, 8], 2.0),
            (vec![6, 6], 0.5),
            (vec![4, 2, 3], 1.0),
        ] {
            let shape = Shape(dims.clone());
            let w = sample(&Init::Orthogonal { gain }, &shape, &mut stream(3, "w"));
            let cols: usize = dims[1..].iter().product();
            let g = gram(&w, dims[0], cols);
            for (i, row) in g.iter().enumerate() {
                for (j, &x) in row.iter().enumerate() {
                    let want = if i == j { gain * gain } else { 0.0 };
                    assert!((x - want).abs() < 1e-5, "{dims:?}: [{i}][{j}] = {x}");
                }
            }
        }
    }

    #[test]
    fn fan_in_uniform_stays_within_its_bound_and_fills_it() {
        let shape = Shape(vec![50, 40]);
        let w = sample(
            &Init::FanInUniform { scale: 1.0 },
            &shape,
            &mut stream(1, "w"),
        );
        let bound = 1.0 / 50f32.sqrt();
        let largest = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            largest <= bound && largest > 0.95 * bound,
            "{largest} vs {bound}"
        );
        // A convolution's fan in is its channels times the window.
        let k = sample(
            &Init::FanInUniform { scale: 2.0 },
            &Shape(vec![4, 3, 5, 5]),
            &mut stream(1, "k"),
        );
        let bound = 2.0 / 75f32.sqrt();
        assert!(k.iter().all(|x| x.abs() <= bound));
    }
}
