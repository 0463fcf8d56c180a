//! Timing of one predictive-coding training step (relax, then learn) on the benchmark model,
//! JIT against the interpreter. Ignored by default; run with
//! `cargo test --release --test jit_bench -- --ignored --nocapture`.

use pcg::interp::{self, Bindings};
use pcg::jit::{JitLoop, JitOptions, JitProgram};
use pcg::sema::{self, CompileOptions};
use pcg::train::{batch, init};
use std::path::Path;
use std::time::Instant;

/// The median time of one call, in milliseconds (the machine is shared: the median resists
/// other processes' bursts better than the mean).
fn per_step(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

#[test]
#[ignore]
fn pc_training_step_mlp_fmnist() {
    let options = CompileOptions {
        batch: Some(64),
        ..Default::default()
    };
    let (_, compiled) = sema::compile_file(Path::new("examples/mlp_fmnist.pcg"), &options);
    let compiled = compiled.expect("compiles");
    let inference = compiled.train.expect("train block").inference;
    let programs = pcg::pc::transform(&compiled.forward, &inference).expect("transforms");
    let steps = programs.relax.steps;
    let mut leaves: Bindings<f32> = init::init_params(&compiled.forward, 0);
    leaves.extend(batch::random_batch(&compiled.forward, 0));

    let interp_ms = per_step(15, || {
        let state = interp::run_loop(&programs.relax, &leaves, steps, |_, _| true).expect("relax");
        let mut env = leaves.clone();
        env.extend(state);
        interp::eval_outputs(&programs.learn, &env).expect("learn");
    });
    for threads in [1, 2] {
        let jit_options = JitOptions {
            threads,
            ..JitOptions::default()
        };
        let compile = Instant::now();
        let mut relax = JitLoop::compile(&programs.relax, &jit_options).expect("compiles");
        let mut learn = JitProgram::compile(&programs.learn, &jit_options).expect("compiles");
        let compile_ms = compile.elapsed().as_secs_f64() * 1e3;
        let relax_ms = per_step(50, || {
            relax.run(&leaves, steps).expect("relax");
        });
        let prologue_ms = per_step(50, || {
            relax.run(&leaves, 0).expect("relax");
        });
        let mut env = leaves.clone();
        env.extend(relax.run(&leaves, steps).expect("relax"));
        let learn_ms = per_step(50, || {
            learn.run(&env).expect("learn");
        });
        println!("  prologue {prologue_ms:.2} ms, learn {learn_ms:.2} ms");
        let jit_ms = per_step(50, || {
            let state = relax.run(&leaves, steps).expect("relax");
            learn.run_layered(&[&state, &leaves]).expect("learn");
        });
        println!(
            "mlp_fmnist batch 64, {steps} steps, threads {threads}: interpreter {interp_ms:.2} ms, \
             JIT {jit_ms:.2} ms (relax {relax_ms:.2} ms), speedup {:.1}x, compile {compile_ms:.0} ms, \
             arenas {} + {} KiB",
            interp_ms / jit_ms,
            relax.plan().peak_bytes() / 1024,
            learn.plan().peak_bytes() / 1024,
        );
    }
}
