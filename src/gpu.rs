//! The GPU context: adapter choice, device, queue, pipeline cache, and the one
//! place where work is submitted and waited for.
//!
//! Everything here is async at the core (so the browser can use the same code)
//! with `*_blocking` helpers on top for native callers. Every piece of GPU work
//! runs inside wgpu error scopes, so validation errors, out-of-memory and
//! device loss come back as [`Error`]s instead of panics, and every wait has a
//! timeout.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::pool::{Pool, Pooled, ScratchTextures, TextureSlot};
use crate::shader::{self, Kernel, PipelineKey};

/// Which graphics API to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// A hardware adapter if there is one, else a software one (lavapipe, llvmpipe, WARP).
    #[default]
    Auto,
    /// Vulkan (including lavapipe).
    Vulkan,
    /// Metal.
    Metal,
    /// Direct3D 12 (including WARP).
    Dx12,
    /// OpenGL / GLES (including llvmpipe).
    Gl,
}

impl BackendChoice {
    /// The wgpu backends this choice allows.
    pub fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Auto => wgpu::Backends::all(),
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::Gl => wgpu::Backends::GL,
        }
    }
}

impl FromStr for BackendChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(BackendChoice::Auto),
            "vulkan" | "vk" => Ok(BackendChoice::Vulkan),
            "metal" | "mtl" => Ok(BackendChoice::Metal),
            "dx12" | "d3d12" => Ok(BackendChoice::Dx12),
            "gl" | "gles" | "opengl" => Ok(BackendChoice::Gl),
            _ => Err(Error::UnknownBackend(s.to_string())),
        }
    }
}

/// How to choose and run an adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuOptions {
    /// Which API (`SAOBP_BACKEND`).
    pub backend: BackendChoice,
    /// A case-insensitive substring of the adapter's name (`SAOBP_ADAPTER`).
    pub adapter: Option<String>,
    /// The longest any single wait on the GPU may take (`SAOBP_TIMEOUT_S`).
    pub timeout: Duration,
    /// Device limits to request instead of the adapter's own, e.g.
    /// `wgpu::Limits::default()` to behave like a browser's default WebGPU
    /// device (128 MiB storage bindings). They must be within the adapter's.
    pub limits: Option<wgpu::Limits>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            backend: BackendChoice::Auto,
            adapter: None,
            timeout: Duration::from_secs(300),
            limits: None,
        }
    }
}

impl GpuOptions {
    /// Reads `SAOBP_BACKEND`, `SAOBP_ADAPTER` and `SAOBP_TIMEOUT_S`; unset
    /// variables keep their defaults, malformed ones are an error. (Kernel
    /// families read their own, e.g. `SAOBP_MATMUL`, see
    /// [`crate::MatmulFamily`].)
    pub fn from_env() -> Result<Self> {
        GpuOptions::from_env_with_backend(None)
    }

    /// As [`GpuOptions::from_env`], except that a `backend` given here (a
    /// command-line flag, say) replaces `SAOBP_BACKEND`, which is then not
    /// read at all: a malformed value there cannot fail a choice the caller
    /// made explicitly.
    pub fn from_env_with_backend(backend: Option<BackendChoice>) -> Result<Self> {
        let mut opts = GpuOptions::default();
        match backend {
            Some(b) => opts.backend = b,
            None => {
                if let Ok(b) = std::env::var("SAOBP_BACKEND") {
                    opts.backend = b.parse()?;
                }
            }
        }
        if let Ok(a) = std::env::var("SAOBP_ADAPTER") {
            if !a.trim().is_empty() {
                opts.adapter = Some(a);
            }
        }
        if let Ok(t) = std::env::var("SAOBP_TIMEOUT_S") {
            let secs: f64 = t.trim().parse().map_err(|_| {
                Error::invalid(format!(
                    "SAOBP_TIMEOUT_S = `{t}` is not a number of seconds"
                ))
            })?;
            if !(secs.is_finite() && secs > 0.0) {
                return Err(Error::invalid(format!(
                    "SAOBP_TIMEOUT_S = `{t}` must be a positive number of seconds"
                )));
            }
            opts.timeout = Duration::from_secs_f64(secs);
        }
        Ok(opts)
    }
}

/// What we know about one adapter, in a form that can be printed and compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// Graphics API.
    pub backend: wgpu::Backend,
    /// Discrete, integrated, virtual, CPU or other.
    pub device_type: wgpu::DeviceType,
    /// Driver name.
    pub driver: String,
    /// Driver version and details.
    pub driver_info: String,
}

impl AdapterSummary {
    fn from_info(info: &wgpu::AdapterInfo) -> Self {
        AdapterSummary {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
        }
    }

    /// A software rasterizer running on the CPU (lavapipe, llvmpipe, WARP, SwiftShader).
    pub fn is_software(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }

    /// The most loop iterations one shader invocation may run on this
    /// adapter, where that is capped: llvmpipe (lavapipe and Mesa's GL)
    /// counts every loop iteration of an invocation against one limiter of
    /// 65,535 and then ends every loop early, silently. Kernels whose loops
    /// grow with the problem split their work to stay under it.
    pub fn loop_budget(&self) -> Option<u64> {
        self.name
            .to_ascii_lowercase()
            .contains("llvmpipe")
            .then_some(65_535)
    }

    /// Lower is preferred by [`BackendChoice::Auto`]: hardware before software,
    /// then Vulkan/Metal/DX12 before GL.
    fn auto_rank(&self) -> (u8, u8) {
        let kind = match self.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let api = match self.backend {
            wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
            wgpu::Backend::BrowserWebGpu => 1,
            _ => 2,
        };
        (kind, api)
    }

    fn matches(&self, opts: &GpuOptions) -> bool {
        opts.backend.backends().contains(self.backend.into())
            && opts.adapter.as_ref().is_none_or(|want| {
                self.name
                    .to_ascii_lowercase()
                    .contains(&want.to_ascii_lowercase())
            })
    }
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{:?}, {:?}, driver: {} {}]",
            self.name, self.backend, self.device_type, self.driver, self.driver_info
        )
    }
}

/// Of `adapters`, the index that `opts` selects, if any.
///
/// With a backend or name filter the first match in rank order wins; `Auto`
/// prefers hardware over software.
pub fn choose_adapter(adapters: &[AdapterSummary], opts: &GpuOptions) -> Option<usize> {
    adapters
        .iter()
        .enumerate()
        .filter(|(_, a)| a.matches(opts))
        .min_by_key(|(i, a)| (a.auto_rank(), *i))
        .map(|(i, _)| i)
}

/// Advice printed whenever no adapter can be found.
pub const NO_ADAPTER_HINT: &str = "no GPU adapter found. Install a software one: \
    `apt-get install -y mesa-vulkan-drivers` gives lavapipe (Vulkan); Mesa's llvmpipe \
    (OpenGL, package libegl-mesa0) and WARP on Windows work too.";

fn new_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

async fn adapters_for(backend: BackendChoice) -> Vec<wgpu::Adapter> {
    new_instance(backend.backends())
        .enumerate_adapters(backend.backends())
        .await
}

/// Every adapter this machine offers for `backend`, in the order wgpu lists them.
pub async fn list_adapters(backend: BackendChoice) -> Vec<AdapterSummary> {
    adapters_for(backend)
        .await
        .iter()
        .map(|a| AdapterSummary::from_info(&a.get_info()))
        .collect()
}

/// Blocking form of [`list_adapters`].
#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters_blocking(backend: BackendChoice) -> Vec<AdapterSummary> {
    pollster::block_on(list_adapters(backend))
}

/// One step of recorded GPU work.
pub(crate) enum Step<'a> {
    /// A compute dispatch.
    Dispatch(Dispatch<'a>),
    /// A buffer-to-buffer copy of `bytes` bytes between byte offsets.
    Copy {
        src: &'a wgpu::Buffer,
        src_offset: u64,
        dst: &'a wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    },
    /// A copy of the first `texels` texels (16 bytes each) of `src` into the
    /// scratch texture `dst`, as they lie: texel `i` goes where `texel(i,
    /// layer_shift)` of `common.wgsl` places it, in rows of
    /// [`TEXELS_PER_ROW`] and layers of `2^layer_shift` rows.
    Texels {
        src: &'a wgpu::Buffer,
        texels: u32,
        dst: Panels,
        layer_shift: u32,
    },
}

/// Texels per row of the scratch textures that [`Step::Texels`] fills (and
/// of every panel texture, see `texel()` in `common.wgsl`): 2 KiB rows, a
/// multiple of the 256 bytes a buffer-to-texture copy needs per row.
pub(crate) const TEXELS_PER_ROW: u32 = 128;

/// Records [`Step::Texels`]: whole layers, then the whole rows of the last
/// layer, then the last row's texels; each copy is a run of whole rows of the
/// buffer, as a buffer-to-texture copy needs.
fn copy_texels(
    encoder: &mut wgpu::CommandEncoder,
    src: &wgpu::Buffer,
    texels: u32,
    dst: &wgpu::Texture,
    layer_shift: u32,
) {
    let row_bytes = u64::from(TEXELS_PER_ROW) * 16;
    let layer_rows = 1u32 << layer_shift;
    let layer_texels = u64::from(TEXELS_PER_ROW) << layer_shift;
    let texels = u64::from(texels);
    let layers = (texels / layer_texels) as u32;
    let rest = texels % layer_texels;
    let rows = (rest / u64::from(TEXELS_PER_ROW)) as u32;
    let last = (rest % u64::from(TEXELS_PER_ROW)) as u32;
    let mut copy = |offset: u64, origin: [u32; 3], extent: [u32; 3]| {
        if extent.contains(&0) {
            return;
        }
        encoder.copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo {
                buffer: src,
                layout: wgpu::TexelCopyBufferLayout {
                    offset,
                    bytes_per_row: Some(row_bytes as u32),
                    rows_per_image: Some(layer_rows),
                },
            },
            wgpu::TexelCopyTextureInfo {
                texture: dst,
                mip_level: 0,
                origin: wgpu::Origin3d {
                    x: origin[0],
                    y: origin[1],
                    z: origin[2],
                },
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::Extent3d {
                width: extent[0],
                height: extent[1],
                depth_or_array_layers: extent[2],
            },
        );
    };
    let full = u64::from(layers) * layer_texels * 16;
    copy(0, [0, 0, 0], [TEXELS_PER_ROW, layer_rows, layers]);
    copy(full, [0, 0, layers], [TEXELS_PER_ROW, rows, 1]);
    copy(
        full + u64::from(rows) * row_bytes,
        [0, rows, layers],
        [last, 1, 1],
    );
}

/// A scratch texture, shared by the steps that write and read it; the run
/// decides which pooled texture it is (see [`TextureSlot`]).
pub(crate) type Panels = Arc<TextureSlot>;

/// A resource bound to one binding of a dispatch.
#[derive(Clone)]
pub(crate) enum Binding<'a> {
    /// A storage buffer, borrowed from a tensor the caller keeps alive.
    Buffer(&'a wgpu::Buffer),
    /// A storage texture (read-only or write-only, as the shader declares it).
    /// Shared, so a step can carry the scratch textures it made; a run
    /// binds each to a pooled texture from its first step to its last.
    Texture(Panels),
}

impl<'a> From<&'a wgpu::Buffer> for Binding<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Binding::Buffer(buffer)
    }
}

/// One compute dispatch: a kernel, its uniform parameters (binding 0) and its
/// buffers and textures, bound by the names the kernel declares (the WGSL
/// variable names; a test checks the two agree).
pub(crate) struct Dispatch<'a> {
    pub kernel: &'static Kernel,
    pub params: Vec<u8>,
    bindings: Vec<(&'static str, Binding<'a>)>,
    /// Total number of workgroups; split over x and y when it exceeds the
    /// per-dimension cap. Shaders rebuild the linear id from `num_workgroups`.
    pub workgroups: u64,
    /// Floating-point operations of a matrix product (0 for other kernels),
    /// counted in [`Work::product_flops`].
    flops: u64,
}

impl<'a> Dispatch<'a> {
    /// `workgroups` workgroups of `kernel` with `params` as its uniforms.
    pub fn new(kernel: &'static Kernel, params: &impl bytemuck::NoUninit, workgroups: u64) -> Self {
        Dispatch {
            kernel,
            params: bytemuck::bytes_of(params).to_vec(),
            bindings: Vec::with_capacity(kernel.bindings.len()),
            workgroups,
            flops: 0,
        }
    }

    /// Binds `resource` to the kernel's binding called `name`.
    pub fn bind(mut self, name: &'static str, resource: impl Into<Binding<'a>>) -> Self {
        self.bindings.push((name, resource.into()));
        self
    }

    /// Records that this dispatch does `flops` floating-point operations of
    /// a matrix product.
    pub fn flops(mut self, flops: u64) -> Self {
        self.flops = flops;
        self
    }

    /// As a [`Step`].
    pub fn step(self) -> Step<'a> {
        Step::Dispatch(self)
    }

    /// The resources in binding order (1, 2, …), or an error naming the
    /// binding that is missing, unknown or given twice.
    fn ordered(&self) -> Result<Vec<&Binding<'a>>> {
        let k = self.kernel;
        for (i, (name, _)) in self.bindings.iter().enumerate() {
            if !k.bindings.contains(name) || self.bindings[..i].iter().any(|(n, _)| n == name) {
                return Err(Error::Validation(format!(
                    "{}: binding `{name}` is not declared or is bound twice",
                    k.label()
                )));
            }
        }
        k.bindings
            .iter()
            .map(|want| {
                self.bindings
                    .iter()
                    .find(|(n, _)| n == want)
                    .map(|(_, b)| b)
                    .ok_or_else(|| {
                        Error::Validation(format!("{}: binding `{want}` is not bound", k.label()))
                    })
            })
            .collect()
    }
}

/// The GPU work a [`Gpu`] has submitted since it was opened (see
/// [`Gpu::work`]): counts that show what a call really did, e.g. that a
/// path does no N³ product, without timing anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Work {
    /// Command submissions of kernels.
    pub submissions: u64,
    /// Compute dispatches.
    pub dispatches: u64,
    /// Floating-point operations (2 per multiply-add) of matrix products.
    pub product_flops: u64,
    /// Dispatches per kernel, as `name::entry`, in the order each first ran.
    pub kernels: Vec<(String, u64)>,
    /// Wall time per kernel (and `copy` for buffer copies), measured only
    /// while [`Gpu::set_profiling`] is on, in the order each first ran.
    pub kernel_time: Vec<(String, Duration)>,
    /// Time the host spent preparing, encoding and submitting command
    /// buffers (not waiting for them), measured on native targets only.
    pub host_time: Duration,
}

impl Work {
    /// The work done after `earlier` (a snapshot of the same context) up to this one.
    pub fn since(&self, earlier: &Work) -> Work {
        let kernels = self
            .kernels
            .iter()
            .filter_map(|(name, n)| {
                let before = earlier
                    .kernels
                    .iter()
                    .find(|(e, _)| e == name)
                    .map_or(0, |(_, n)| *n);
                (*n > before).then(|| (name.clone(), n - before))
            })
            .collect();
        Work {
            submissions: self.submissions - earlier.submissions.min(self.submissions),
            dispatches: self.dispatches - earlier.dispatches.min(self.dispatches),
            product_flops: self.product_flops - earlier.product_flops.min(self.product_flops),
            kernels,
            host_time: self.host_time.saturating_sub(earlier.host_time),
            kernel_time: self
                .kernel_time
                .iter()
                .filter_map(|(name, t)| {
                    let before = earlier
                        .kernel_time
                        .iter()
                        .find(|(k, _)| k == name)
                        .map_or(Duration::ZERO, |(_, t)| *t);
                    let d = t.saturating_sub(before);
                    (!d.is_zero()).then(|| (name.clone(), d))
                })
                .collect(),
        }
    }

    /// How many times the kernel labelled `name::entry` ran.
    pub fn count(&self, label: &str) -> u64 {
        self.kernels
            .iter()
            .find(|(k, _)| k == label)
            .map_or(0, |(_, n)| *n)
    }

    /// Adds `time` to `label`'s wall time.
    #[cfg(not(target_arch = "wasm32"))]
    fn add_time(&mut self, label: String, time: Duration) {
        match self.kernel_time.iter_mut().find(|(k, _)| *k == label) {
            Some((_, t)) => *t += time,
            None => self.kernel_time.push((label, time)),
        }
    }

    fn add(&mut self, dispatches: &[&Dispatch<'_>]) {
        self.submissions += 1;
        // Empty dispatches are never encoded.
        for d in dispatches.iter().filter(|d| d.workgroups > 0) {
            self.dispatches += 1;
            self.product_flops += d.flops;
            let label = d.kernel.label();
            match self.kernels.iter_mut().find(|(k, _)| *k == label) {
                Some((_, n)) => *n += 1,
                None => self.kernels.push((label, 1)),
            }
        }
    }
}

/// Work grouped by size for choices that depend on it (e.g. which matmul
/// variant is fastest): the cube root of the work (`batch · M · N · K` for a
/// product), in octaves from 32 to 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SizeClass(u8);

impl SizeClass {
    /// Every class, smallest first.
    pub const ALL: [SizeClass; 6] = [
        SizeClass(0),
        SizeClass(1),
        SizeClass(2),
        SizeClass(3),
        SizeClass(4),
        SizeClass(5),
    ];

    /// The class of `work` multiply-adds (`batch · M · N · K` for a product).
    pub fn of_work(work: u64) -> SizeClass {
        let s = (work as f64).cbrt();
        // Boundaries halfway (geometrically) between the representative sizes.
        let class = [45.0, 91.0, 181.0, 362.0, 724.0]
            .iter()
            .take_while(|&&edge| s >= edge)
            .count();
        SizeClass(class as u8)
    }

    /// The edge of the square product that stands for this class in tuning.
    pub fn representative(self) -> usize {
        32 << self.0
    }
}

impl fmt::Display for SizeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "~{}³", self.representative())
    }
}

/// Choices measured or set per device: `(operation, size class)` to a value
/// only the operation's module interprets (`None` class: the operation's
/// setting for every size).
type TuningCache = HashMap<(&'static str, Option<SizeClass>), Box<dyn Any + Send + Sync>>;

#[derive(Default)]
struct Health {
    /// Set by the device-lost callback.
    lost: Option<String>,
    /// An error no scope caught (e.g. from a thread without a scope).
    uncaptured: Option<String>,
}

/// A GPU context: one adapter, its device and queue, and the compiled pipelines.
///
/// `Gpu` is `Send + Sync` on native targets; share it behind an `Arc` or a
/// reference. Create one with [`Gpu::new`] (async) or [`Gpu::new_blocking`],
/// or wrap a device you already have with [`Gpu::from_device`].
pub struct Gpu {
    /// `None` for a device the caller opened ([`Gpu::from_device`]).
    adapter: Option<wgpu::Adapter>,
    device: wgpu::Device,
    queue: wgpu::Queue,
    summary: AdapterSummary,
    limits: wgpu::Limits,
    timeout: Duration,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    health: Arc<Mutex<Health>>,
    /// Bound where a kernel's optional input (e.g. a key mask) is absent.
    placeholder: wgpu::Buffer,
    /// Buffers of dropped tensors, uniforms and staging, for reuse.
    pool: Arc<Pool>,
    /// The subgroup size when the device has subgroups of one fixed size.
    subgroup_size: Option<u32>,
    /// Per-operation choices (kernel variants, block sizes) by size class.
    tuning: Mutex<TuningCache>,
    /// What has been submitted so far.
    work: Mutex<Work>,
    /// Whether [`Gpu::run`] times each step on its own ([`Gpu::set_profiling`]).
    profiling: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.summary)
            .finish()
    }
}

impl Gpu {
    /// Opens the adapter that `opts` selects (see [`choose_adapter`]).
    pub async fn new(opts: &GpuOptions) -> Result<Gpu> {
        let adapters = adapters_for(opts.backend).await;
        let summaries: Vec<_> = adapters
            .iter()
            .map(|a| AdapterSummary::from_info(&a.get_info()))
            .collect();
        let Some(i) = choose_adapter(&summaries, opts) else {
            return Err(Error::NoAdapter(if summaries.is_empty() {
                NO_ADAPTER_HINT.to_string()
            } else {
                let names: Vec<_> = summaries
                    .iter()
                    .map(|s| format!("{} ({:?})", s.name, s.backend))
                    .collect();
                format!(
                    "no adapter matches backend {:?} and name {:?}; available: {}",
                    opts.backend,
                    opts.adapter.as_deref().unwrap_or("any"),
                    names.join(", ")
                )
            }));
        };
        let adapter = adapters
            .into_iter()
            .nth(i)
            .ok_or_else(|| Error::NoAdapter("adapter list changed while choosing".to_string()))?;
        Gpu::from_adapter(adapter, opts).await
    }

    /// Blocking form of [`Gpu::new`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(opts: &GpuOptions) -> Result<Gpu> {
        pollster::block_on(Gpu::new(opts))
    }

    /// Opens the adapter chosen by the `SAOBP_*` environment variables.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_env_blocking() -> Result<Gpu> {
        Gpu::new_blocking(&GpuOptions::from_env()?)
    }

    /// Opens every adapter that matches `opts`' backend and name filter, one
    /// result per adapter (an adapter that fails to open gives its error).
    pub async fn all(opts: &GpuOptions) -> Vec<Result<Gpu>> {
        let mut out = Vec::new();
        for adapter in adapters_for(opts.backend).await {
            if AdapterSummary::from_info(&adapter.get_info()).matches(opts) {
                out.push(Gpu::from_adapter(adapter, opts).await);
            }
        }
        out
    }

    /// Blocking form of [`Gpu::all`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn all_blocking(opts: &GpuOptions) -> Vec<Result<Gpu>> {
        pollster::block_on(Gpu::all(opts))
    }

    /// Opens a device on `adapter` with the adapter's own limits (not wgpu's
    /// small defaults), so large storage buffers and workgroup memory work,
    /// unless `opts.limits` asks for others. `opts`' backend and name filters
    /// are not consulted.
    pub async fn from_adapter(adapter: wgpu::Adapter, opts: &GpuOptions) -> Result<Gpu> {
        let summary = AdapterSummary::from_info(&adapter.get_info());
        let timeout = opts.timeout;
        let limits = opts.limits.clone().unwrap_or_else(|| adapter.limits());
        // Subgroups speed up the texture matmul; every kernel also runs without
        // them (llvmpipe GL and some browsers do not offer them).
        let features = adapter.features() & wgpu::Features::SUBGROUP;
        let desc = wgpu::DeviceDescriptor {
            label: Some("saobp"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) =
            adapter
                .request_device(&desc)
                .await
                .map_err(|e| Error::RequestDevice {
                    adapter: summary.name.clone(),
                    message: e.to_string(),
                })?;
        let health = Arc::new(Mutex::new(Health::default()));
        {
            let h = health.clone();
            device.set_device_lost_callback(move |reason, msg| {
                h.lock().unwrap_or_else(PoisonError::into_inner).lost =
                    Some(format!("{reason:?}: {msg}"));
            });
            let h = health.clone();
            // wgpu's default handler panics; keep the error and report it on the next call.
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut h = h.lock().unwrap_or_else(PoisonError::into_inner);
                h.uncaptured.get_or_insert_with(|| e.to_string());
            }));
        }
        Ok(Gpu::assemble(Some(adapter), device, queue, timeout, health))
    }

    /// Wraps a device and queue the caller already has (a game engine's, a
    /// web page's, another library's), so the library's kernels run on it
    /// beside the caller's own work and can read and write the caller's
    /// buffers ([`Tensor::from_buffer`](crate::Tensor::from_buffer)).
    ///
    /// The library installs no callback on the device: the uncaptured-error
    /// handler and the device-lost callback stay the caller's. Its own calls
    /// still report their validation and out-of-memory errors as typed
    /// errors, through error scopes. The adapter's name, backend and driver
    /// come from [`wgpu::Device::adapter_info`]; its downlevel capabilities
    /// are unknown without the adapter, so [`Gpu::wgpu_adapter`] is `None`
    /// and the conformance report assumes a WebGPU-compliant device. The
    /// kernels use the device's own limits and features (subgroups when it
    /// was opened with them). Calls wait at most [`GpuOptions`]' default
    /// timeout.
    ///
    /// ```no_run
    /// # fn main() -> saobp::Result<()> {
    /// # let adapter = pollster::block_on(wgpu::Instance::default()
    /// #     .request_adapter(&wgpu::RequestAdapterOptions::default())).unwrap();
    /// let (device, queue) = pollster::block_on(adapter.request_device(&Default::default()))
    ///     .expect("a device");
    /// let gpu = saobp::Gpu::from_device(device.clone(), queue.clone())?;
    /// let x = saobp::Tensor::from_slice(&gpu, &[2], &[1.0, 2.0])?;
    /// # Ok(()) }
    /// ```
    ///
    /// Fails with [`Error::Limit`] when the device cannot run compute
    /// shaders (a WebGL2-class device).
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Gpu> {
        let limits = device.limits();
        if limits.max_compute_workgroups_per_dimension == 0
            || limits.max_compute_invocations_per_workgroup == 0
        {
            return Err(Error::Limit {
                what: "the library's compute shaders".to_string(),
                needed: 1,
                limit_name: "max_compute_workgroups_per_dimension",
                limit: u64::from(limits.max_compute_workgroups_per_dimension),
            });
        }
        Ok(Gpu::assemble(
            None,
            device,
            queue,
            GpuOptions::default().timeout,
            Arc::default(),
        ))
    }

    /// The context around an open device.
    fn assemble(
        adapter: Option<wgpu::Adapter>,
        device: wgpu::Device,
        queue: wgpu::Queue,
        timeout: Duration,
        health: Arc<Mutex<Health>>,
    ) -> Gpu {
        let limits = device.limits();
        let info = device.adapter_info();
        let summary = AdapterSummary::from_info(&info);
        let subgroup_size = (device.features().contains(wgpu::Features::SUBGROUP)
            && info.subgroup_min_size == info.subgroup_max_size)
            .then_some(info.subgroup_min_size);
        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Gpu {
            placeholder,
            pool: Arc::default(),
            subgroup_size,
            tuning: Mutex::new(HashMap::new()),
            work: Mutex::new(Work::default()),
            profiling: std::sync::atomic::AtomicBool::new(false),
            adapter,
            device,
            queue,
            summary,
            limits,
            timeout,
            pipelines: Mutex::new(HashMap::new()),
            health,
        }
    }

    /// The adapter this context runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.summary
    }

    /// The underlying wgpu adapter, for callers who need more than the
    /// summary; `None` for a device the caller opened ([`Gpu::from_device`]).
    pub fn wgpu_adapter(&self) -> Option<&wgpu::Adapter> {
        self.adapter.as_ref()
    }

    /// The adapter's downlevel capabilities; for a caller's device
    /// ([`Gpu::from_device`]) those of a WebGPU-compliant one.
    pub fn downlevel(&self) -> wgpu::DownlevelCapabilities {
        self.adapter
            .as_ref()
            .map(wgpu::Adapter::get_downlevel_capabilities)
            .unwrap_or_default()
    }

    /// The device's limits (the adapter's real ones).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The wgpu device, for callers who add their own kernels.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The longest any single wait may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Destroys the device, as a driver reset or a lost GPU would. Every later
    /// call on this context fails with [`Error::DeviceLost`]; open a new
    /// [`Gpu`] to go on. Meant for testing how callers handle device loss.
    pub fn destroy(&self) {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lost
            .get_or_insert_with(|| "destroyed by Gpu::destroy".to_string());
        self.device.destroy();
    }

    /// Bytes the device's memory allocator holds, where the backend reports it
    /// (Vulkan, DX12); `None` elsewhere.
    pub fn allocated_bytes(&self) -> Option<u64> {
        self.device
            .generate_allocator_report()
            .map(|r| r.total_allocated_bytes)
    }

    /// How many GPU buffers and textures this context has created. Buffers
    /// of dropped tensors, uniforms, readback staging and scratch textures
    /// are reused, so repeating a call with the same shapes leaves this
    /// unchanged.
    pub fn allocations(&self) -> u64 {
        self.pool.created()
    }

    /// Bytes held in free buffers and textures kept for reuse (at most 1 GiB).
    pub fn pooled_bytes(&self) -> u64 {
        self.pool.free_bytes()
    }

    /// Releases the free buffers and textures kept for reuse, e.g. after a
    /// large one-off job.
    pub fn trim_pool(&self) {
        self.pool.trim();
    }

    /// A buffer of `size` bytes from the pool, and whether it was reused (then
    /// its contents are stale) rather than created (then it is zeroed).
    pub(crate) fn take_buffer(
        &self,
        size: u64,
        usage: wgpu::BufferUsages,
        label: &'static str,
    ) -> (Pooled, bool) {
        self.pool.take(&self.device, size, usage, label)
    }

    /// The subgroup size, when the device has subgroups and they have one
    /// fixed size (8 on lavapipe); `None` otherwise.
    pub fn subgroup_size(&self) -> Option<u32> {
        self.subgroup_size
    }

    /// The value `op` keeps for `class` in this device's tuning cache (see
    /// [`Gpu::set_tuned`]), if it is there and of type `T`.
    pub(crate) fn tuned<T: Any + Clone>(
        &self,
        op: &'static str,
        class: Option<SizeClass>,
    ) -> Option<T> {
        self.tuning
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(op, class))
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
    }

    /// Keeps `value` as `op`'s choice for `class` on this device (`None`:
    /// for every size), e.g. the kernel variant a measurement found fastest.
    pub(crate) fn set_tuned<T: Any + Send + Sync>(
        &self,
        op: &'static str,
        class: Option<SizeClass>,
        value: T,
    ) {
        self.tuning
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((op, class), Box::new(value));
    }

    /// What this context has submitted since it was opened. Take one
    /// snapshot before a call and one after; [`Work::since`] gives the call's.
    pub fn work(&self) -> Work {
        self.work
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A scratch `rgba32float` 2D-array texture that kernels write and then
    /// read as storage textures. Only its size: the run that binds it takes
    /// the texture from the pool, inside its error scope.
    pub(crate) fn storage_texture(&self, width: u32, height: u32, layers: u32) -> Panels {
        Arc::new(TextureSlot::new(width, height, layers))
    }

    /// A small buffer to bind where an optional input is absent.
    pub(crate) fn placeholder(&self) -> &wgpu::Buffer {
        &self.placeholder
    }

    /// Fails with [`Error::DeviceLost`] once the device is gone, and reports an
    /// error that no scope caught.
    pub(crate) fn check_health(&self) -> Result<()> {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(msg) = &h.lost {
            return Err(Error::DeviceLost(msg.clone()));
        }
        if let Some(msg) = h.uncaptured.take() {
            return Err(Error::Validation(msg));
        }
        Ok(())
    }

    /// Checks that one buffer of `bytes` bytes can be created and bound as storage.
    pub(crate) fn check_buffer_size(&self, what: &str, bytes: u64) -> Result<()> {
        let binding = self.limits.max_storage_buffer_binding_size;
        if bytes > binding {
            return Err(Error::Limit {
                what: what.to_string(),
                needed: bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit: binding,
            });
        }
        if bytes > self.limits.max_buffer_size {
            return Err(Error::Limit {
                what: what.to_string(),
                needed: bytes,
                limit_name: "max_buffer_size",
                limit: self.limits.max_buffer_size,
            });
        }
        Ok(())
    }

    /// Runs `f` inside error scopes for out-of-memory, validation and internal
    /// errors, and turns the first one caught into an [`Error`].
    pub(crate) async fn scoped<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        self.check_health()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let out = f();
        // Scopes pop innermost first; the pops take effect at once, the futures only report.
        let internal = internal.pop();
        let validation = validation.pop();
        let oom = oom.pop();
        let errors = [oom.await, validation.await, internal.await];
        self.check_health()?;
        match errors.into_iter().flatten().next() {
            Some(e) => Err(e.into()),
            None => Ok(out),
        }
    }

    fn pipeline(&self, kernel: &'static Kernel) -> wgpu::ComputePipeline {
        let mut cache = self
            .pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cache
            .entry(kernel.key())
            .or_insert_with(|| {
                let module = self
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(kernel.family),
                        source: wgpu::ShaderSource::Wgsl(kernel.source.into()),
                    });
                self.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(kernel.entry),
                        layout: None,
                        module: &module,
                        entry_point: Some(kernel.entry),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: kernel.constants,
                            ..Default::default()
                        },
                        cache: None,
                    })
            })
            .clone()
    }

    /// Splits `total` workgroups over x and y within the per-dimension cap.
    fn grid(&self, total: u64) -> Result<(u32, u32)> {
        let cap = u64::from(self.limits.max_compute_workgroups_per_dimension.max(1));
        let x = total.min(cap);
        let y = total.div_ceil(cap.max(1)).max(1);
        if y > cap {
            return Err(Error::Limit {
                what: "a dispatch".to_string(),
                needed: total,
                limit_name: "max_compute_workgroups_per_dimension squared",
                limit: cap * cap,
            });
        }
        Ok((x as u32, y as u32))
    }

    /// Profiling: while on, every recorded step is submitted alone and waited
    /// for, and its wall time is added to its kernel's in
    /// [`Work::kernel_time`]. Far slower than normal runs (one submission and
    /// one wait per dispatch); for finding where time goes, not for timing
    /// whole runs. Native targets only; the browser ignores it.
    pub fn set_profiling(&self, on: bool) {
        self.profiling
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records `steps` in order into one command buffer and submits it.
    /// Does not wait for the GPU; a later read does.
    pub(crate) async fn run(&self, steps: &[Step<'_>]) -> Result<()> {
        let mut scratch = ScratchTextures::new(steps.iter().enumerate().flat_map(|(i, step)| {
            let (bindings, copied) = match step {
                Step::Dispatch(d) => (d.bindings.as_slice(), None),
                Step::Copy { .. } => (&[][..], None),
                Step::Texels { dst, .. } => (&[][..], Some((i, dst))),
            };
            bindings
                .iter()
                .filter_map(move |(_, b)| match b {
                    Binding::Texture(t) => Some((i, t)),
                    Binding::Buffer(_) => None,
                })
                .chain(copied)
        }));
        #[cfg(not(target_arch = "wasm32"))]
        if self.profiling.load(std::sync::atomic::Ordering::Relaxed) {
            for i in 0..steps.len() {
                let label = match &steps[i] {
                    Step::Dispatch(d) => d.kernel.label(),
                    Step::Copy { .. } => "copy".to_string(),
                    Step::Texels { .. } => "copy to texture".to_string(),
                };
                let start = std::time::Instant::now();
                self.record(&steps[i..=i], i, &mut scratch).await?;
                self.device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| Error::Validation(e.to_string()))?;
                self.work
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .add_time(label, start.elapsed());
            }
            return Ok(());
        }
        self.record(steps, 0, &mut scratch).await
    }

    /// [`Gpu::run`]'s recording and submission, timed into
    /// [`Work::host_time`].
    async fn record(
        &self,
        steps: &[Step<'_>],
        first: usize,
        scratch: &mut ScratchTextures,
    ) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        let start = std::time::Instant::now();
        let recorded = self.record_untimed(steps, first, scratch).await;
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.work
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .host_time += start.elapsed();
        }
        recorded
    }

    /// Records `steps`, the run's steps from index `first` on, binding their
    /// scratch textures through `scratch`.
    async fn record_untimed(
        &self,
        steps: &[Step<'_>],
        first: usize,
        scratch: &mut ScratchTextures,
    ) -> Result<()> {
        let dispatches: Vec<&Dispatch> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Dispatch(d) => Some(d),
                Step::Copy { .. } | Step::Texels { .. } => None,
            })
            .collect();
        let grids = dispatches
            .iter()
            .map(|d| self.grid(d.workgroups))
            .collect::<Result<Vec<_>>>()?;
        let bindings = dispatches
            .iter()
            .map(|d| d.ordered())
            .collect::<Result<Vec<_>>>()?;
        // A kernel the device cannot run is refused before anything is
        // built, naming the limit, rather than failing validation.
        for d in &dispatches {
            if let Some((what, needed, limit_name, limit)) =
                shader::over_limit(d.kernel, &self.limits)
            {
                return Err(Error::Limit {
                    what,
                    needed,
                    limit_name,
                    limit,
                });
            }
        }
        let pipelines = self
            .scoped(|| {
                dispatches
                    .iter()
                    .map(|d| self.pipeline(d.kernel))
                    .collect::<Vec<_>>()
            })
            .await;
        let pipelines = match pipelines {
            Ok(p) => p,
            Err(e) => {
                // A pipeline that failed to build is invalid: do not keep it.
                let mut cache = self
                    .pipelines
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for d in dispatches {
                    cache.remove(&d.kernel.key());
                }
                return Err(e);
            }
        };
        // Every dispatch's parameters go into one pooled uniform buffer, at
        // offsets the device accepts for uniform bindings.
        let align = u64::from(self.limits.min_uniform_buffer_offset_alignment.max(16));
        let mut offsets = Vec::with_capacity(dispatches.len());
        let mut packed: Vec<u8> = Vec::new();
        for d in &dispatches {
            offsets.push(packed.len() as u64);
            packed.extend_from_slice(&d.params);
            packed.resize((packed.len() as u64).next_multiple_of(align) as usize, 0);
        }
        // Sizes rounded up to a power of two, so runs of different lengths share buffers.
        let params = (!packed.is_empty()).then(|| {
            let size = (packed.len() as u64).next_power_of_two().max(256);
            let (params, _) = self.take_buffer(
                size,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                "params",
            );
            self.queue.write_buffer(params.buffer(), 0, &packed);
            params
        });
        self.scoped(|| {
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            let mut offsets = offsets.iter();
            let mut prepared = dispatches.iter().zip(&bindings).zip(&pipelines).zip(&grids);
            // The scratch textures of the last dispatch, freed for later
            // slots once it is recorded.
            let mut previous: Option<(usize, &[&Binding])> = None;
            for (i, step) in steps.iter().enumerate() {
                if let Some((j, resources)) = previous.take() {
                    scratch.release_after(j, resources);
                }
                let (d, resources, pipeline, (x, y)) = match step {
                    Step::Copy {
                        src,
                        src_offset,
                        dst,
                        dst_offset,
                        bytes,
                    } => {
                        if *bytes > 0 {
                            encoder.copy_buffer_to_buffer(
                                src,
                                *src_offset,
                                dst,
                                *dst_offset,
                                *bytes,
                            );
                        }
                        continue;
                    }
                    Step::Texels {
                        src,
                        texels,
                        dst,
                        layer_shift,
                    } => {
                        let view = scratch.bind(&self.pool, &self.device, dst);
                        copy_texels(&mut encoder, src, *texels, view.texture(), *layer_shift);
                        scratch.release_after(first + i, &[&Binding::Texture(dst.clone())]);
                        continue;
                    }
                    Step::Dispatch(_) => match prepared.next() {
                        Some((((d, resources), pipeline), grid)) => (d, resources, pipeline, grid),
                        None => break,
                    },
                };
                previous = Some((first + i, resources.as_slice()));
                let offset = offsets.next().copied().unwrap_or(0);
                let (Some(params), Some(size)) =
                    (&params, wgpu::BufferSize::new(d.params.len() as u64))
                else {
                    continue;
                };
                if d.workgroups == 0 {
                    continue;
                }
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: params.buffer(),
                        offset,
                        size: Some(size),
                    }),
                }];
                let views: Vec<Option<wgpu::TextureView>> = resources
                    .iter()
                    .map(|b| match b {
                        Binding::Texture(t) => Some(scratch.bind(&self.pool, &self.device, t)),
                        Binding::Buffer(_) => None,
                    })
                    .collect();
                for (k, (b, view)) in resources.iter().zip(&views).enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: k as u32 + 1,
                        resource: match (b, view) {
                            (_, Some(view)) => wgpu::BindingResource::TextureView(view),
                            (Binding::Buffer(b), None) => b.as_entire_binding(),
                            (Binding::Texture(_), None) => continue,
                        },
                    });
                }
                let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(d.kernel.entry),
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                });
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(d.kernel.entry),
                    timestamp_writes: None,
                });
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(*x, *y, 1);
            }
            if let Some((j, resources)) = previous {
                scratch.release_after(j, resources);
            }
            self.queue.submit([encoder.finish()]);
        })
        .await?;
        if !dispatches.is_empty() {
            self.work
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(&dispatches);
        }
        Ok(())
    }

    /// The outcome of a `map_async`, waiting at most the context's timeout.
    ///
    /// On native targets this polls without blocking and sleeps between
    /// polls (10 µs, doubling to 0.5 ms) rather than asking the driver to wait
    /// with a timeout: some drivers (lavapipe among them) block past the
    /// timeout they are given, and a wait must never hang. Polling until the
    /// callback itself has run also covers callbacks fired by another thread's
    /// poll. In the browser the promise resolves on its own.
    async fn await_map(
        &self,
        receiver: &mut futures_channel::oneshot::Receiver<
            std::result::Result<(), wgpu::BufferAsyncError>,
        >,
    ) -> Result<std::result::Result<(), wgpu::BufferAsyncError>> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let start = std::time::Instant::now();
            let mut pause = std::time::Duration::from_micros(10);
            loop {
                if let Err(e) = self.device.poll(wgpu::PollType::Poll) {
                    return Err(Error::Internal(e.to_string()));
                }
                match receiver.try_recv() {
                    Ok(Some(r)) => return Ok(r),
                    Ok(None) => {}
                    Err(_) => return Err(Error::Readback("the map callback was dropped".into())),
                }
                self.check_health()?;
                if start.elapsed() > self.timeout {
                    return Err(Error::Timeout(self.timeout));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_micros(500));
            }
        }
        #[cfg(target_arch = "wasm32")]
        {
            let r = receiver
                .await
                .map_err(|_| Error::Readback("the map callback was dropped".into()))?;
            self.check_health()?;
            Ok(r)
        }
    }

    /// Copies the first `len` f32 values of `buffer` back to the host.
    pub(crate) async fn read_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        self.read_f32_at(buffer, 0, len).await
    }

    /// Copies `len` f32 values of `buffer`, from element `offset` on, back to
    /// the host. The caller keeps the range inside the buffer.
    pub(crate) async fn read_f32_at(
        &self,
        buffer: &wgpu::Buffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<f32>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = (len * 4) as u64;
        let (sender, mut receiver) = futures_channel::oneshot::channel();
        let (pooled, _) = self.take_buffer(
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            "readback",
        );
        let submitted = self
            .scoped(|| {
                let staging = pooled.buffer();
                let mut encoder = self
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
                encoder.copy_buffer_to_buffer(buffer, offset as u64 * 4, staging, 0, bytes);
                self.queue.submit([encoder.finish()]);
                staging.map_async(wgpu::MapMode::Read, .., move |r| {
                    let _ = sender.send(r);
                });
            })
            .await;
        let out = match submitted {
            Ok(()) => self.read_mapped(&pooled, &mut receiver).await,
            Err(e) => Err(e),
        };
        match out {
            Ok(out) => {
                pooled.buffer().unmap();
                Ok(out)
            }
            Err(e) => {
                // A map still pending or failed would trouble the next owner.
                pooled.discard();
                Err(e)
            }
        }
    }

    /// Waits for the map of `staging` and copies its contents out.
    async fn read_mapped(
        &self,
        staging: &Pooled,
        receiver: &mut futures_channel::oneshot::Receiver<
            std::result::Result<(), wgpu::BufferAsyncError>,
        >,
    ) -> Result<Vec<f32>> {
        let mapped = self.await_map(receiver).await?;
        mapped.map_err(|e| Error::Readback(e.to_string()))?;
        let view = staging
            .buffer()
            .get_mapped_range(..)
            .map_err(|e| Error::Readback(e.to_string()))?;
        Ok(bytemuck::cast_slice::<u8, f32>(&view).to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, backend: wgpu::Backend, ty: wgpu::DeviceType) -> AdapterSummary {
        AdapterSummary {
            name: name.into(),
            backend,
            device_type: ty,
            driver: String::new(),
            driver_info: String::new(),
        }
    }

    #[test]
    fn backend_names_parse() {
        assert_eq!("Vulkan".parse::<BackendChoice>(), Ok(BackendChoice::Vulkan));
        assert_eq!("gl".parse::<BackendChoice>(), Ok(BackendChoice::Gl));
        assert_eq!("auto".parse::<BackendChoice>(), Ok(BackendChoice::Auto));
        assert_eq!(
            "cuda".parse::<BackendChoice>(),
            Err(Error::UnknownBackend("cuda".into()))
        );
    }

    #[test]
    fn auto_prefers_hardware_then_vulkan_over_gl() {
        use wgpu::{Backend, DeviceType};
        let list = vec![
            summary("llvmpipe", Backend::Gl, DeviceType::Cpu),
            summary("llvmpipe (LLVM)", Backend::Vulkan, DeviceType::Cpu),
            summary("Intel Iris", Backend::Gl, DeviceType::IntegratedGpu),
        ];
        let auto = GpuOptions::default();
        assert_eq!(choose_adapter(&list, &auto), Some(2));
        assert_eq!(choose_adapter(&list[..2], &auto), Some(1));
        let gl = GpuOptions {
            backend: BackendChoice::Gl,
            adapter: Some("LLVMPIPE".into()),
            ..auto.clone()
        };
        assert_eq!(choose_adapter(&list, &gl), Some(0));
        let none = GpuOptions {
            adapter: Some("radeon".into()),
            ..auto
        };
        assert_eq!(choose_adapter(&list, &none), None);
    }
}
