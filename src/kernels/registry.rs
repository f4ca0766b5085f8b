//! Every kernel of every family, from each module's one `kernels!`
//! declaration. A new kernel needs no entry here; a new family adds its
//! module's `KERNELS` to `FAMILIES`.

use crate::shader::{self, Kernel};

use super::{bert, flash, gpt, matmul, metrics, optim, saobp, softmax};

/// Each family module's declarations.
const FAMILIES: &[&[&Kernel]] = &[
    bert::KERNELS,
    flash::KERNELS,
    gpt::KERNELS,
    matmul::KERNELS,
    metrics::KERNELS,
    optim::KERNELS,
    saobp::KERNELS,
    softmax::KERNELS,
];

/// Every declared kernel.
pub(crate) fn kernels() -> impl Iterator<Item = &'static Kernel> {
    FAMILIES.iter().flat_map(|family| family.iter().copied())
}

/// Every shader family: `(file name, WGSL source as compiled)`, i.e. with
/// `common.wgsl` (and any shared pieces) in front, once per family.
#[doc(hidden)]
pub fn shaders() -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = Vec::new();
    for k in kernels() {
        let file = format!("{}.wgsl", k.family);
        if !out.iter().any(|(f, _)| *f == file) {
            out.push((file, k.source));
        }
    }
    out
}

/// How each declaration disagrees with its WGSL, as read by naga: the
/// entry point exists and validates; its bindings are exactly the declared
/// names at bindings 1, 2, …; its uniform `Params` (binding 0) has the Rust
/// struct's size; its `@workgroup_size` is the declared one; and every
/// overridden constant is an `override` of the shader. Empty when all agree.
#[doc(hidden)]
pub fn mismatches() -> Vec<String> {
    let mut out = Vec::new();
    let mut labels: Vec<(String, String)> = Vec::new();
    for k in kernels() {
        let label = k.label();
        let r = match shader::reflect(k) {
            Ok(r) => r,
            Err(e) => {
                out.push(format!("{label}: {e}"));
                continue;
            }
        };
        let declared: Vec<(u32, String)> = k
            .bindings
            .iter()
            .enumerate()
            .map(|(i, name)| (i as u32 + 1, name.to_string()))
            .collect();
        if r.bindings != declared {
            out.push(format!(
                "{label}: declared bindings {declared:?}, the WGSL entry point uses {:?}",
                r.bindings
            ));
        }
        if r.params.map(|p| p as usize) != Some(k.params) {
            out.push(format!(
                "{label}: Rust Params is {} bytes, WGSL Params (binding 0) {:?}",
                k.params, r.params
            ));
        }
        if r.invocations() != u64::from(k.workgroup_size) {
            out.push(format!(
                "{label}: declared workgroup size {}, WGSL @workgroup_size {:?}",
                k.workgroup_size, r.workgroup_size
            ));
        }
        for (name, _) in k.constants {
            if !r.overrides.iter().any(|o| o == name) {
                out.push(format!(
                    "{label}: sets constant {name}, which is not an `override` of the shader (it has {:?})",
                    r.overrides
                ));
            }
        }
        // One report label per configuration of an entry point.
        let key = format!("{:?}", k.key());
        if let Some((other, _)) = labels.iter().find(|(l, kk)| *l == label && *kk != key) {
            out.push(format!("{label} names two configurations ({other})"));
        }
        labels.push((label, key));
    }
    out
}
