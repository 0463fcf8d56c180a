//! What data-parallel training measures of a model without MPI: how a shard's loss is scaled so
//! that the processes' losses sum to the global batch's (`distributed::loss_scale`), and the
//! refusals. The training itself over MPI is tested by tests/mpi.rs (`--features mpi`).

use pcg::distributed::{loss_scale, scale_loss, shard_size};
use pcg::ir::Program;
use pcg::sema::{compile_source, CompileOptions};
use pcg::train::init::init_params;

/// A two-layer model whose loss is `loss`.
fn model(loss: &str) -> String {
    format!(
        "use nn
model m {{
    input  x: [B, 8]
    target y: [B, 3]
    param  w1: [8, 5] = normal(0.5)
    param  w2: [5, 3] = normal(0.5)
    let h = tanh(x @ w1)
    let out = h @ w2
    loss {loss}
}}"
    )
}

fn forward(text: &str, batch: usize) -> Program {
    let options = CompileOptions {
        batch: Some(batch),
        ..CompileOptions::default()
    };
    match compile_source("m.pcg", text, &options).1 {
        Ok(c) => c.forward,
        Err(e) => panic!("does not compile: {e:?}"),
    }
}

fn scale(loss: &str, ranks: usize) -> Result<f64, String> {
    let text = model(loss);
    let (shard, global) = (forward(&text, 4), forward(&text, 4 * ranks));
    loss_scale(&shard, &global, &init_params(&shard, 1), ranks, 7)
}

#[test]
fn a_mean_over_the_batch_is_divided_between_the_ranks() {
    assert_eq!(scale("mse(out, y)", 2), Ok(0.5));
    assert_eq!(scale("cross_entropy(out, y)", 4), Ok(0.25));
    assert_eq!(scale("mean(square(out - y))", 3), Ok(1.0 / 3.0));
}

#[test]
fn a_sum_over_the_batch_is_kept() {
    assert_eq!(scale("sum(square(out - y))", 2), Ok(1.0));
}

#[test]
fn a_mean_may_carry_a_weight_penalty() {
    // The mean of the shards' losses counts the penalty once, as the global loss does.
    assert_eq!(scale("mse(out, y) + 0.1 * sum(square(w1))", 2), Ok(0.5));
}

#[test]
fn a_sum_with_a_term_of_its_own_or_a_coupling_loss_is_refused() {
    let e = scale("sum(square(out - y)) + 0.1 * sum(square(w1))", 2).unwrap_err();
    assert!(
        e.contains("neither a mean nor a sum") && e.contains("weight_decay"),
        "{e}"
    );
    assert!(scale("square(mse(out, y))", 2).is_err());
}

#[test]
fn the_scaled_shard_losses_sum_to_the_global_loss() {
    let text = model("mse(out, y)");
    let (mut shard, global) = (forward(&text, 4), forward(&text, 8));
    let params = init_params(&shard, 3);
    let s = loss_scale(&shard, &global, &params, 2, 0).unwrap();
    scale_loss(&mut shard, s);
    let batch = pcg::train::batch::random_batch(&global, 11);
    let loss = |p: &Program, rows: std::ops::Range<usize>| -> f64 {
        let mut env = params.clone();
        for (name, x) in &batch {
            let part = x
                .slice_axis(ndarray::Axis(0), rows.clone().into())
                .to_owned();
            env.insert(name.clone(), part);
        }
        let out = pcg::interp::eval_outputs(p, &env).unwrap();
        f64::from(out["loss"].iter().next().copied().unwrap())
    };
    let whole = loss(&global, 0..8);
    let parts = loss(&shard, 0..4) + loss(&shard, 4..8);
    assert!(
        (whole - parts).abs() <= 1e-6 * whole.abs(),
        "{whole} vs {parts}"
    );
}

#[test]
fn shards_are_even() {
    assert_eq!(shard_size(64, 4), Ok(16));
    assert!(shard_size(64, 3).is_err());
}
