//! A compute kernel declared once, and what naga reads from its WGSL.
//!
//! A [`Kernel`] is one entry point of one `shaders/*.wgsl` family, with
//! everything the host must agree on with the shader: the names of its
//! bindings (binding 0 is always the uniform `Params`; the rest follow in
//! order), the byte size of its Rust `Params` struct, its workgroup size and
//! its pipeline-overridable constants. Families declare their kernels with
//! the `kernels!` macro (`src/kernels/mod.rs`), and the registry
//! (`kernels::registry`) lists them all; tests check every declaration
//! against the WGSL with [`reflect`], and [`crate::Gpu`] uses the same
//! reflection to refuse, with a typed error, a kernel the device's limits
//! cannot run.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

/// One compute entry point of a `shaders/*.wgsl` family.
#[derive(Debug)]
pub(crate) struct Kernel {
    /// The family: the WGSL file (without `.wgsl`) and its Rust module.
    pub family: &'static str,
    /// What reports call it (`name::entry`): the family, or the family and
    /// the configuration its constants select (e.g. `matmul_tiled_128`).
    pub name: &'static str,
    /// The family's WGSL source as compiled (with `common.wgsl` in front).
    pub source: &'static str,
    /// The entry point.
    pub entry: &'static str,
    /// The WGSL names of bindings 1, 2, …, in order. Dispatches bind
    /// resources by these names.
    pub bindings: &'static [&'static str],
    /// Bytes of the Rust struct mirrored by the WGSL `Params` (binding 0).
    pub params: usize,
    /// Invocations per workgroup, as `@workgroup_size` declares it.
    pub workgroup_size: u32,
    /// Values of the shader's `override` constants for this kernel; part of
    /// the pipeline's cache key.
    pub constants: &'static [(&'static str, f64)],
}

impl Kernel {
    /// A kernel of `family` with `params` bytes of uniforms, 64 invocations
    /// per workgroup and no overridden constants.
    pub const fn new(
        family: &'static str,
        source: &'static str,
        entry: &'static str,
        params: usize,
        bindings: &'static [&'static str],
    ) -> Kernel {
        Kernel {
            family,
            name: family,
            source,
            entry,
            bindings,
            params,
            workgroup_size: 64,
            constants: &[],
        }
    }

    /// The same kernel with another workgroup size.
    pub const fn workgroup(self, size: u32) -> Kernel {
        Kernel {
            workgroup_size: size,
            ..self
        }
    }

    /// The same entry point with `constants` overridden, reported as `name`.
    pub const fn with_constants(
        self,
        name: &'static str,
        constants: &'static [(&'static str, f64)],
    ) -> Kernel {
        Kernel {
            name,
            constants,
            ..self
        }
    }

    /// `name::entry`, as reports and errors print it.
    pub fn label(&self) -> String {
        format!("{}::{}", self.name, self.entry)
    }

    /// The pipeline cache key: the entry point, its source and its constants.
    pub fn key(&self) -> PipelineKey {
        PipelineKey {
            source: self.source.as_ptr() as usize,
            entry: self.entry,
            constants: self
                .constants
                .iter()
                .map(|(name, v)| (*name, v.to_bits()))
                .collect(),
        }
    }

    /// Workgroups covering `elements` invocations, one element each.
    pub fn groups_for(&self, elements: usize) -> u64 {
        (elements as u64).div_ceil(u64::from(self.workgroup_size.max(1)))
    }
}

/// Identifies one compiled pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    source: usize,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
}

/// What an entry point declares and uses, read from its WGSL with naga. The
/// pipelines use automatic layouts, so only the bindings and workgroup
/// variables the entry point uses count, exactly as wgpu counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reflection {
    /// Storage buffers bound.
    pub storage_buffers: u32,
    /// Storage textures bound.
    pub storage_textures: u32,
    /// Bytes of `var<workgroup>` memory.
    pub workgroup_bytes: u32,
    /// `@workgroup_size` (zeros where it depends on overrides).
    pub workgroup_size: [u32; 3],
    /// `(binding, variable name)` of every resource the entry point uses,
    /// by binding number.
    pub bindings: Vec<(u32, String)>,
    /// Byte size of the uniform at binding 0, if the entry point uses one.
    pub params: Option<u32>,
    /// Names of the module's `override` constants.
    pub overrides: Vec<String>,
}

impl Reflection {
    /// Invocations per workgroup.
    pub fn invocations(&self) -> u64 {
        self.workgroup_size.iter().map(|&d| u64::from(d)).product()
    }
}

/// The [`Reflection`] of `kernel`'s entry point, analysed once per process.
pub(crate) fn reflect(kernel: &Kernel) -> Result<Reflection, String> {
    type Cache = HashMap<(usize, &'static str), Result<Reflection, String>>;
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let key = (kernel.source.as_ptr() as usize, kernel.entry);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(r) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return r.clone();
    }
    let r = analyse(kernel);
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, r.clone());
    r
}

fn analyse(kernel: &Kernel) -> Result<Reflection, String> {
    let module = naga::front::wgsl::parse_str(kernel.source)
        .map_err(|e| format!("{}: {}", kernel.family, e.emit_to_string(kernel.source)))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
    .validate(&module)
    .map_err(|e| format!("{}: {}", kernel.family, e.emit_to_string(kernel.source)))?;
    let (index, entry) = module
        .entry_points
        .iter()
        .enumerate()
        .find(|(_, e)| e.name == kernel.entry)
        .ok_or_else(|| format!("{} has no entry point {}", kernel.family, kernel.entry))?;
    let uses = info.get_entry_point(index);
    let mut out = Reflection {
        storage_buffers: 0,
        storage_textures: 0,
        workgroup_bytes: 0,
        workgroup_size: entry.workgroup_size,
        bindings: Vec::new(),
        params: None,
        overrides: module
            .overrides
            .iter()
            .filter_map(|(_, o)| o.name.clone())
            .collect(),
    };
    for (handle, var) in module.global_variables.iter() {
        if uses[handle].is_empty() {
            continue;
        }
        let size = module.types[var.ty].inner.size(module.to_ctx());
        match var.space {
            naga::AddressSpace::Storage { .. } => out.storage_buffers += 1,
            naga::AddressSpace::WorkGroup => out.workgroup_bytes += size,
            naga::AddressSpace::Handle => {
                if let naga::TypeInner::Image {
                    class: naga::ImageClass::Storage { .. },
                    ..
                } = module.types[var.ty].inner
                {
                    out.storage_textures += 1;
                }
            }
            _ => {}
        }
        if let Some(binding) = &var.binding {
            if var.space == naga::AddressSpace::Uniform && binding.binding == 0 {
                out.params = Some(size);
            } else {
                let name = var.name.clone().unwrap_or_default();
                out.bindings.push((binding.binding, name));
            }
        }
    }
    out.bindings.sort();
    Ok(out)
}

/// Why a device with `limits` cannot run `kernel`, as `(what, needed,
/// limit name, limit)`; `None` when it can (or when the shader does not
/// analyse: then pipeline creation reports the real error).
pub(crate) fn over_limit(
    kernel: &Kernel,
    limits: &wgpu::Limits,
) -> Option<(String, u64, &'static str, u64)> {
    let r = reflect(kernel).ok()?;
    let [x, y, z] = r.workgroup_size;
    let needs: [(u64, &str, u64, &'static str); 7] = [
        (
            r.storage_buffers.into(),
            "storage buffers",
            limits.max_storage_buffers_per_shader_stage.into(),
            "max_storage_buffers_per_shader_stage",
        ),
        (
            r.storage_textures.into(),
            "storage textures",
            limits.max_storage_textures_per_shader_stage.into(),
            "max_storage_textures_per_shader_stage",
        ),
        (
            r.workgroup_bytes.into(),
            "bytes of workgroup memory",
            limits.max_compute_workgroup_storage_size.into(),
            "max_compute_workgroup_storage_size",
        ),
        (
            r.invocations(),
            "invocations per workgroup",
            limits.max_compute_invocations_per_workgroup.into(),
            "max_compute_invocations_per_workgroup",
        ),
        (
            x.into(),
            "invocations along x",
            limits.max_compute_workgroup_size_x.into(),
            "max_compute_workgroup_size_x",
        ),
        (
            y.into(),
            "invocations along y",
            limits.max_compute_workgroup_size_y.into(),
            "max_compute_workgroup_size_y",
        ),
        (
            z.into(),
            "invocations along z",
            limits.max_compute_workgroup_size_z.into(),
            "max_compute_workgroup_size_z",
        ),
    ];
    needs
        .into_iter()
        .find(|(need, _, limit, _)| need > limit)
        .map(|(need, what, limit, name)| {
            (format!("{} ({what})", kernel.label()), need, name, limit)
        })
}
