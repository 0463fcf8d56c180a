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
    }
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
