//! Whole-pipeline differential testing on random well-typed `.pcg` programs: source text
//! through the front end, autodiff, the PC transform and both backends.
//!
//! The generator writes models from a seed, and between them they call every builtin and every
//! stdlib function (`the_generator_covers_its_constructs` checks that against the builtin table
//! and the stdlib's sources): dense layers with several activations, shape-annotated functions,
//! `for` loops (1 to 40 iterations) that rebind one or two carried values, over a shared or a
//! stacked parameter (`p[i]`), slices of a sequence input by the loop index (`s[.., i + k]`), a
//! loss term at every iteration, a loop nested inside; tuples, slicing, concat, broadcasting,
//! reductions over one axis or several with `keepdims`, transposes, elementwise builtins,
//! constructors, `where`, constant one-hot masks, softmax, GELU and layer norm on `[B, d]`; an
//! image path `[B, C, H, W]` (an input gated by a value) through `conv2d` with stride and
//! padding, `conv_bias`, `conv_relu_pool`, max or average pooling and `flatten`; Elman RNN and
//! LSTM cells over a few time steps of a sequence input or of a value; a sequence path
//! `[B, T, D]` through causal attention, a transformer block, `causal_mask` and the heads'
//! reshapes, reduced over time; parameters used several times; mean squared error, cross-entropy, or
//! cross-entropy against `one_hot` of the target's labels; and several loss terms (every value
//! is read by the model or by a loss term, some by both), sometimes one that reads the input
//! `x` directly, as an autoencoder's reconstruction loss does. For each program:
//!
//! - it compiles (`check` passes);
//! - backprop's gradients equal central finite differences in f64 on the interpreter;
//! - PC in exact mode equals backprop to 1e-9 in f64, its updates and its messages to the
//!   inputs (−∂L/∂x);
//! - PC in fixed mode converges to backprop as T grows, updates and messages;
//! - one strict relaxation step, from a state off the feedforward one, is v ← v − η ∂E/∂v
//!   with the energy E evaluated independently of the PC transform and ∂E/∂v by central
//!   finite differences, in f64 (`strict_step_descends_the_energy`), with `nodes = named` and
//!   (every other pair of seeds) `nodes = all`;
//! - with loops, the program keeps them as scans and computes what the same program with
//!   every loop unrolled does: forward outputs, gradients and PC's updates and messages in
//!   exact, fixed and strict mode to 1e-9 in f64, forward outputs and gradients in the JIT to
//!   1e-4 in f32 (`loops_equal_unrolled`);
//! - the JIT equals the interpreter in f32 (to 1e-4) for the forward program, the gradient
//!   program, the relaxation loop and the learning program (fixed mode for even seeds, strict
//!   for odd ones).
//!
//! `PCG_RANDOM_PROGRAMS=N` sets how many programs (default 1000, from seed 0; under two
//! minutes) and `PCG_RANDOM_SEED=S` the first seed; `scripts/random_programs.sh` runs more. A
//! failing program is shrunk (the generator's programs with the same seed and fewer statements
//! are a prefix of it: the smallest that still fails is kept) and written out; copied into
//! `tests/random_regressions/`, it is checked by `regressions_still_pass` from then on, with
//! every check.

use pcg::interp::{self, Bindings};
use pcg::ir::{LeafKind, Op, Program, UnaryOp, ValueId};
use pcg::jit::{JitLoop, JitOptions, JitProgram};
use pcg::pc::Role;
use pcg::sema::{self, CompileOptions, InferenceConfig, LoopPolicy, Mode, NodeGranularity};
use pcg::train::{batch, init};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;

const B: usize = 3;

/// A program under construction. The values statements read and define are `[B, d]` tensors;
/// the image (`[B, C, H, W]`) and sequence (`[B, T, D]`) paths start from one and end in one.
struct Gen {
    rng: ChaCha8Rng,
    /// Shape-annotated functions the program defines.
    fns: BTreeSet<&'static str>,
    /// Stdlib modules the program uses besides `nn`.
    uses: BTreeSet<&'static str>,
    /// Parameter and extra input declarations.
    decls: Vec<String>,
    body: Vec<String>,
    /// (name, width, read by something)
    values: Vec<(String, usize, bool)>,
    /// Square parameters `[d, d]` that later statements may use again.
    square: Vec<(String, usize)>,
    next: usize,
}

const ACTIVATIONS: [&str; 5] = ["tanh", "sigmoid", "sin", "erf", ""];

fn dims_text(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    dims.join(", ")
}

impl Gen {
    fn fresh(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    fn param(&mut self, shape: &[usize]) -> String {
        let name = self.fresh("p");
        let dims = dims_text(shape);
        self.decls
            .push(format!("    param {name}: [{dims}] = normal(0.5)"));
        name
    }

    /// A further input of the model (an image or a sequence), standard normal data.
    fn input(&mut self, prefix: &str, shape: &[usize]) -> String {
        let name = self.fresh(prefix);
        let dims = dims_text(shape);
        self.decls.push(format!("    input {name}: [{dims}]"));
        name
    }

    /// A square parameter `[d, d]`, sometimes one that an earlier statement uses too.
    fn square(&mut self, d: usize) -> String {
        match self.square.iter().find(|(_, s)| *s == d) {
            Some((w, _)) if self.rng.random_bool(0.5) => w.clone(),
            _ => {
                let w = self.param(&[d, d]);
                self.square.push((w.clone(), d));
                w
            }
        }
    }

    fn choose<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[self.rng.random_range(0..options.len())]
    }

    /// A value to read, preferring recent ones; marks it read.
    fn pick(&mut self) -> (String, usize) {
        let n = self.values.len();
        let i = n - 1 - self.rng.random_range(0..n.min(3));
        self.values[i].2 = true;
        (self.values[i].0.clone(), self.values[i].1)
    }

    fn define(&mut self, name: String, width: usize, text: String) {
        self.body.push(text);
        self.values.push((name, width, false));
    }

    fn act(&mut self, z: &str) -> String {
        match self.choose(&ACTIVATIONS) {
            "" => z.to_string(),
            a => format!("{a}({z})"),
        }
    }

    fn statement(&mut self) {
        let (v, d) = self.pick();
        let m = self.rng.random_range(2..6);
        let h = self.fresh("h");
        // The image, recurrent and sequence paths (14 to 17) unroll into long programs that
        // cost the most to check: one statement in ten is one of them.
        let kind = if self.rng.random_bool(0.1) {
            self.rng.random_range(14..19)
        } else {
            self.rng.random_range(0..14)
        };
        match kind {
            0 | 1 => {
                let (w, b) = (self.param(&[d, m]), self.param(&[m]));
                let z = self.act(&format!("{v} @ {w} + {b}"));
                self.define(h.clone(), m, format!("    let {h} = {z}"));
            }
            2 => {
                let a = self.choose(&["tanh", "sigmoid"]);
                let f: &'static str = if a == "tanh" {
                    "layer_tanh"
                } else {
                    "layer_sigmoid"
                };
                self.fns.insert(f);
                let (w, b) = (self.param(&[d, m]), self.param(&[m]));
                self.define(h.clone(), m, format!("    let {h} = {f}({v}, {w}, {b})"));
            }
            3 => {
                // An elementwise product, sum or difference with another value of the width,
                // or a broadcast parameter vector.
                let op = self.choose(&["+", "-", "*"]);
                let other = self
                    .values
                    .iter()
                    .rposition(|(n, w, _)| *w == d && *n != v)
                    .map(|i| {
                        self.values[i].2 = true;
                        self.values[i].0.clone()
                    });
                let other = other.unwrap_or_else(|| self.param(&[d]));
                self.define(
                    h.clone(),
                    d,
                    format!("    let {h} = {v} {op} tanh({other})"),
                );
            }
            4 => {
                let (u, e) = self.pick();
                if d + e <= 10 {
                    let text = if self.rng.random_bool(0.5) {
                        format!("    let {h} = concat({v}, {u}, axis = 1)")
                    } else {
                        format!("    let {h} = concat([{v}, tanh({u})], axis = -1)")
                    };
                    self.define(h.clone(), d + e, text);
                } else {
                    self.define(h.clone(), d, format!("    let {h} = {v} + 0.5 * {v}"));
                }
            }
            5 if d >= 2 => {
                let a = self.rng.random_range(0..d - 1);
                let b = self.rng.random_range(a + 1..=d);
                let text = if self.rng.random_bool(0.5) {
                    format!("    let {h} = {v}[.., {a}..{b}]")
                } else {
                    format!("    let {h} = slice({v}, 1, {a}, {b})")
                };
                self.define(h.clone(), b - a, text);
            }
            6 => {
                let (u, _) = self.pick();
                let reduce = self.choose(&["sum", "mean", "max"]);
                let axis = self.choose(&["1", "-1", "[1]", "[0, 1]"]);
                let text = format!(
                    "    let {h} = {v} * {reduce}(tanh({u}), axis = {axis}, keepdims = true)"
                );
                self.define(h.clone(), d, text);
            }
            7 => self.looped(&v, d, h),
            8 => {
                let p = self.fresh("t");
                self.body.push(format!("    let {p} = ({v}, sigmoid({v}))"));
                self.define(h.clone(), d, format!("    let {h} = {p}[1] * {p}[0]"));
            }
            9 => {
                let unary = [
                    format!("square({v}) * 0.5"),
                    format!("exp(tanh({v}))"),
                    format!("sqrt(square({v}) + 1)"),
                    format!("pow(sigmoid({v}), 2)"),
                    format!("log(sigmoid({v}) + 0.5)"),
                    format!("cos({v})"),
                    format!("tan(0.5 * tanh({v}))"),
                    format!("abs({v}) + 0.5 * {v}"),
                    format!("transpose(tanh(transpose({v})))"),
                    format!("transpose(0.5 * transpose({v}, [1, 0]), [1, 0])"),
                    format!("maximum({v}, -10) + 0.1 * {v}"),
                    format!("relu({v}) - 0.3 * {v}"),
                    format!("leaky_relu({v}, alpha = 0.2)"),
                    format!("full([1, {d}], 0.5) * {v} + ones([{d}]) - zeros([{B}, {d}])"),
                    format!(
                        "broadcast(sum({v}, axis = 1, keepdims = true), [{B}, {d}]) * 0.2 + {v}"
                    ),
                    format!("sign({v}) * {v} + minimum({v}, 0.2)"),
                    format!("clip({v}, -0.5, 0.7) + 0.1 * {v}"),
                    format!("softplus({v}) + log_sigmoid({v})"),
                    format!("stop_gradient(tanh({v})) * {v}"),
                    format!("dropout({v}, 0.3) + 0.5 * {v}"),
                    format!("{v} * min(tanh({v}), axis = 1, keepdims = true)"),
                    format!("{v} * var({v}, axis = 1, keepdims = true) + {v}"),
                    format!("one_hot(argmax({v}), {d}) * {v} + 0.5 * {v}"),
                    format!("where({v} > 0.1, {v}, 0.5 * {v}) + ({v} <= -0.2) * {v}"),
                ];
                let text = unary[self.rng.random_range(0..unary.len())].clone();
                self.define(h.clone(), d, format!("    let {h} = {text}"));
            }
            10 => {
                let text = if self.rng.random_bool(0.5) {
                    format!("    let {h} = reshape({v}, [{B}, -1]) * 0.9")
                } else {
                    format!("    let {h} = reshape({v}, [dim({v}, 0), dim({v}, 1)]) * 0.9")
                };
                self.define(h.clone(), d, text);
            }
            11 => {
                let text = format!("    let {h} = where(relu({v}), {v}, 0.5 * tanh({v}))");
                self.define(h.clone(), d, text);
            }
            14 if d >= 2 => self.image(&v, d, m, h),
            12 => {
                // A constant one-hot mask of integer labels, one per example.
                let labels: Vec<String> = (0..B)
                    .map(|_| format!("full([1], {}.0)", self.rng.random_range(0..d)))
                    .collect();
                let mask = format!("one_hot(concat({}), {d})", labels.join(", "));
                let text = if self.rng.random_bool(0.5) {
                    format!("    let {h} = {v} * ({mask} + 0.5)")
                } else {
                    format!("    let {h} = where({mask}, tanh({v}), {v})")
                };
                self.define(h.clone(), d, text);
            }
            15 => self.recurrent(&v, d, h),
            16 => self.lstm(&v, d, h),
            17 => self.sequence(&v, d, h),
            18 => self.signal(&v, d, m, h),
            _ => {
                let text = match self.rng.random_range(0..7) {
                    6 => {
                        // A residual block in muPC's parameterisation, in and out of width m.
                        let (input, block) = (self.param(&[d, m]), self.param(&[m, m]));
                        let output = self.param(&[m, d]);
                        format!(
                            "mupc_output(mupc_block(mupc_input({v}, {input}), {block}, 3), {output})"
                        )
                    }
                    5 => {
                        // Rows of a table picked by ids computed from the value.
                        let table = self.param(&[d, m]);
                        let text = format!("    let {h} = embedding(argmax({v}), {table})");
                        self.define(h.clone(), m, text);
                        return;
                    }
                    0 => format!("softmax({v}) * {d}"),
                    1 => format!("log_softmax({v}) * 0.5"),
                    2 => format!("gelu({v})"),
                    3 => {
                        self.uses.insert("transformer");
                        let (g, b) = (self.param(&[d]), self.param(&[d]));
                        format!("layer_norm({v}, {g}, {b})")
                    }
                    _ => {
                        let (w, b) = (self.param(&[d, m]), self.param(&[m]));
                        let text = format!("    let {h} = dense({v}, {w}, {b})");
                        self.define(h.clone(), m, text);
                        return;
                    }
                };
                if text.starts_with("gelu") {
                    self.uses.insert("transformer");
                }
                self.define(h.clone(), d, format!("    let {h} = {text}"));
            }
        }
    }

    /// An image `[B, C, H, d]` (an input gated by the value), a convolution (with padding,
    /// stride, bias or pooling), flattened into a dense layer back to `[B, m]`.
    fn image(&mut self, v: &str, d: usize, m: usize, h: String) {
        let c = self.rng.random_range(1..=2);
        let height = self.rng.random_range(2..=4);
        let img = self.input("img", &[B, c, height, d]);
        let gated = self.fresh("g");
        let text = if self.rng.random_bool(0.5) {
            format!("{img} * reshape(tanh({v}), [{B}, 1, 1, {d}])")
        } else {
            format!("broadcast(reshape({v}, [{B}, 1, 1, {d}]), [{B}, {c}, {height}, {d}]) * {img}")
        };
        self.body.push(format!("    let {gated} = {text}"));
        // Sometimes upsampled by 2 first: twice the height and width.
        let (gated, height, d) = if self.rng.random_bool(0.25) {
            self.uses.insert("conv");
            let big = self.fresh("u");
            self.body
                .push(format!("    let {big} = upsample2d({gated}, 2)"));
            (big, 2 * height, 2 * d)
        } else {
            (gated, height, d)
        };
        let o = self.rng.random_range(1..=2);
        let kind = self.rng.random_range(0..4);
        let (text, oh, ow) = if kind == 3 {
            // A transposed convolution (grouped when the channels allow), maybe pooled by an
            // overlapping, padded window.
            let s = self.rng.random_range(1..=2);
            let (kh, kw) = (self.rng.random_range(1..=3), self.rng.random_range(2..=3));
            let p = self.rng.random_range(0..kw.min(2));
            let groups = if c == o && self.rng.random_bool(0.5) {
                c
            } else {
                1
            };
            let k = self.param(&[c, o / groups, kh, kw]);
            let (oh, ow) = ((height - 1) * s + kh, (d - 1) * s + kw - 2 * p);
            let conv = format!(
                "conv_transpose2d({gated}, {k}, stride = {s}, padding = [0, {p}, 0, {p}], groups = {groups})"
            );
            if oh >= 2 && ow >= 2 && self.rng.random_bool(0.5) {
                let pool = self.choose(&["max_pool2d", "avg_pool2d"]);
                let out = |n: usize| (n - 1) / 2 + 1;
                (
                    format!("{pool}({conv}, 3, stride = 2, padding = 1)"),
                    out(oh),
                    out(ow),
                )
            } else {
                (conv, oh, ow)
            }
        } else if kind < 2 {
            let p = self.rng.random_range(0..=1);
            let s = self.rng.random_range(1..=2);
            let kh = self.rng.random_range(1..=(height + 2 * p).min(3));
            let kw = self.rng.random_range(1..=(d + 2 * p).min(3));
            // A dilated width axis when the padded row holds the wider kernel.
            let dw = if kind == 0 && d + 2 * p > 2 * (kw - 1) && self.rng.random_bool(0.3) {
                2
            } else {
                1
            };
            let k = self.param(&[o, c, kh, kw]);
            let (oh, ow) = (
                (height + 2 * p - kh) / s + 1,
                (d + 2 * p - dw * (kw - 1) - 1) / s + 1,
            );
            let conv = if kind == 0 {
                format!("conv2d({gated}, {k}, stride = {s}, padding = {p}, dilation = [1, {dw}])")
            } else {
                self.uses.insert("conv");
                let b = self.param(&[o]);
                format!("conv_bias({gated}, {k}, {b}, {s}, {p})")
            };
            if oh >= 2 && ow >= 2 && self.rng.random_bool(0.6) {
                let pool = self.choose(&["max_pool2d", "avg_pool2d"]);
                let stride = self.choose(&["", ", stride = 2"]);
                (format!("{pool}({conv}, 2{stride})"), oh / 2, ow / 2)
            } else {
                (conv, oh, ow)
            }
        } else {
            self.uses.insert("conv");
            let kh = self.rng.random_range(1..=(height - 1).min(3));
            let kw = self.rng.random_range(1..=(d - 1).min(3));
            let (k, b) = (self.param(&[o, c, kh, kw]), self.param(&[o]));
            // The convolution's output, then pooled by 2.
            let (ch, cw) = (height - kh + 1, d - kw + 1);
            let (oh, ow) = (ch / 2, cw / 2);
            (format!("conv_relu_pool({gated}, {k}, {b}, 2)"), oh, ow)
        };
        let conv = self.fresh("c");
        self.body.push(format!("    let {conv} = {text}"));
        let flat = if self.rng.random_bool(0.5) {
            format!("flatten({conv})")
        } else {
            format!("reshape({conv}, [{B}, -1])")
        };
        let (w, b) = (self.param(&[o * oh * ow, m]), self.param(&[m]));
        self.define(
            h.clone(),
            m,
            format!("    let {h} = tanh({flat} @ {w} + {b})"),
        );
    }

    /// A 1-D signal `[B, C, d]` (an input gated by the value) through `conv1d` with stride and
    /// padding, flattened into a dense layer back to `[B, m]`.
    fn signal(&mut self, v: &str, d: usize, m: usize, h: String) {
        let c = self.rng.random_range(1..=2);
        let sig = self.input("sig", &[B, c, d]);
        let gated = self.fresh("g");
        self.body.push(format!(
            "    let {gated} = {sig} * reshape(tanh({v}), [{B}, 1, {d}])"
        ));
        let o = self.rng.random_range(1..=2);
        let p = self.rng.random_range(0..=1);
        let s = self.rng.random_range(1..=2);
        let k = self.rng.random_range(1..=(d + 2 * p).min(3));
        let kernel = self.param(&[o, c, k]);
        let len = (d + 2 * p - k) / s + 1;
        let conv = self.fresh("c");
        self.body.push(format!(
            "    let {conv} = conv1d({gated}, {kernel}, stride = {s}, padding = {p})"
        ));
        let (w, b) = (self.param(&[o * len, m]), self.param(&[m]));
        self.define(
            h.clone(),
            m,
            format!("    let {h} = tanh(reshape({conv}, [{B}, -1]) @ {w} + {b})"),
        );
    }

    /// A loop that rebinds its state from the value: 1 to 40 iterations (mostly few), a
    /// parameter shared by every iteration or stacked (one slice per iteration, `p[i]`), a
    /// slice of a sequence input by the loop index (`s[.., i + k]`), a `let` of its own, a
    /// loss term at every iteration, a second carried value, or a loop nested inside.
    fn looped(&mut self, v: &str, d: usize, h: String) {
        let n = if self.rng.random_bool(0.2) {
            self.rng.random_range(4..=40)
        } else {
            self.rng.random_range(1..4)
        };
        let mut body = Vec::new();
        let stacked = self.rng.random_bool(0.4);
        let (w, b) = if stacked {
            let w = self.param(&[n, d, d]);
            let b = self.param(&[n, d]);
            (format!("{w}[i]"), format!("{b}[i]"))
        } else {
            (self.square(d), self.param(&[d]))
        };
        let mut z = format!("{h} @ {w} + {b}");
        if self.rng.random_bool(0.3) {
            // The sequence's step i + k, k in 0..=2: the input has n + k steps.
            let k = self.rng.random_range(0..=2);
            let s = self.input("s", &[B, n + k, d]);
            let at = if k == 0 {
                "i".to_string()
            } else {
                format!("i + {k}")
            };
            z = format!("{z} + {s}[.., {at}]");
        }
        let carried2 = self.rng.random_bool(0.2).then(|| self.fresh("m"));
        if let Some(m) = &carried2 {
            z = format!("{z} + 0.5 * {m}");
        }
        if self.rng.random_bool(0.3) {
            let u = self.fresh("u");
            body.push(format!("        let {u} = {}", self.act(&z)));
            z = format!("{u} * 0.5 + sin({u})");
        }
        body.push(format!("        {h} = tanh({z})"));
        if n <= 8 && self.rng.random_bool(0.2) {
            // A loop inside, over a stacked parameter of its own.
            let k = self.rng.random_range(1..=3);
            let wi = self.param(&[k, d, d]);
            body.push(format!(
                "        for j in 0..{k} {{\n            {h} = tanh({h} @ {wi}[j]) + 0.5 * {h}\n        }}"
            ));
        }
        if let Some(m) = &carried2 {
            body.push(format!("        {m} = sigmoid({h}) * {m}"));
        }
        if self.rng.random_bool(0.3) {
            body.push(format!("        loss 0.02 * mean(square({h}))"));
        }
        let mut head = format!("    let {h} = {v}");
        if let Some(m) = &carried2 {
            head.push_str(&format!("\n    let {m} = tanh({v})"));
        }
        self.body.push(head);
        self.define(
            h.clone(),
            d,
            format!("    for i in 0..{n} {{\n{}\n    }}", body.join("\n")),
        );
        if let Some(m) = carried2 {
            self.values.push((m, d, false));
        }
    }

    /// The input at time `t` of a recurrent cell: a step of a sequence input, or the value.
    fn step_input(&mut self, v: &str, d: usize, steps: usize) -> (String, usize) {
        if self.rng.random_bool(0.5) {
            let width = self.rng.random_range(1..=3);
            let seq = self.input("s", &[B, steps, width]);
            (format!("{seq}[.., t]"), width)
        } else {
            (v.to_string(), d)
        }
    }

    /// An Elman RNN or a GRU over a few time steps, its state starting at the value. A GRU of
    /// an input the same at every step has a named value that reads invariants only (`let a
    /// = x @ wx + bx`), still one PC node per iteration as a scan.
    fn recurrent(&mut self, v: &str, d: usize, h: String) {
        self.uses.insert("rnn");
        let steps = self.rng.random_range(1..=3);
        let (x, width) = self.step_input(v, d, steps);
        let cell = if self.rng.random_bool(0.4) {
            let (gx, gh) = (self.param(&[width, 3 * d]), self.param(&[d, 3 * d]));
            let (bx, bh) = (self.param(&[3 * d]), self.param(&[3 * d]));
            format!("gru_cell({x}, {h}, {gx}, {gh}, {bx}, {bh})")
        } else {
            let wx = self.param(&[width, d]);
            let wh = self.square(d);
            let b = self.param(&[d]);
            format!("rnn_cell({x}, {h}, {wx}, {wh}, {b})")
        };
        self.body.push(format!("    let {h} = {v}"));
        self.define(
            h.clone(),
            d,
            format!("    for t in 0..{steps} {{\n        {h} = {cell}\n    }}"),
        );
    }

    /// An LSTM over a few time steps: hidden state from the value, cell state from it or
    /// zeros; both are values afterwards.
    fn lstm(&mut self, v: &str, d: usize, h: String) {
        self.uses.insert("lstm");
        let steps = self.rng.random_range(1..=2);
        let (x, width) = self.step_input(v, d, steps);
        let w = self.param(&[width + d, 4 * d]);
        let b = self.param(&[4 * d]);
        let c = self.fresh("m");
        let c0 = if self.rng.random_bool(0.5) {
            format!("tanh({v})")
        } else {
            format!("zeros([{B}, {d}])")
        };
        self.body
            .push(format!("    let {h} = {v}\n    let {c} = {c0}"));
        self.define(
            h.clone(),
            d,
            format!(
                "    for t in 0..{steps} {{\n        let ({h}n, {c}n) = lstm_cell({x}, {h}, {c}, {w}, {b})\n        {h} = {h}n\n        {c} = {c}n\n    }}"
            ),
        );
        self.values.push((c, d, false));
    }

    /// A sequence `[B, T, d]` (an input gated by the value) through attention, a transformer
    /// block, a causal prefix sum or the heads' reshapes, reduced over time back to `[B, d]`.
    fn sequence(&mut self, v: &str, d: usize, h: String) {
        self.uses.insert("transformer");
        let steps = self.rng.random_range(1..=3);
        let seq = self.input("s", &[B, steps, d]);
        let divisors: Vec<usize> = (1..=d).filter(|&k| d.is_multiple_of(k)).collect();
        let heads = divisors[self.rng.random_range(0..divisors.len())];
        let gated = self.fresh("q");
        self.body.push(format!(
            "    let {gated} = {seq} * reshape(tanh({v}), [{B}, 1, {d}])"
        ));
        let text = match self.rng.random_range(0..4) {
            0 => {
                let (g, b) = (self.param(&[d]), self.param(&[d]));
                let [wq, wk, wv, wo] = [0; 4].map(|_| self.param(&[d, d]));
                format!(
                    "{gated} + causal_attention(layer_norm({gated}, {g}, {b}), {wq}, {wk}, {wv}, {wo}, {heads})"
                )
            }
            1 => {
                let f = self.rng.random_range(2..=4);
                let (g1, b1) = (self.param(&[d]), self.param(&[d]));
                let [wq, wk, wv, wo] = [0; 4].map(|_| self.param(&[d, d]));
                let (g2, b2) = (self.param(&[d]), self.param(&[d]));
                let (w1, c1) = (self.param(&[d, f]), self.param(&[f]));
                let (w2, c2) = (self.param(&[f, d]), self.param(&[d]));
                format!(
                    "transformer_block({gated}, {g1}, {b1}, {wq}, {wk}, {wv}, {wo}, {g2}, {b2}, {w1}, {c1}, {w2}, {c2}, {heads})"
                )
            }
            2 => format!("causal_mask({steps}) @ gelu({gated}) * 0.5"),
            _ => format!("merge_heads(tanh(split_heads({gated}, {heads})))"),
        };
        let a = self.fresh("a");
        self.body.push(format!("    let {a} = {text}"));
        let reduce = match self.rng.random_range(0..4) {
            0 => format!("mean({a}, axis = 1)"),
            1 => format!("{a}[.., -1]"),
            2 => format!("sum({a}, axis = [1]) * 0.5"),
            _ => format!("max(tanh({a}), axis = 1)"),
        };
        self.define(h.clone(), d, format!("    let {h} = {reduce}"));
    }
}

/// The program of `seed` with `size` statements (a prefix of those with more).
fn program(seed: u64, size: usize) -> String {
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(seed),
        fns: BTreeSet::new(),
        uses: BTreeSet::new(),
        decls: Vec::new(),
        body: Vec::new(),
        values: Vec::new(),
        square: Vec::new(),
        next: 0,
    };
    let width = g.rng.random_range(2..6);
    let classes = g.rng.random_range(2..5);
    g.values.push(("x".to_string(), width, false));
    for _ in 0..size {
        g.statement();
    }
    let (last, d) = g.pick();
    let (w, b) = (g.param(&[d, classes]), g.param(&[classes]));
    let head = match g.rng.random_range(0..3) {
        0 => format!("mse(dense({last}, {w}, {b}), y)"),
        1 => format!("cross_entropy(dense({last}, {w}, {b}), y)"),
        _ => {
            // The target's classes as integer labels, and back to one-hot.
            let index: Vec<String> = (0..classes).map(|c| format!("full([1], {c}.0)")).collect();
            let labels = format!("sum(y * concat({}), axis = 1)", index.join(", "));
            format!("cross_entropy(dense({last}, {w}, {b}), one_hot({labels}, {classes}))")
        }
    };
    let mut losses = vec![format!("    loss {head}")];
    // Every value nothing reads gets a loss term of its own, and some that the model reads
    // do too (their units then get the loss's message besides their children's).
    for (name, _, read) in &g.values {
        if name != "x" && (!read || g.rng.random_bool(0.1)) {
            let scale = [0.1, 0.05, 0.02][name.len() % 3];
            losses.push(format!("    loss {scale} * mean(square({name}))"));
        }
    }
    // Sometimes the loss reads the input too, as an autoencoder's does: the input's message
    // then has a direct term from the loss besides its children's.
    if g.rng.random_bool(0.3) {
        let at = g.rng.random_range(1..g.values.len());
        let (name, d, _) = g.values[at].clone();
        let k = d.min(width);
        losses.push(format!(
            "    loss 0.05 * mean(square(tanh({name}[.., 0..{k}]) - x[.., 0..{k}]))"
        ));
    }
    let mut text = String::from("use nn\n");
    for u in &g.uses {
        text.push_str(&format!("use {u}\n"));
    }
    text.push('\n');
    for f in &g.fns {
        let a = f.trim_start_matches("layer_");
        text.push_str(&format!(
            "fn {f}(x: [N, I], w: [I, O], b: [O]) -> [N, O] {{\n    let z = x @ w + b\n    {a}(z)\n}}\n\n"
        ));
    }
    text.push_str(&format!(
        "model random {{\n    input  x: [{B}, {width}]\n    target y: [{B}, {classes}]\n"
    ));
    for d in &g.decls {
        text.push_str(d);
        text.push('\n');
    }
    for s in g.body.iter().chain(&losses) {
        text.push_str(s);
        text.push('\n');
    }
    text.push_str("}\n");
    text
}

fn to_f64(b: &Bindings<f32>) -> Bindings<f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v.mapv(f64::from)))
        .collect()
}

/// The relative distance of PC's updates (ascent) from backprop's gradients over all
/// parameters, or of its messages to the inputs from backprop's −∂L/∂x over all inputs:
/// whichever is larger.
fn distance(updates: &Bindings<f64>, grads: &Bindings<f64>) -> f64 {
    // (squared distance, squared norm) of the parameters and of the inputs.
    let mut sums = [(0.0, 0.0); 2];
    for (name, g) in grads {
        let Some(p) = name.strip_prefix("grad.") else {
            continue;
        };
        let (group, u) = match updates.get(&format!("update.{p}")) {
            Some(u) => (0, u),
            None => (1, &updates[&format!("message.{p}")]),
        };
        sums[group].0 += (u + g).mapv(|x| x * x).sum();
        sums[group].1 += g.mapv(|x| x * x).sum();
    }
    sums.iter()
        .map(|(diff, total)| (diff / total.max(1e-300)).sqrt())
        .fold(0.0, |worst, e| if e.is_nan() { e } else { worst.max(e) })
}

/// Every output of `got` within 1e-4 (relative to the reference's scale) of `want`.
fn close_f32(what: &str, got: &Bindings<f32>, want: &Bindings<f32>) -> Result<(), String> {
    for (name, w) in want {
        let Some(g) = got.get(name) else {
            return Err(format!("{what}: the JIT has no `{name}`"));
        };
        let scale = w.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        let diff = (g - w).iter().fold(0.0f32, |m, x| m.max(x.abs()));
        if diff.is_nan() || diff > 1e-4 * scale {
            return Err(format!(
                "{what}: `{name}` differs by {diff:e} (scale {scale:e})"
            ));
        }
    }
    Ok(())
}

/// The forward program with every relaxed node cut out of the graph: its users read the
/// state `v.<label>` instead, and its prediction μ (computed from its parents' values) is the
/// output `mu.<label>`. Built from the forward program alone, not by the PC transform.
fn cut_graph(stacked: &pcg::pc::Stacked, relaxed: &[(ValueId, String)]) -> Program {
    let forward = &stacked.program;
    let mut cut = forward.clone();
    let mut values = std::collections::HashMap::new();
    for (id, label) in relaxed {
        let value = cut.leaf(
            LeafKind::State,
            format!("v.{label}"),
            forward.shape(*id).clone(),
        );
        values.insert(*id, value);
        for node in &mut cut.nodes {
            for a in &mut node.args {
                if a == id {
                    *a = value;
                }
            }
        }
        cut.set_output(format!("mu.{label}"), *id);
    }
    // A loop's carried value is read one iteration later: its feedback leaf is the value
    // unit shifted along the loop's axis, the initial value first.
    for f in &stacked.feedback {
        let init = values.get(&f.init).copied().unwrap_or(f.init);
        // The carried value is its node, or a view of it (an inner loop's last iteration).
        let carried = match values.get(&f.carried) {
            Some(&v) => v,
            None => f.carried_from(forward, &mut cut, values[&f.carried_node(forward)]),
        };
        let shifted = f.shifted(&mut cut, carried, init);
        for node in &mut cut.nodes {
            for a in &mut node.args {
                if *a == f.leaf {
                    *a = shifted;
                }
            }
        }
    }
    cut.sort_topologically();
    cut
}

/// `program` with each `stop_gradient` node replaced by a state leaf `frozen.<id>`, and the
/// values those nodes take in `program` at `leaves`: the function whose derivative (by finite
/// differences) is the one that stops at them.
fn freeze_stop_gradients(
    program: &Program,
    leaves: &Bindings<f64>,
) -> Result<(Program, Bindings<f64>), String> {
    let stops: Vec<ValueId> = program
        .ids()
        .filter(|&id| program.node(id).op == Op::Unary(UnaryOp::StopGradient))
        .collect();
    if stops.is_empty() {
        return Ok((program.clone(), Bindings::new()));
    }
    let mut probe = program.clone();
    for &id in &stops {
        probe.set_output(format!("frozen.{}", id.0), id);
    }
    let out = interp::eval_outputs(&probe, leaves).map_err(|e| e.to_string())?;
    let mut held = program.clone();
    let mut values = Bindings::new();
    for &id in &stops {
        let name = format!("frozen.{}", id.0);
        let node = &mut held.nodes[id.index()];
        node.op = Op::Leaf(LeafKind::State);
        node.args.clear();
        node.name = Some(name.clone());
        values.insert(name.clone(), out[&name].clone());
    }
    Ok((held, values))
}

/// The strict relaxation step against its definition. Strict PC descends the energy
///
/// ```text
/// E(v) = ½ Σ_relaxed π_i ‖v_i − μ_i(v)‖² + L(v)
/// ```
///
/// where μ_i(v) is node i's prediction from its parents' values and the loss L reads the
/// outputs' predictions and the relaxed values it reads. (The loss is the outputs' share: an
/// output's error is clamped to −∂L/∂μ_o, so the step follows −∂E/∂v; the `energy` the step
/// reports counts the outputs by ½‖ε_o‖² instead.) So from any state one step must be
/// v ← v − η ∂E/∂v. E is evaluated on the cut graph ([`cut_graph`]), with the precisions
/// read from the settings, and for each relaxed node ∂E/∂v_i · d_i along a random direction
/// d_i by central finite differences (h = 1e-5), from a state perturbed off the feedforward
/// one (where every ε is 0); it must be within 1e-7 + 1e-5 ‖∂E/∂v_i‖ ‖d_i‖ of what the step
/// did. A wrong sign or a missing term is off by far more: a step with ε's sign flipped, or
/// without the loss's message to a node the loss reads, fails within the first seeds.
/// Perturbations (up to 30%) and directions are relative to each element's
/// size (up to 1), so a positive value stays positive (with `nodes = all` a variance under a
/// square root is a node too).
fn strict_step_descends_the_energy(
    forward: &Program,
    leaves: &Bindings<f64>,
    nodes: NodeGranularity,
) -> Result<(), String> {
    let mut config = InferenceConfig {
        mode: Mode::Strict,
        steps: 1,
        rate: 0.1,
        nodes,
        ..Default::default()
    };
    // One node with a precision other than 1, so the weighting is checked too. PC nodes are
    // nodes of the program with its loops stacked.
    let stacked = pcg::pc::stack::stack(forward);
    let weighted = pcg::pc::analyse_stacked(&stacked, &config)
        .nodes
        .iter()
        .filter(|n| matches!(n.role, Role::Relaxed { .. }))
        .find_map(|n| stacked.program.node(n.value).name.clone());
    if let Some(name) = &weighted {
        config.precision.insert(name.clone(), 2.0);
    }
    let pc = pcg::pc::transform(forward, &config).map_err(|e| e.to_string())?;
    let forward = &pc.forward.program;
    let relaxed: Vec<(ValueId, String, f64)> = pc
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(n.role, Role::Relaxed { .. }))
        .map(|n| {
            let name = forward.node(n.value).name.as_ref();
            let precision = name.and_then(|name| config.precision.get(name));
            (n.value, n.label.clone(), precision.copied().unwrap_or(1.0))
        })
        .collect();
    let named: Vec<(ValueId, String)> = relaxed.iter().map(|(v, l, _)| (*v, l.clone())).collect();
    let cut = cut_graph(&pc.forward, &named);
    let energy =
        |frozen: &(Program, Bindings<f64>), state: &Bindings<f64>| -> Result<f64, String> {
            let (cut, values) = frozen;
            let mut env = leaves.clone();
            env.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
            env.extend(state.iter().map(|(k, v)| (k.clone(), v.clone())));
            let out = interp::eval_outputs(cut, &env).map_err(|e| e.to_string())?;
            let mut e: f64 = out["loss"].sum();
            for (_, label, precision) in &relaxed {
                let key = format!("v.{label}");
                let eps = &state[&key] - &out[&format!("mu.{label}")];
                e += 0.5 * precision * eps.mapv(|x| x * x).sum();
            }
            Ok(e)
        };

    let mut env = leaves.clone();
    env.extend(interp::eval_outputs(&pc.relax.prologue, leaves).map_err(|e| e.to_string())?);
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    // A state with an element beyond 1e3 (a masked attention score, −1e9, when every op is a
    // node) is not checked: differences of the energy's terms that large keep too few digits.
    let huge = relaxed.iter().any(|(_, label, _)| {
        env.get(&format!("v.{label}"))
            .is_some_and(|v| v.iter().any(|x| x.abs() > 1e3))
    });
    if huge {
        return Ok(());
    }
    let size = |x: f64| x.abs().min(1.0);
    let mut state = Bindings::new();
    for (_, label, _) in &relaxed {
        let key = format!("v.{label}");
        let Some(v) = env.get_mut(&key) else {
            return Err(format!("strict relaxation carries no `{key}`"));
        };
        v.mapv_inplace(|x| x + 0.3 * size(x) * rng.random_range(-1.0..1.0));
        state.insert(key.clone(), v.clone());
    }
    let next = interp::eval_outputs(&pc.relax.body, &env).map_err(|e| e.to_string())?;
    // A stop_gradient sends no message: the energy's slope is taken with its values held at
    // this state's.
    let mut at_state = leaves.clone();
    at_state.extend(state.iter().map(|(k, v)| (k.clone(), v.clone())));
    let frozen_cut = freeze_stop_gradients(&cut, &at_state)?;
    let h = 1e-5;
    for (key, v) in &state {
        let Some(after) = next.get(key) else {
            return Err(format!("the strict step does not update `{key}`"));
        };
        // The step's descent direction: −∂E/∂v by the step, against the energy's slope.
        let descent = (after - v) / pc.rate;
        let direction = v.mapv(|x| size(x) * rng.random_range(-1.0..1.0));
        let along = |sign: f64| {
            let mut moved = state.clone();
            moved.insert(key.clone(), v + &(&direction * (sign * h)));
            energy(&frozen_cut, &moved)
        };
        let fd = (along(1.0)? - along(-1.0)?) / (2.0 * h);
        let step = -(&descent * &direction).sum();
        let scale = descent.mapv(|x| x * x).sum().sqrt() * direction.mapv(|x| x * x).sum().sqrt();
        if (fd - step).abs().is_nan() || (fd - step).abs() > 1e-7 + 1e-5 * scale {
            return Err(format!(
                "strict step ({nodes:?} nodes): −(Δ{key}/η)·d = {step:e}, finite differences of the energy {fd:e}"
            ));
        }
    }
    Ok(())
}

/// The checks on one program's text; `Err` says which failed. The costliest are shared out
/// between the seeds of a run: the program of `seed` has the JIT's relaxation and learning
/// checked in fixed mode when the seed is even and in strict mode when it is odd, and the
/// strict step with `nodes = all` when `seed % 4 < 2`. A regression case (no seed) gets all.
fn check(text: &str, seed: Option<u64>) -> Result<(), String> {
    // Every loop that can be a scan is one, however small, so that scans are what is checked
    // (and checked against the same loops unrolled).
    let options = CompileOptions {
        loops: LoopPolicy::Scan,
        ..Default::default()
    };
    let (_, compiled) = sema::compile_source("random.pcg", text, &options);
    let forward = compiled
        .map_err(|d| format!("does not compile: {:?}", d.first().map(|d| &d.message)))?
        .forward;
    let leaves32 = {
        let mut l = init::init_params(&forward, 7);
        l.extend(batch::random_batch(&forward, 7));
        l
    };
    let leaves = to_f64(&leaves32);

    // Backprop against central finite differences (f64, interpreter).
    let grad =
        pcg::autodiff::gradient_program(&forward, &[LeafKind::Param]).map_err(|e| e.to_string())?;
    // PC's updates and its messages to the inputs are compared with these.
    let with_inputs =
        pcg::autodiff::gradient_program(&forward, &[LeafKind::Param, LeafKind::Input])
            .map_err(|e| e.to_string())?;
    let all_grads = interp::eval_outputs(&with_inputs, &leaves).map_err(|e| e.to_string())?;
    let grads = interp::eval_outputs(&grad, &leaves).map_err(|e| e.to_string())?;
    // Differences of the loss with every stop_gradient held at its value here: the
    // derivative that stops there.
    let (held, values) = freeze_stop_gradients(&forward, &leaves)?;
    let loss_at = |l: &Bindings<f64>| -> Result<f64, String> {
        let mut env = l.clone();
        env.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
        let out = interp::eval_outputs(&held, &env).map_err(|e| e.to_string())?;
        Ok(out["loss"].iter().sum())
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (_, name) in forward.leaves(LeafKind::Param) {
        let g = &grads[&format!("grad.{name}")];
        for _ in 0..2 {
            let at = rng.random_range(0..g.len());
            let h = 1e-5;
            let mut plus = leaves.clone();
            plus.get_mut(name).unwrap().as_slice_mut().unwrap()[at] += h;
            let mut minus = leaves.clone();
            minus.get_mut(name).unwrap().as_slice_mut().unwrap()[at] -= h;
            let fd = (loss_at(&plus)? - loss_at(&minus)?) / (2.0 * h);
            let Some(exact) = g.as_slice().map(|g| g[at]) else {
                return Err(format!("grad.{name} is not in standard layout"));
            };
            if (fd - exact).abs() > 1e-6 + 1e-5 * exact.abs() {
                return Err(format!(
                    "grad.{name}[{at}] = {exact:e}, finite differences {fd:e}"
                ));
            }
        }
    }

    // Loops kept as scans against the same program with every loop unrolled.
    if forward.nodes.iter().any(|n| matches!(n.op, Op::Scan(_))) {
        loops_equal_unrolled(&forward, &grad, &leaves, &leaves32)?;
    }

    // PC exact equals backprop; fixed converges to it.
    let exact = InferenceConfig {
        mode: Mode::Exact,
        ..Default::default()
    };
    let pc = pcg::pc::transform(&forward, &exact).map_err(|e| e.to_string())?;
    let exact_steps = pc.relax.steps;
    let e = distance(&run_pc(&forward, &exact, exact_steps, &leaves)?, &all_grads);
    if e.is_nan() || e > 1e-9 {
        return Err(format!("exact mode is {e:e} from backprop"));
    }
    let fixed = |steps| InferenceConfig {
        mode: Mode::Fixed,
        steps,
        rate: 0.5,
        ..Default::default()
    };
    let early = distance(&run_pc(&forward, &fixed(1), 1, &leaves)?, &all_grads);
    // Messages take a step per hop: deep graphs (long loops) need more steps.
    let depth = pcg::pc::analyse(&forward, &fixed(150)).depth;
    let many = 150.max(10 * depth);
    let late = distance(&run_pc(&forward, &fixed(many), many, &leaves)?, &all_grads);
    if late.is_nan() || late > 1e-6 || late > early {
        return Err(format!(
            "fixed mode: {early:e} after 1 step, {late:e} after {many}"
        ));
    }

    // Strict mode's step against the energy it descends.
    strict_step_descends_the_energy(&forward, &leaves, NodeGranularity::Named)?;
    if seed.is_none_or(|s| s % 4 < 2) {
        strict_step_descends_the_energy(&forward, &leaves, NodeGranularity::All)?;
    }

    // The JIT against the interpreter, f32 (on two threads, every scan whose rows split run
    // in parts however little it computes).
    let options = split_scans();
    let jit = |p: &Program, l: &Bindings<f32>| -> Result<Bindings<f32>, String> {
        let mut compiled = JitProgram::compile(p, &options).map_err(|e| e.to_string())?;
        compiled.run(l).map_err(|e| e.to_string())
    };
    let reference =
        |p: &Program, l: &Bindings<f32>| interp::eval_outputs(p, l).map_err(|e| e.to_string());
    close_f32(
        "forward",
        &jit(&forward, &leaves32)?,
        &reference(&forward, &leaves32)?,
    )?;
    close_f32(
        "grad",
        &jit(&grad, &leaves32)?,
        &reference(&grad, &leaves32)?,
    )?;
    let all = [(Mode::Fixed, 5), (Mode::Strict, 3), (Mode::Epc, 3)];
    let modes = match seed {
        Some(s) => vec![all[s as usize % all.len()]],
        None => all.to_vec(),
    };
    for (mode, steps) in modes {
        let config = InferenceConfig {
            mode,
            steps,
            rate: 0.2,
            ..Default::default()
        };
        let pc = pcg::pc::transform(&forward, &config).map_err(|e| e.to_string())?;
        let want = interp::run_loop(&pc.relax, &leaves32, steps, |_, _| true)
            .map_err(|e| e.to_string())?;
        let mut looped = JitLoop::compile(&pc.relax, &options).map_err(|e| e.to_string())?;
        let got = looped.run(&leaves32, steps).map_err(|e| e.to_string())?;
        close_f32(&format!("{mode:?} relaxation"), &got, &want)?;
        let mut env = leaves32.clone();
        env.extend(want);
        close_f32(
            &format!("{mode:?} learning"),
            &jit(&pc.learn, &env)?,
            &reference(&pc.learn, &env)?,
        )?;
    }
    Ok(())
}

/// The program with its loops as scans computes what the program with every loop unrolled
/// does: the forward outputs, the gradients and PC's updates and messages in exact, fixed and
/// strict mode to 1e-9 in f64 on the interpreter, and the JIT's forward outputs and gradients
/// to 1e-4 in f32.
fn loops_equal_unrolled(
    forward: &Program,
    grad: &Program,
    leaves: &Bindings<f64>,
    leaves32: &Bindings<f32>,
) -> Result<(), String> {
    let mut unrolled = forward.clone();
    pcg::opt::unroll::unroll(&mut unrolled, &|_| true);
    if unrolled.nodes.iter().any(|n| matches!(n.op, Op::Scan(_))) {
        return Err("a scan is left after unrolling every loop".into());
    }
    let unrolled_grad = pcg::autodiff::gradient_program(&unrolled, &[LeafKind::Param])
        .map_err(|e| e.to_string())?;
    let eval = |p: &Program| interp::eval_outputs(p, leaves).map_err(|e| e.to_string());
    close_f64("scan forward", &eval(forward)?, &eval(&unrolled)?)?;
    close_f64("scan gradient", &eval(grad)?, &eval(&unrolled_grad)?)?;
    for (mode, steps) in [(Mode::Fixed, 4), (Mode::Strict, 3), (Mode::Exact, 0)] {
        let config = InferenceConfig {
            mode,
            steps,
            rate: 0.2,
            ..Default::default()
        };
        // Exact mode runs as many steps as its sweep needs, which the transform says.
        let steps_of = |p: &Program| -> Result<usize, String> {
            Ok(match mode {
                Mode::Exact => {
                    pcg::pc::transform(p, &config)
                        .map_err(|e| e.to_string())?
                        .relax
                        .steps
                }
                _ => steps,
            })
        };
        close_f64(
            &format!("scan {mode:?} PC"),
            &run_pc(forward, &config, steps_of(forward)?, leaves)?,
            &run_pc(&unrolled, &config, steps_of(&unrolled)?, leaves)?,
        )?;
    }
    // Exact mode's training step as compiled, the relaxation a sweep (backpropagation through
    // the loops; the PC nodes' feedforward values the loops' own): updates, energy and loss
    // as the unrolled program's.
    let exact = InferenceConfig {
        mode: Mode::Exact,
        ..Default::default()
    };
    let fused_exact = |p: &Program| -> Result<Option<Bindings<f64>>, String> {
        let programs = pcg::pc::transform(p, &exact).map_err(|e| e.to_string())?;
        let steps = programs.relax.steps;
        let Some(solved) = pcg::pc::solve(&programs, steps).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let step = pcg::pc::fuse_step(&solved, &programs.learn);
        pcg::ir::verify(&step).map_err(|e| format!("{e:?}"))?;
        interp::eval_outputs(&step, leaves)
            .map(Some)
            .map_err(|e| e.to_string())
    };
    if let (Some(looped), Some(flat)) = (fused_exact(forward)?, fused_exact(&unrolled)?) {
        close_f64("scan exact PC step", &looped, &flat)?;
    }
    let options = split_scans();
    let jit = |p: &Program| -> Result<Bindings<f32>, String> {
        let mut compiled = JitProgram::compile(p, &options).map_err(|e| e.to_string())?;
        compiled.run(leaves32).map_err(|e| e.to_string())
    };
    close_f32("scan forward, JIT", &jit(forward)?, &jit(&unrolled)?)?;
    close_f32("scan gradient, JIT", &jit(grad)?, &jit(&unrolled_grad)?)
}

/// The outputs `got` and `want` have the same names, each within 1e-9 of the other
/// (relative to its scale), f64.
fn close_f64(what: &str, got: &Bindings<f64>, want: &Bindings<f64>) -> Result<(), String> {
    let (g, w): (BTreeSet<&String>, BTreeSet<&String>) =
        (got.keys().collect(), want.keys().collect());
    if g != w {
        return Err(format!("{what}: outputs {g:?} against {w:?}"));
    }
    for (name, w) in want {
        let g = &got[name];
        let scale = w.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        let diff = (g - w).iter().fold(0.0f64, |m, x| m.max(x.abs()));
        if diff.is_nan() || diff > 1e-9 * scale {
            return Err(format!(
                "{what}: `{name}` differs by {diff:e} (scale {scale:e})"
            ));
        }
    }
    Ok(())
}

/// PC's updates after `steps` relaxation steps, f64 on the interpreter.
fn run_pc(
    forward: &Program,
    config: &InferenceConfig,
    steps: usize,
    leaves: &Bindings<f64>,
) -> Result<Bindings<f64>, String> {
    let pc = pcg::pc::transform(forward, config).map_err(|e| e.to_string())?;
    let state =
        interp::run_loop(&pc.relax, leaves, steps, |_, _| true).map_err(|e| e.to_string())?;
    let mut env = leaves.clone();
    env.extend(state);
    interp::eval_outputs(&pc.learn, &env).map_err(|e| e.to_string())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The number of statements of the program of `seed` in a run.
fn size_of(seed: u64) -> usize {
    1 + (seed % 9) as usize
}

#[test]
fn random_programs_pass_every_check() {
    let count = env_usize("PCG_RANDOM_PROGRAMS", 1000);
    let first = env_usize("PCG_RANDOM_SEED", 0) as u64;
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("random_programs");
    for seed in first..first + count as u64 {
        let size = size_of(seed);
        let text = program(seed, size);
        if let Err(why) = check(&text, Some(seed)) {
            // Shrink: the same seed with fewer statements is a prefix of the program.
            let (small, reason) = (1..size)
                .map(|s| program(seed, s))
                .find_map(|t| check(&t, Some(seed)).err().map(|w| (t, w)))
                .unwrap_or((text, why));
            std::fs::create_dir_all(&out).unwrap();
            let path = out.join(format!("seed-{seed}.pcg"));
            std::fs::write(&path, &small).unwrap();
            panic!(
                "seed {seed}: {reason}\nsaved to {} (copy it into tests/random_regressions/):\n{small}",
                path.display()
            );
        }
    }
}

/// Every check, with every mode, on each `.pcg` file of `dir`; returns how many there were.
fn check_every_file(dir: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut checked = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "pcg") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(why) = check(&text, None) {
                panic!("{}: {why}", path.display());
            }
            checked += 1;
        }
    }
    checked
}

/// The programs that once failed, kept as regression cases.
#[test]
fn regressions_still_pass() {
    check_every_file("tests/random_regressions");
}

/// Each everyday op (comparisons, sign, min, minimum, clip, argmax, var, softplus,
/// log_sigmoid, stop_gradient, dropout, embedding, upsample2d, conv1d, gelu) in a small model of its own,
/// `tests/ops/*.pcg`, with every check: backprop against finite differences, exact PC equal to
/// backprop, fixed PC converging to it, strict PC's step against the energy, the JIT against
/// the interpreter.
#[test]
fn every_op_model_passes_every_check() {
    assert!(check_every_file("tests/ops") >= 10);
}

/// Whether `text` calls `name`: `name(` not preceded by a letter, digit or `_`.
fn calls(text: &str, name: &str) -> bool {
    let call = format!("{name}(");
    text.match_indices(&call).any(|(at, _)| {
        !text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The default run's programs call every builtin and every stdlib function and use every
/// construct of the generator, and programs differ by seed.
#[test]
fn the_generator_covers_its_constructs() {
    let all: String = (0..1000).map(|s| program(s, size_of(s))).collect();
    let builtins = sema::BUILTINS;
    assert!(builtins.len() >= 30, "found only {builtins:?}");
    let stdlib: Vec<&str> = sema::STDLIB
        .iter()
        .flat_map(|(_, text)| text.lines())
        .filter_map(|l| l.strip_prefix("fn ")?.split('(').next())
        .collect();
    assert!(stdlib.len() >= 15, "found only {stdlib:?}");
    for name in builtins.iter().chain(&stdlib) {
        assert!(calls(&all, name), "no program calls `{name}`");
    }
    for construct in [
        "for i in",
        "for j in",
        "for t in",
        "[i]",
        "[.., i]",
        "[.., i + ",
        "        loss 0.02",
        "[.., t]",
        "let (",
        "concat([",
        "[.., ",
        "keepdims = true",
        "axis = [0, 1]",
        "fn layer_",
        "[1] * ",
        "stride = 2",
        "padding = 1",
        "dilation = [1, 2]",
        "groups = 2",
        "stride = 2, padding = 1)",
        " > 0.1",
        " <= -0.2",
        "one_hot(sum(y",
        "loss 0.",
        "- x[.., 0..",
        "use conv",
        "use rnn",
        "use lstm",
        "use transformer",
    ] {
        assert!(all.contains(construct), "no program has `{construct}`");
    }
    assert_ne!(program(1, 5), program(2, 5));
}

/// The formatter (`pcg fmt`) gives every random program back as the same program (it checks
/// the tree and the comments itself) in a layout that formatting again keeps.
#[test]
fn the_formatter_keeps_random_programs() {
    use pcg::syntax::format::format_source;
    for seed in 0..1000 {
        let text = program(seed, size_of(seed));
        let once = format_source(0, &text)
            .unwrap_or_else(|d| panic!("seed {seed}: {:?}\n{text}", d[0].message));
        let twice = format_source(0, &once).expect("formatted text formats");
        assert_eq!(twice, once, "seed {seed}: formatting twice changed it");
    }
}

/// JIT options that run every scan whose batch rows split as parts on two threads, however
/// small: the split code is checked on programs of every size.
fn split_scans() -> JitOptions {
    JitOptions {
        threads: 2,
        split_scan_flops: 0,
        ..JitOptions::default()
    }
}
