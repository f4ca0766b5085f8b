//! The adapter's limits, features and downlevel flags that a report prints.

/// The limits that matter to these kernels, by their wgpu names.
pub fn relevant_limits(l: &wgpu::Limits) -> Vec<(&'static str, u64)> {
    vec![
        ("max_bind_groups", l.max_bind_groups.into()),
        (
            "max_bindings_per_bind_group",
            l.max_bindings_per_bind_group.into(),
        ),
        (
            "max_storage_buffers_per_shader_stage",
            l.max_storage_buffers_per_shader_stage.into(),
        ),
        (
            "max_uniform_buffers_per_shader_stage",
            l.max_uniform_buffers_per_shader_stage.into(),
        ),
        (
            "max_uniform_buffer_binding_size",
            l.max_uniform_buffer_binding_size,
        ),
        (
            "max_storage_buffer_binding_size",
            l.max_storage_buffer_binding_size,
        ),
        ("max_buffer_size", l.max_buffer_size),
        (
            "min_uniform_buffer_offset_alignment",
            l.min_uniform_buffer_offset_alignment.into(),
        ),
        (
            "min_storage_buffer_offset_alignment",
            l.min_storage_buffer_offset_alignment.into(),
        ),
        (
            "max_compute_workgroup_storage_size",
            l.max_compute_workgroup_storage_size.into(),
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup.into(),
        ),
        (
            "max_compute_workgroup_size_x",
            l.max_compute_workgroup_size_x.into(),
        ),
        (
            "max_compute_workgroup_size_y",
            l.max_compute_workgroup_size_y.into(),
        ),
        (
            "max_compute_workgroup_size_z",
            l.max_compute_workgroup_size_z.into(),
        ),
        (
            "max_compute_workgroups_per_dimension",
            l.max_compute_workgroups_per_dimension.into(),
        ),
    ]
}

/// The names of the features in `f` (WebGPU's kebab-case names, `wgpu-`
/// prefixed for native-only ones).
pub fn feature_names(f: wgpu::Features) -> Vec<String> {
    f.iter()
        .map(|one| match one.as_str() {
            Some(name) => name.to_string(),
            None => format!("{one:?}"),
        })
        .collect()
}

/// The names of the downlevel flags in `f` (what the adapter does support).
pub fn downlevel_names(f: wgpu::DownlevelFlags) -> Vec<String> {
    f.iter_names().map(|(name, _)| name.to_string()).collect()
}
