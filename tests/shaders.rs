//! Every WGSL family parses and validates with naga, every `shaders/*.wgsl`
//! belongs to a declared kernel, and every kernel declaration (bindings by
//! name, `Params` size, workgroup size, overridden constants) agrees with
//! its WGSL. No GPU needed.

use std::path::Path;

/// The `.wgsl` files directly in `dir`, sorted.
fn wgsl_files(dir: &Path) -> Vec<String> {
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
        .collect();
    names.sort();
    names
}

#[test]
fn every_shader_validates_with_naga() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let shaders = saobp::kernels::registry::shaders();
    let mut declared: Vec<String> = shaders.iter().map(|(n, _)| n.clone()).collect();
    declared.sort();
    assert_eq!(
        wgsl_files(&dir),
        declared,
        "every shaders/*.wgsl has a kernel declared with `kernels!`"
    );

    let common = std::fs::read_to_string(dir.join("common.wgsl")).expect("shaders/common.wgsl");
    for (name, source) in &shaders {
        assert!(
            source.starts_with(&common),
            "{name} is compiled with common.wgsl in front"
        );
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
fn every_declaration_matches_its_wgsl() {
    let mismatches = saobp::kernels::registry::mismatches();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// Every float literal of every family fits in f32. naga rounds a literal
/// just beyond `f32::MAX` (such as `3.40282347e38`, Rust's shortest print of
/// it) to `f32::MAX`, but Tint, the WGSL compiler of Chromium's WebGPU,
/// rejects it ("cannot be represented as 'f32'"), so the shader would build
/// natively and fail in browsers.
#[test]
fn every_float_literal_fits_in_f32() {
    let mut checked = 0;
    for (name, source) in saobp::kernels::registry::shaders() {
        for (line_no, line) in source.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let bytes = code.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                let starts = bytes[i].is_ascii_digit()
                    && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
                if !starts {
                    i += 1;
                    continue;
                }
                let mut j = i;
                while j < bytes.len()
                    && (bytes[j].is_ascii_alphanumeric()
                        || bytes[j] == b'.'
                        || ((bytes[j] == b'-' || bytes[j] == b'+')
                            && matches!(bytes[j - 1], b'e' | b'E')))
                {
                    j += 1;
                }
                let token = code[i..j].trim_end_matches(['f', 'h']);
                if !token.starts_with("0x") && (token.contains('.') || token.contains(['e', 'E'])) {
                    if let Ok(v) = token.parse::<f64>() {
                        checked += 1;
                        assert!(
                            v.abs() <= f64::from(f32::MAX),
                            "{name}, line {} of its source (common.wgsl first): the literal {token} is beyond f32::MAX, \
                             which Tint rejects; write -3.4028234663852886e38 for -f32::MAX",
                            line_no + 1
                        );
                    }
                }
                i = j;
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} float literals found: the scan is broken"
    );
}

/// No family makes a constant Inf or NaN from bits (`bitcast<f32>` of a
/// literal with every exponent bit set): naga accepts it, Tint rejects the
/// constant ("value inf cannot be represented as 'f32'").
#[test]
fn no_constant_inf_or_nan() {
    for (name, source) in saobp::kernels::registry::shaders() {
        for (line_no, line) in source.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(at) = rest.find("bitcast<f32>(") {
                rest = &rest[at + "bitcast<f32>(".len()..];
                let arg: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                let bits = arg
                    .strip_prefix("0x")
                    .map(|h| h.trim_end_matches(['u', 'i']))
                    .and_then(|h| u32::from_str_radix(h, 16).ok());
                if let Some(bits) = bits {
                    assert!(
                        bits & 0x7f80_0000 != 0x7f80_0000,
                        "{name}, line {} of its source: bitcast<f32>({arg}) is a constant Inf \
                         or NaN, which Tint rejects",
                        line_no + 1
                    );
                }
            }
        }
    }
}
