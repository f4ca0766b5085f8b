//! Every WGSL file parses and validates with naga, and each kernel's uniform
//! `Params` struct has the size of its Rust mirror. No GPU needed.

#[test]
fn every_shader_validates_with_naga() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("shaders/ exists")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".wgsl") && n != "common.wgsl")
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = saobp::kernels::SHADERS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "every shaders/*.wgsl is listed in kernels::SHADERS"
    );

    let common = std::fs::read_to_string(dir.join("common.wgsl")).expect("shaders/common.wgsl");
    for (name, source) in saobp::kernels::SHADERS {
        assert!(
            source.starts_with(&common),
            "{name} is compiled with common.wgsl in front"
        );
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
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
