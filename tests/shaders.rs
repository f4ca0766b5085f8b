//! Every WGSL file (and the deliberately wrong variants derived from them)
//! parses and validates with naga, and each kernel's uniform `Params` struct
//! has the size of its Rust mirror. No GPU needed.

use std::path::Path;

/// The `.wgsl` files directly in `dir`, as `prefix` + name, sorted.
fn wgsl_files(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        // common.wgsl is the prelude of every family, not a family.
        .filter(|n| n.ends_with(".wgsl") && n != "common.wgsl")
        .map(|n| format!("{prefix}{n}"))
        .collect();
    names.sort();
    names
}

fn listed(shaders: &[(&str, &str)]) -> Vec<String> {
    let mut names: Vec<String> = shaders.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    names
}

#[test]
fn every_shader_validates_with_naga() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    assert_eq!(
        wgsl_files(&dir, ""),
        listed(saobp::kernels::SHADERS),
        "every shaders/*.wgsl is listed in kernels::SHADERS"
    );

    let common = std::fs::read_to_string(dir.join("common.wgsl")).expect("shaders/common.wgsl");
    for (name, source) in saobp::kernels::SHADERS {
        assert!(
            source.starts_with(&common),
            "{name} is compiled with common.wgsl in front"
        );
    }
    let faults = saobp::kernels::fault_shaders();
    for (name, broken, original) in &faults {
        assert_ne!(broken, original, "{name} differs from the kernel it breaks");
    }
    let derived = saobp::kernels::derived_shaders();
    for (name, config, original) in &derived {
        assert_ne!(
            config, original,
            "{name} differs from the source it configures"
        );
    }
    let all = saobp::kernels::SHADERS
        .iter()
        .copied()
        .chain(faults.iter().map(|(name, broken, _)| (*name, *broken)))
        .chain(derived.iter().map(|(name, config, _)| (*name, *config)));
    for (name, source) in all {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        // Only the subgroup kernels may use subgroups: the others must run on
        // devices without them (llvmpipe GL).
        let capabilities = if name.contains("subgroup") {
            naga::valid::Capabilities::SUBGROUP
        } else {
            naga::valid::Capabilities::empty()
        };
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        eprintln!(
            "{name}: valid, {} entry point(s)",
            module.entry_points.len()
        );
    }
}

#[test]
fn params_structs_match_their_wgsl_mirrors() {
    let layouts = saobp::kernels::param_layouts().expect("shaders parse");
    assert!(!layouts.is_empty());
    for (family, entry, wgsl, rust) in layouts {
        assert_eq!(
            wgsl as usize, rust,
            "{family}::{entry}: WGSL Params is {wgsl} bytes, Rust {rust}"
        );
    }
}
