//! The Cranelift JIT backend: native code for IR programs.
//!
//! Compiling a program goes through three small stages, one module each:
//!
//! 1. `lower` — the program to a loop-level form: elementwise chains fused into single
//!    expressions, movement ops folded into the affine maps those expressions read through,
//!    reductions, and calls for matrix products and convolutions;
//! 2. `plan` — every buffer at a fixed offset in one arena, buffers that are never live at the
//!    same time sharing memory; the plan is verified before any code runs;
//! 3. `codegen` — the kernels to one Cranelift function (SIMD loop nests, inline polynomial
//!    transcendentals from `math`, and calls into `runtime`).
//!
//! [`JitProgram`] compiles a straight-line [`Program`]; [`JitLoop`] compiles a [`LoopProgram`]
//! — the prologue and the whole `steps`-long loop — into one function, so that predictive-coding
//! relaxation never returns to Rust between steps. Both have the interpreter's contract
//! (`interp::eval_outputs`, `interp::run_loop`) and are tested against it.
//!
//! Code is compiled for one dtype ([`JitOptions::dtype`]): f32, the default, or f64. The data
//! interface is generic over the element type ([`Float`]), which must be the dtype compiled for.

mod arena;
mod codegen;
mod looped;
mod lower;
mod math;
mod pace;
mod plan;
mod runtime;
mod step;
mod team;
mod wide;

pub use looped::JitLoop;
pub use plan::{BufferPlan, PlanError, PlannedBuffer};
pub use runtime::{
    interrupt, take_kernel_times, take_product_time, time_products, Exchange, KernelTime,
};
pub use step::{Cost, JitStep, KernelInfo, Stage, StepCost};

use crate::interp::{Bindings, EvalError, Real, Tensor};
use crate::ir::{verify, LeafKind, Program, Shape, VerifyError};
use crate::sema::Dtype;
use arena::Arena;
use codegen::{FunctionTranslator, Layout, RuntimeRefs, Segment};
use cranelift_codegen::ir::{types, AbiParam, UserFuncName};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use lower::{BufferId, Kernel, Lowered};
use std::collections::HashMap;
use std::fmt;

/// The element types compiled code computes in.
pub trait Float: Real {
    /// The dtype of this element type.
    const DTYPE: Dtype;
}

impl Float for f32 {
    const DTYPE: Dtype = Dtype::F32;
}

impl Float for f64 {
    const DTYPE: Dtype = Dtype::F64;
}

/// How to compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JitOptions {
    /// Check every load and store the generated code makes against its buffer (and every
    /// runtime kernel's operands against the arena); a failed check stops the run with
    /// [`JitError::OutOfBounds`]. A debugging aid: the plan is verified statically anyway.
    pub bounds_checks: bool,
    /// Threads the matrix products may use (large products only).
    pub threads: usize,
    /// `threads` is the default, not asked for: a caller may use fewer where that is faster.
    pub auto_threads: bool,
    /// Time every kernel (on each thread that runs it; see [`take_kernel_times`]). A tuning
    /// aid: a call into the runtime before every kernel.
    pub profile: bool,
    /// The element type the code computes in; the data it runs on must be of this type.
    pub dtype: Dtype,
    /// The least work (floating-point operations over all its iterations) of a scan that runs
    /// as parts on `threads` threads, each part the whole loop on its own block of batch rows:
    /// handing the parts to the threads costs a few microseconds.
    pub split_scan_flops: u64,
}

impl Default for JitOptions {
    fn default() -> Self {
        JitOptions {
            bounds_checks: false,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            auto_threads: true,
            profile: false,
            dtype: Dtype::F32,
            split_scan_flops: 1 << 20,
        }
    }
}

/// Why a program could not be compiled or run.
#[derive(Debug)]
pub enum JitError {
    /// The program breaks an IR invariant (a compiler bug upstream).
    Invalid(VerifyError),
    /// A leaf is missing from the bindings or has the wrong shape.
    Leaf(EvalError),
    /// The buffer plan failed verification (a compiler bug here).
    Plan(PlanError),
    /// Cranelift rejected the generated function.
    Codegen(String),
    /// With bounds checks on, kernel `kernel` tried to access memory outside its buffer.
    OutOfBounds { kernel: usize },
    /// A compiled step's guard found a value that is not finite; nothing after it ran.
    Diverged,
    /// A compiled loop saw an interrupt request (`runtime::interrupt`); nothing after the
    /// loop ran.
    Interrupted,
    /// The function's arena (every buffer it holds) could not be allocated.
    OutOfMemory { bytes: usize },
}

impl fmt::Display for JitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JitError::Invalid(e) => write!(f, "{e}"),
            JitError::Leaf(e) => write!(f, "{e}"),
            JitError::Plan(e) => write!(f, "invalid buffer plan: {e}"),
            JitError::Codegen(e) => write!(f, "code generation failed: {e}"),
            JitError::OutOfBounds { kernel } => {
                write!(f, "kernel {kernel} accessed memory outside its buffer")
            }
            JitError::Diverged => f.write_str("a value of the step is not finite"),
            JitError::Interrupted => f.write_str("interrupted"),
            JitError::OutOfMemory { bytes } => write!(
                f,
                "the compiled function's buffers need {} ({bytes} bytes), more than can be allocated",
                crate::memory::bytes_text(*bytes as u64)
            ),
        }
    }
}

impl std::error::Error for JitError {}

/// Where a runtime call finds its descriptor: part p's is `address + p · stride` bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Descriptor {
    pub address: i64,
    pub stride: i64,
}

impl Descriptor {
    fn of<T>(first: &T) -> Descriptor {
        Descriptor {
            address: first as *const T as i64,
            stride: std::mem::size_of::<T>() as i64,
        }
    }
}

/// The native entry point: `fn(arena, steps) -> status`.
type Entry = unsafe extern "C" fn(*mut u8, i64) -> i32;

/// One compiled native function with its arena and the descriptors its calls read.
struct Function {
    /// Owns the machine code; freed on drop.
    module: Option<JITModule>,
    entry: Entry,
    clif: String,
    plan: BufferPlan,
    dtype: Dtype,
    arena: Arena,
    /// Runtime-kernel descriptors, at fixed addresses the code embeds.
    _matmuls: Vec<runtime::MatMulDesc>,
    _convs: Vec<runtime::ConvDesc>,
    _exchanges: Vec<runtime::ExchangeDesc>,
}

impl Drop for Function {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: `entry` is not callable after drop, and no other code refers to it.
            unsafe { module.free_memory() };
        }
    }
}

impl Function {
    fn compile(lowered: &Lowered, layout: &Layout, options: &JitOptions) -> Result<Self, JitError> {
        let plan = BufferPlan::new(lowered);
        plan.verify(&lowered.kernels).map_err(JitError::Plan)?;
        Self::build(lowered, layout, options, plan)
    }

    /// Generates code for kernels over a plan (verified by the caller, except in tests of the
    /// run-time checks).
    fn build(
        lowered: &Lowered,
        layout: &Layout,
        options: &JitOptions,
        plan: BufferPlan,
    ) -> Result<Self, JitError> {
        let checked_len = if options.bounds_checks {
            plan.arena_len
        } else {
            0
        };
        // A part kernel gets one descriptor per part, each with part p's view of every
        // buffer, and one thread (the parts already keep every core busy).
        let offset =
            |b: BufferId, part: usize| plan.buffers[b].offset + part * plan.buffers[b].part_stride;
        let mut matmuls = Vec::new();
        let mut convs = Vec::new();
        let mut calls: Vec<(usize, usize)> = Vec::new();
        for (k, kernel) in lowered.kernels.iter().enumerate() {
            let (parts, threads) = if lowered.in_parts(k) {
                (lowered.parts, 1)
            } else {
                (1, options.threads)
            };
            for part in 0..parts {
                match kernel {
                    Kernel::MatMul(mm) => matmuls.push(runtime::MatMulDesc::new(
                        (mm.batch, mm.m, mm.k, mm.n),
                        (offset(mm.a.buffer, part), mm.a),
                        (offset(mm.b.buffer, part), mm.b),
                        offset(mm.c, part),
                        threads,
                        checked_len,
                    )),
                    Kernel::Conv(conv) => convs.push(runtime::ConvDesc {
                        kind: conv.kind,
                        shape: conv.shape,
                        args: [offset(conv.args[0], part), offset(conv.args[1], part)],
                        out: offset(conv.out, part),
                        scratch: offset(conv.scratch, part),
                        ways: conv.ways,
                        checked_len,
                    }),
                    Kernel::Map { .. } | Kernel::Reduce { .. } | Kernel::Scan(_) => {}
                }
            }
            if matches!(kernel, Kernel::MatMul(_) | Kernel::Conv(_)) {
                calls.push((k, parts));
            }
        }
        // The descriptors' heap addresses stay fixed: the vectors are complete and only moved.
        let mut descriptors = vec![None; lowered.kernels.len()];
        let (mut next_matmul, mut next_conv) = (0, 0);
        for (k, parts) in calls {
            descriptors[k] = Some(match lowered.kernels[k] {
                Kernel::MatMul(_) => {
                    next_matmul += parts;
                    Descriptor::of(&matmuls[next_matmul - parts])
                }
                _ => {
                    next_conv += parts;
                    Descriptor::of(&convs[next_conv - parts])
                }
            });
        }
        let codegen = |e: &dyn fmt::Display| JitError::Codegen(e.to_string());

        // Cranelift's own check of the generated IR: a quarter of the LSTM's compile time, so
        // only in debug builds and with `--bounds-checks` (the differential tests check the
        // compiled code's results either way).
        let verify = if cfg!(debug_assertions) || options.bounds_checks {
            "true"
        } else {
            "false"
        };
        let flags = [("opt_level", "speed"), ("enable_verifier", verify)];
        let mut builder =
            JITBuilder::with_flags(&flags, default_libcall_names()).map_err(|e| codegen(&e))?;
        let exchanges: Vec<runtime::ExchangeDesc> = lowered
            .exchanges
            .iter()
            .map(|(buffers, exchange)| runtime::ExchangeDesc {
                spans: buffers
                    .iter()
                    .map(|&b| (plan.buffers[b].offset, plan.buffers[b].len))
                    .collect(),
                exchange: exchange.clone(),
                fused: Default::default(),
            })
            .collect();
        let exchange_addresses: Vec<i64> = exchanges
            .iter()
            .map(|d| d as *const runtime::ExchangeDesc as i64)
            .collect();
        if options.dtype == Dtype::F64 && !lowered.exchanges.is_empty() {
            return Err(JitError::Codegen(
                "a job's exchanges carry f32: compile with dtype f32".into(),
            ));
        }
        let symbols: [(&str, *const u8); 5] = [
            ("pcg_tick", runtime::tick as *const u8),
            ("pcg_parallel", runtime::parallel as *const u8),
            ("pcg_parts", runtime::parts as *const u8),
            ("pcg_exchange", runtime::exchange as *const u8),
            ("pcg_wide_unary", wide::unary_row as *const u8),
        ];
        for (name, address) in symbols {
            builder.symbol(name, address);
        }
        let floats = match options.dtype {
            Dtype::F32 => runtime::FloatCalls::of::<f32>(),
            Dtype::F64 => runtime::FloatCalls::of::<f64>(),
        };
        builder.symbol("pcg_matmul", floats.matmul);
        builder.symbol("pcg_conv", floats.conv);
        builder.symbol("pcg_powf", floats.powf);
        for (k, &address) in floats.unary.iter().enumerate() {
            builder.symbol(format!("pcg_unary_{k}"), address);
        }
        let mut module = JITModule::new(builder);
        let result = Self::define(
            &mut module,
            lowered,
            layout,
            &plan,
            (&descriptors, &exchange_addresses),
            options,
        );
        let (id, clif) = match result {
            Ok(x) => x,
            Err(e) => {
                // SAFETY: nothing compiled in this module has been handed out.
                unsafe { module.free_memory() };
                return Err(e);
            }
        };
        module.finalize_definitions().map_err(|e| codegen(&e))?;
        // A model too large ends in a diagnostic, not an abort or the OOM killer: the arena
        // must fit in what the system has available, and is allocated fallibly.
        let bytes = plan.arena_len * element_bytes(options.dtype);
        let fits = crate::memory::available().is_none_or(|room| bytes as u64 <= room);
        let arena = Arena::zeroed(bytes)
            .filter(|_| fits)
            .ok_or(JitError::OutOfMemory { bytes })?;
        let code = module.get_finalized_function(id);
        // SAFETY: the function was defined with exactly this signature.
        let entry = unsafe { std::mem::transmute::<*const u8, Entry>(code) };
        Ok(Function {
            module: Some(module),
            entry,
            clif,
            arena,
            plan,
            dtype: options.dtype,
            _matmuls: matmuls,
            _convs: convs,
            _exchanges: exchanges,
        })
    }

    /// Declares the runtime imports and defines the function; returns its id and CLIF text.
    fn define(
        module: &mut JITModule,
        lowered: &Lowered,
        layout: &Layout,
        plan: &BufferPlan,
        (descriptors, exchanges): (&[Option<Descriptor>], &[i64]),
        options: &JitOptions,
    ) -> Result<(FuncId, String), JitError> {
        let codegen = |e: &dyn fmt::Display| JitError::Codegen(e.to_string());
        let pointer = module.target_config().pointer_type();
        let mut call_sig = module.make_signature();
        call_sig.params.push(AbiParam::new(pointer));
        call_sig.params.push(AbiParam::new(pointer));
        call_sig.returns.push(AbiParam::new(types::I32));
        let float = scalar_lanes(options.dtype).float;
        let mut unary_sig = module.make_signature();
        unary_sig.params.push(AbiParam::new(float));
        unary_sig.returns.push(AbiParam::new(float));
        let mut binary_sig = unary_sig.clone();
        binary_sig.params.push(AbiParam::new(float));
        let mut parallel_sig = module.make_signature();
        parallel_sig.params.push(AbiParam::new(pointer));
        parallel_sig.params.push(AbiParam::new(pointer));
        parallel_sig.params.push(AbiParam::new(types::I64));
        parallel_sig.params.push(AbiParam::new(types::I64));
        parallel_sig.returns.push(AbiParam::new(types::I32));
        let mut tick_sig = module.make_signature();
        tick_sig.params.push(AbiParam::new(types::I64));
        let mut row_sig = module.make_signature();
        row_sig.params.push(AbiParam::new(types::I64));
        row_sig.params.push(AbiParam::new(pointer));
        row_sig.params.push(AbiParam::new(pointer));
        row_sig.params.push(AbiParam::new(types::I64));
        let mut import = |name: &str, sig| {
            module
                .declare_function(name, Linkage::Import, sig)
                .map_err(|e| codegen(&e))
        };
        let mut imports = vec![
            import("pcg_matmul", &call_sig)?,
            import("pcg_conv", &call_sig)?,
            import("pcg_powf", &binary_sig)?,
            import("pcg_parallel", &parallel_sig)?,
            import("pcg_parts", &parallel_sig)?,
            import("pcg_tick", &tick_sig)?,
            import("pcg_exchange", &call_sig)?,
            import("pcg_wide_unary", &row_sig)?,
        ];
        for k in 0..runtime::UNARY_OPS.len() {
            imports.push(import(&format!("pcg_unary_{k}"), &unary_sig)?);
        }
        let fma = has_fma(module.isa());
        let common = Common {
            plan,
            checks: &lowered.checks,
            profile: options.profile,
            descriptors,
            exchanges,
            bounds_checks: options.bounds_checks,
            fma,
            scalar: scalar_lanes(options.dtype),
            wide: options.dtype == Dtype::F32 && fma && wide::available(),
        };
        let mut clif = String::new();

        // Large elementwise kernels get a function of their own, run in parts by `parallel`.
        // Twice as many pieces as threads: a helper that starts late leaves the caller
        // less of its share to wait for.
        let pieces = if options.threads > 1 {
            2 * options.threads
        } else {
            1
        };
        let mut shared = Vec::new();
        for (k, kernel) in lowered.kernels.iter().enumerate() {
            let Some(extent) = codegen::shared_extent(plan, kernel, pieces) else {
                continue;
            };
            if lowered.in_parts(k) {
                continue;
            }
            // fn(arena, lo, hi) -> status
            let name = format!("pcg_kernel_{k}");
            let id = common.function(module, &imports, &name, 2, &mut clif, |t, params, _| {
                t.kernel = k;
                t.translate_piece(kernel, pieces, (params[1], params[2]));
            })?;
            shared.push((k, id, extent));
        }

        // A split loop body: `fn(arena, steps, part) -> status`, the whole loop on one part.
        let mut part_function = None;
        for segment in &layout.0 {
            if let Segment::Parts { first, second, .. } = segment {
                let kernels = &lowered.kernels;
                let ranges = (first.clone(), second.clone());
                part_function = Some(common.function(
                    module,
                    &imports,
                    "pcg_part",
                    2,
                    &mut clif,
                    |t, params, _| t.translate_part(kernels, ranges, params[1], params[2]),
                )?);
            }
        }

        // A split scan: `fn(arena, steps, part) -> status`, the whole scan on one part.
        let mut scan_functions = Vec::new();
        for &head in &lowered.split_scans {
            let kernels = &lowered.kernels;
            let name = format!("pcg_scan_{head}");
            let f = common.function(module, &imports, &name, 2, &mut clif, |t, params, _| {
                t.translate_scan_part(kernels, head, params[2])
            })?;
            scan_functions.push((head, f));
        }
        let declare_scans = |t: &mut codegen::FunctionTranslator<'_>, module: &mut JITModule| {
            for &(head, f) in &scan_functions {
                let f = module.declare_func_in_func(f, t.builder.func);
                t.scan_parts.insert(head, f);
            }
        };

        // fn(arena, steps) -> status
        let mut entry_clif = String::new();
        let id = common.function(
            module,
            &imports,
            "pcg_entry",
            1,
            &mut entry_clif,
            |t, params, module| {
                for &(k, f, extent) in &shared {
                    let piece = module.declare_func_in_func(f, t.builder.func);
                    t.shared.insert(k, (piece, extent, pieces));
                }
                if let Some(f) = part_function {
                    t.part_function = Some(module.declare_func_in_func(f, t.builder.func));
                }
                declare_scans(t, module);
                t.translate(&lowered.kernels, layout, params[1]);
            },
        )?;
        clif.insert_str(0, &entry_clif);
        Ok((id, clif))
    }

    /// The arena as elements of `T`, the dtype compiled for.
    fn elements<T: Float>(&self) -> &[T] {
        assert_eq!(T::DTYPE, self.dtype, "data of the dtype compiled for");
        self.arena.elements()
    }

    /// Whether the element at arena position `at` is NaN.
    fn is_nan(&self, at: usize) -> bool {
        match self.dtype {
            Dtype::F32 => self.elements::<f32>()[at].is_nan(),
            Dtype::F64 => self.elements::<f64>()[at].is_nan(),
        }
    }

    fn slice_mut<T: Float>(&mut self, buffer: BufferId) -> &mut [T] {
        assert_eq!(T::DTYPE, self.dtype, "data of the dtype compiled for");
        let b = &self.plan.buffers[buffer];
        &mut self.arena.elements_mut()[b.offset..b.offset + b.len]
    }

    fn tensor<T: Float>(&self, buffer: BufferId, shape: &Shape) -> Tensor<T> {
        let b = &self.plan.buffers[buffer];
        let data = self.elements()[b.offset..b.offset + b.len].to_vec();
        Tensor::from_shape_vec(shape.dims(), data).expect("buffers hold their value's elements")
    }

    fn call(&mut self, steps: usize) -> Result<(), JitError> {
        // SAFETY: the arena has the planned length, the plan was verified, and every kernel's
        // accesses were checked against it at compile time.
        let status = {
            let _flush = runtime::FlushSubnormals::new();
            unsafe { (self.entry)(self.arena.as_mut_ptr(), steps as i64) }
        };
        match status {
            0 => Ok(()),
            codegen::DIVERGED => Err(JitError::Diverged),
            codegen::INTERRUPTED => Err(JitError::Interrupted),
            k => Err(JitError::OutOfBounds {
                kernel: k as usize - 1,
            }),
        }
    }
}

/// What every function of one compiled program shares.
struct Common<'a> {
    plan: &'a BufferPlan,
    checks: &'a HashMap<usize, BufferId>,
    profile: bool,
    descriptors: &'a [Option<Descriptor>],
    exchanges: &'a [i64],
    bounds_checks: bool,
    fma: bool,
    scalar: math::Lanes,
    /// Maps of one transcendental function call `wide::unary_row` (see `wide`).
    wide: bool,
}

impl<'a> Common<'a> {
    /// Defines a function `fn(arena, i64 × extra) -> status` whose body `translate` emits,
    /// and appends its CLIF text to `clif`.
    fn function(
        &self,
        module: &mut JITModule,
        imports: &[FuncId],
        name: &str,
        extra: usize,
        clif: &mut String,
        translate: impl FnOnce(
            &mut FunctionTranslator<'_>,
            &[cranelift_codegen::ir::Value],
            &mut JITModule,
        ),
    ) -> Result<FuncId, JitError> {
        let codegen = |e: &dyn fmt::Display| JitError::Codegen(e.to_string());
        let mut sig = module.make_signature();
        sig.params
            .push(AbiParam::new(module.target_config().pointer_type()));
        for _ in 0..extra {
            sig.params.push(AbiParam::new(types::I64));
        }
        sig.returns.push(AbiParam::new(types::I32));
        let id = module
            .declare_function(name, Linkage::Local, &sig)
            .map_err(|e| codegen(&e))?;
        let mut ctx = module.make_context();
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        let mut fctx = FunctionBuilderContext::new();
        {
            let builder = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let (mut translator, params) = self.translator(builder, module, imports);
            translate(&mut translator, &params, module);
            translator.builder.finalize(module.target_config());
        }
        clif.push_str(&ctx.func.display().to_string());
        module
            .define_function(id, &mut ctx)
            .map_err(|e| codegen(&format!("{e:?}")))?;
        module.clear_context(&mut ctx);
        Ok(id)
    }

    /// A translator for a new function: the runtime imported, the entry block started, its
    /// first parameter the arena. Returns the function's parameters too.
    fn translator<'b>(
        &self,
        mut builder: FunctionBuilder<'b>,
        module: &mut JITModule,
        imports: &[FuncId],
    ) -> (FunctionTranslator<'b>, Vec<cranelift_codegen::ir::Value>)
    where
        'a: 'b,
    {
        let refs: Vec<_> = imports
            .iter()
            .map(|&f| module.declare_func_in_func(f, builder.func))
            .collect();
        let entry = builder.create_block();
        builder.append_block_params_for_function_params(entry);
        builder.switch_to_block(entry);
        let params = builder.block_params(entry).to_vec();
        let fail = builder.create_block();
        builder.append_block_param(fail, types::I32);
        let translator = FunctionTranslator {
            builder,
            arena: params[0],
            plan: self.plan,
            runtime: RuntimeRefs {
                matmul: refs[0],
                conv: refs[1],
                powf: refs[2],
                parallel: refs[3],
                parts: refs[4],
                tick: refs[5],
                exchange: refs[6],
                wide_unary: refs[7],
                unary: std::array::from_fn(|k| refs[8 + k]),
            },
            descriptors: self.descriptors,
            exchanges: self.exchanges,
            bounds_checks: self.bounds_checks,
            fma: self.fma,
            scalar: self.scalar,
            wide: self.wide,
            fail,
            kernel: 0,
            shared: HashMap::new(),
            part: None,
            part_function: None,
            scan_parts: HashMap::new(),
            iterations: HashMap::new(),
            checks: self.checks,
            profile: self.profile,
        };
        (translator, params)
    }
}

/// Whether `isa` has fused multiply-add instructions for f32 scalars and vectors: always on
/// AArch64, with the FMA extension (which Cranelift detects on the host) on x86-64.
fn has_fma(isa: &dyn cranelift_codegen::isa::TargetIsa) -> bool {
    match isa.name() {
        "aarch64" => true,
        "x64" => isa
            .isa_flags()
            .iter()
            .any(|f| f.name == "has_fma" && f.as_bool() == Some(true)),
        _ => false,
    }
}

/// The lanes of one element of `dtype`.
fn scalar_lanes(dtype: Dtype) -> math::Lanes {
    match dtype {
        Dtype::F32 => math::Lanes::SCALAR,
        Dtype::F64 => math::Lanes::SCALAR_F64,
    }
}

/// The size of one element of `dtype`, in bytes.
pub(crate) fn element_bytes(dtype: Dtype) -> usize {
    match dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    }
}

/// A leaf read from the bindings: its name, kind, shape and buffer.
#[derive(Clone, Debug)]
struct LeafSlot {
    name: String,
    kind: LeafKind,
    shape: Shape,
    buffer: BufferId,
}

/// Copies each leaf's value into its buffer, checking presence and shape. The value of a name
/// is taken from the first of `layers` that has it.
fn bind_leaves<T: Float>(
    function: &mut Function,
    slots: &[LeafSlot],
    layers: &[&Bindings<T>],
) -> Result<(), JitError> {
    for slot in slots {
        let Some(value) = layers.iter().find_map(|l| l.get(&slot.name)) else {
            return Err(JitError::Leaf(EvalError::MissingLeaf {
                name: slot.name.clone(),
                kind: slot.kind,
                shape: slot.shape.clone(),
            }));
        };
        if value.shape() != slot.shape.dims() {
            return Err(JitError::Leaf(EvalError::LeafShape {
                name: slot.name.clone(),
                expected: slot.shape.clone(),
                found: Shape::new(value.shape()),
            }));
        }
        let dst = function.slice_mut(slot.buffer);
        match value.as_slice() {
            Some(src) => copy_shared(dst, src),
            None => dst.iter_mut().zip(value.iter()).for_each(|(d, s)| *d = *s),
        }
    }
    Ok(())
}

/// Elements a chunk of a shared copy holds (1 MiB of `f32`).
const COPY_CHUNK: usize = 1 << 18;

/// `dst.copy_from_slice(src)`, in chunks shared with the team when there are several: a long
/// sequence's batch (an LSTM's one-hot inputs and targets at 500 steps, 19 MB) is copied
/// into the arena at each step, and one core alone moves it at a fraction of the machine's
/// memory bandwidth.
fn copy_shared<T: Float>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "a copy between slices of one length");
    if src.len() < 2 * COPY_CHUNK {
        dst.copy_from_slice(src);
        return;
    }
    let chunks = src.len().div_ceil(COPY_CHUNK);
    let out = runtime::Shared(dst.as_mut_ptr().cast::<u8>());
    team::run(chunks, &|i| {
        let start = i * COPY_CHUNK;
        let end = (start + COPY_CHUNK).min(src.len());
        // SAFETY: chunks are disjoint ranges of `dst`, which holds `src.len()` elements and
        // outlives the job; each is written by exactly one participant.
        let part = unsafe {
            std::slice::from_raw_parts_mut(out.get().cast::<T>().add(start), end - start)
        };
        part.copy_from_slice(&src[start..end]);
    });
}

fn verify_program(program: &Program) -> Result<(), JitError> {
    verify(program).map_err(JitError::Invalid)
}

/// One compiled [`Program`].
pub struct JitProgram {
    function: Function,
    leaves: Vec<LeafSlot>,
    outputs: Vec<(String, Shape, BufferId)>,
}

impl JitProgram {
    pub fn compile(program: &Program, options: &JitOptions) -> Result<JitProgram, JitError> {
        verify_program(program)?;
        let mut lowered = Lowered {
            conv_ways: options.threads,
            scan_parts: options.threads,
            split_scan_flops: options.split_scan_flops,
            ..Lowered::default()
        };
        let mut leaf_buffers = HashMap::new();
        let mut leaves = Vec::new();
        for (id, kind) in lower::needed_leaves(program) {
            let node = program.node(id);
            let name = node.name.clone().unwrap_or_default();
            let buffer = lowered.buffer(format!("{id} {name}"), node.shape.numel(), true);
            leaf_buffers.insert(id, buffer);
            leaves.push(LeafSlot {
                name,
                kind,
                shape: node.shape.clone(),
                buffer,
            });
        }
        let buffers = lowered.lower(program, &leaf_buffers, &[]);
        let mut outputs = Vec::new();
        for (output, buffer) in program.outputs.iter().zip(buffers) {
            lowered.buffers[buffer].pinned = true;
            outputs.push((
                output.name.clone(),
                program.shape(output.value).clone(),
                buffer,
            ));
        }
        let layout = Layout::straight(lowered.kernels.len());
        let function = Function::compile(&lowered, &layout, options)?;
        Ok(JitProgram {
            function,
            leaves,
            outputs,
        })
    }

    /// Runs the program: the same contract as `interp::eval_outputs::<T>`, `T` the dtype
    /// compiled for.
    pub fn run<T: Float>(&mut self, leaves: &Bindings<T>) -> Result<Bindings<T>, JitError> {
        self.run_layered(&[leaves])
    }

    /// [`run`](Self::run) with each leaf taken from the first of `layers` that names it:
    /// `run_layered(&[&state, &leaves])` is `run` on the leaves extended by the state, without
    /// building (and copying into) that merged map.
    pub fn run_layered<T: Float>(
        &mut self,
        layers: &[&Bindings<T>],
    ) -> Result<Bindings<T>, JitError> {
        bind_leaves(&mut self.function, &self.leaves, layers)?;
        self.function.call(0)?;
        Ok(self
            .outputs
            .iter()
            .map(|(name, shape, buffer)| (name.clone(), self.function.tensor(*buffer, shape)))
            .collect())
    }

    /// The Cranelift IR of the compiled function, before optimisation.
    pub fn clif(&self) -> &str {
        &self.function.clif
    }

    pub fn plan(&self) -> &BufferPlan {
        &self.function.plan
    }
}

#[cfg(test)]
mod tests {
    use super::lower::{Affine, Expr, Place};
    use super::*;

    /// A copy long enough to be shared lands every element where a plain copy would, at
    /// chunk boundaries and in a last partial chunk.
    #[test]
    fn shared_copies_are_exact() {
        for len in [0, 7, 2 * COPY_CHUNK - 1, 2 * COPY_CHUNK, 3 * COPY_CHUNK + 5] {
            let src: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut dst = vec![f32::NAN; len];
            copy_shared(&mut dst, &src);
            assert!(
                dst.iter()
                    .zip(&src)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{len}"
            );
        }
    }

    #[test]
    fn compiled_code_can_move_between_threads() {
        fn is_send<T: Send>() {}
        is_send::<JitProgram>();
        is_send::<JitLoop>();
    }

    /// A copy of 8 elements too many between two buffers: rejected by the plan's verifier,
    /// and caught by the generated checks when the plan is not verified — in a small kernel on
    /// one thread, and in one large enough to be shared between two.
    #[test]
    fn out_of_buffer_access_is_caught() {
        for (len, threads) in [(8, 1), (8, 2), (8184, 2)] {
            let mut lowered = Lowered::default();
            let from = lowered.buffer("from", len, true);
            let to = lowered.buffer("to", len, true);
            lowered.kernels.push(Kernel::Map {
                dims: vec![len + 8],
                out: Place {
                    buffer: to,
                    map: Affine::contiguous(&[len + 8]),
                },
                expr: Expr::Load {
                    buffer: from,
                    map: Affine::contiguous(&[len + 8]),
                },
            });
            let options = JitOptions {
                bounds_checks: true,
                threads,
                ..JitOptions::default()
            };
            let layout = Layout::straight(lowered.kernels.len());
            let e = Function::compile(&lowered, &layout, &options);
            assert!(matches!(
                e,
                Err(JitError::Plan(PlanError::OutOfBuffer { .. }))
            ));
            let mut plan = BufferPlan::new(&lowered);
            plan.arena_len += 16;
            let mut function =
                Function::build(&lowered, &layout, &options, plan).expect("compiles");
            assert!(
                matches!(function.call(0), Err(JitError::OutOfBounds { kernel: 0 })),
                "{len} elements on {threads} thread(s)"
            );
        }
    }
}
