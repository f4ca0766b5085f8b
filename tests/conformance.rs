//! The conformance matrix (`saobp::conformance`, `saobp conformance`) on
//! every adapter present: every row passes, skips carry their reason, a
//! deliberately wrong kernel is caught. The command's exit status and JSON
//! are tested in the CLI's `cli/tests/cli_conformance.rs`.

mod common;

use common::{gpus, on_every_gpu};
use saobp::conformance::{self, Case, Fault, Options, Status, Subject};

/// The kernels whose matrix has a case over the per-dimension workgroup cap.
const AT_CAP: [Subject; 21] = [
    Subject::Matmul,
    Subject::MatmulBuffer,
    Subject::MatmulTiled,
    Subject::MatmulTexture,
    Subject::Softmax,
    Subject::Messages,
    Subject::Refine,
    Subject::FusedOutput,
    Subject::Metrics,
    Subject::SoftmaxBackward,
    Subject::MatmulBackward,
    Subject::AttentionBackward,
    Subject::SaobpOutputBackward,
    Subject::LayerNorm,
    Subject::LayerNormBackward,
    Subject::BiasGelu,
    Subject::BiasGeluBackward,
    Subject::Embed,
    Subject::EmbedBackward,
    Subject::CrossEntropy,
    Subject::AdamW,
];

/// The outputs each row of a training kernel compares, in order (AdamW's
/// depend on its tensors: see `adamw_outputs`).
fn training_outputs(subject: Subject) -> Option<&'static [&'static str]> {
    Some(match subject {
        Subject::SoftmaxBackward => &["dS"],
        Subject::MatmulBackward => &["dA", "dB"],
        Subject::AttentionBackward => &["dQ", "dK", "dV"],
        Subject::SaobpOutputBackward => &["dA", "dV", "dλ"],
        Subject::MergedOutputs => &["O", "dV"],
        Subject::LayerNorm => &["y", "mean", "1/σ"],
        Subject::LayerNormBackward => &["dx", "dγ", "dβ"],
        Subject::BiasGelu => &["y"],
        Subject::BiasGeluBackward => &["dx", "dbias"],
        Subject::Embed => &["x"],
        Subject::EmbedBackward => &["dwte", "dwpe"],
        Subject::CrossEntropy => &["loss", "losses", "dlogits"],
        _ => return None,
    })
}

/// AdamW's outputs for `tensors` tensors: each one's values and both
/// moments, then the last step's gradient norm.
fn adamw_outputs(tensors: usize) -> Vec<String> {
    (0..tensors)
        .flat_map(|i| [format!("p{i}"), format!("m{i}"), format!("v{i}")])
        .chain(["|g|".to_string()])
        .collect()
}

#[test]
fn every_kernel_passes_on_every_adapter() {
    // One thread per adapter: a software adapter runs a dispatch on about one
    // core. Fresh contexts, so that the entry points each row records are
    // its own and not those of a test running beside it.
    let reports = std::thread::scope(|s| {
        let runs: Vec<_> = gpus()
            .iter()
            .map(|gpu| {
                s.spawn(move || {
                    let own = saobp::Gpu::new_blocking(&common::same_adapter(gpu))
                        .expect("the adapter opens again");
                    conformance::run_blocking(&own, &Options::default(), |_| {})
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("the conformance run panicked"))
            .collect::<Vec<_>>()
    });
    assert_eq!(reports.len(), gpus().len());
    for report in &reports {
        let adapter = format!("{:?} {}", report.adapter.backend, report.adapter.name);
        for row in &report.rows {
            let what = format!("{adapter}: {} {}", row.subject, row.size);
            match &row.status {
                Status::Pass => {
                    assert!(!row.checks.is_empty(), "{what}: {row:?}");
                    assert!(row.worst() <= 1.0, "{what}: {row:?}");
                }
                Status::Skip(reason) => {
                    assert!(!reason.trim().is_empty(), "{what}: a skip without a reason")
                }
                Status::Fail(reason) => panic!("{what} failed: {reason}"),
            }
        }
        for kernel in Subject::ALL {
            let rows: Vec<_> = report.rows.iter().filter(|r| r.subject == kernel).collect();
            assert!(
                rows.len() >= 5,
                "{adapter}: {kernel} has {} rows",
                rows.len()
            );
            if AT_CAP.contains(&kernel) {
                assert!(
                    rows.iter().any(|r| {
                        let text = format!("{:?} {:?}", r.note, r.status.reason());
                        text.contains("max_compute_workgroups_per_dimension")
                    }),
                    "{adapter}: {kernel} has no case at the workgroup cap"
                );
            }
        }
        // The streaming modes run everywhere with compute shaders, the long
        // rows included (keys split over dispatches on software adapters).
        for kernel in [Subject::Flash, Subject::Streaming] {
            let rows: Vec<_> = report.rows.iter().filter(|r| r.subject == kernel).collect();
            for row in &rows {
                assert_eq!(row.status, Status::Pass, "{adapter}: {kernel} {}", row.size);
                let names: Vec<_> = row.checks.iter().map(|c| c.name.as_str()).collect();
                let want: &[&str] = if kernel == Subject::Flash {
                    &["O", "max", "sum", "entropy"]
                } else {
                    &["O", "m", "max", "sum", "entropy"]
                };
                assert_eq!(names, want, "{adapter}: {kernel} {}", row.size);
            }
            assert!(
                rows.iter()
                    .any(|r| r.note.as_deref().is_some_and(|n| n.contains("dispatches"))),
                "{adapter}: {kernel} has no long row"
            );
        }
        // The training kernels run everywhere with compute shaders, and
        // each compares every output it promises: the gradient of every
        // input, the forward's statistics, AdamW's values and moments.
        let training = |r: &&conformance::Row| {
            training_outputs(r.subject).is_some() || r.subject == Subject::AdamW
        };
        for row in report.rows.iter().filter(training) {
            let what = format!("{adapter}: {} {}", row.subject, row.size);
            assert_eq!(row.status, Status::Pass, "{what}");
            let names: Vec<_> = row.checks.iter().map(|c| c.name.clone()).collect();
            match training_outputs(row.subject) {
                Some(want) => assert_eq!(names, want, "{what}"),
                // One tensor per shape in the label (`W[7,13] b[13] λ[3]`).
                None => assert_eq!(
                    names,
                    adamw_outputs(row.size.matches('[').count()),
                    "{what}"
                ),
            }
        }
        // Every variant the adapter offers has rows that run; the default
        // rows list the entry points of what the choice picked.
        let gpu = gpus()
            .iter()
            .find(|g| g.adapter() == &report.adapter)
            .expect("the report's adapter");
        let variants = saobp::MatmulVariant::available(gpu);
        let subgroup_flash =
            saobp::FlashVariant::available(gpu).contains(&saobp::FlashVariant::TextureSubgroup);
        for (kernel, family) in [
            (Subject::MatmulBuffer, saobp::MatmulFamily::Buffer),
            (Subject::MatmulTiled, saobp::MatmulFamily::Tiled),
            (Subject::MatmulTexture, saobp::MatmulFamily::Texture),
        ] {
            let offered = variants.iter().any(|v| v.family() == family);
            let ran = report
                .rows
                .iter()
                .any(|r| r.subject == kernel && r.status == Status::Pass);
            assert_eq!(ran, offered, "{adapter}: {kernel}");
        }
        // On the software adapters, the maps of whole texels go straight
        // into the products' texture, from scores the product stored as
        // texels: plain attention's (returned, so into its buffer as well)
        // and the fused output's (into the texture only).
        if gpu.adapter().is_software() {
            for (kernel, entry) in [
                (Subject::Attention, "softmax_texture_store::softmax_texture"),
                (Subject::FusedOutput, "softmax::softmax_texture"),
            ] {
                assert!(
                    report.rows.iter().any(|r| r.subject == kernel
                        && r.shaders.iter().any(|s| s == entry)
                        && r.shaders.iter().any(|s| s.contains("_tb_texels::"))),
                    "{adapter}: no {kernel} row ran {entry} after a texels store"
                );
            }
        }
        // The entry points are recorded from what ran: every row that ran
        // lists some, and each mode lists what its promise says.
        for row in report.rows.iter().filter(|r| r.status == Status::Pass) {
            let what = format!("{adapter}: {} {}", row.subject, row.size);
            assert!(!row.shaders.is_empty(), "{what}");
            let ran = |label: &str| row.shaders.iter().any(|s| s == label);
            // Entry points in name order: a row lists them in the order each
            // first ran on the device, which earlier rows decide.
            let sorted = |labels: &[String]| {
                let mut v = labels.to_vec();
                v.sort();
                v
            };
            // A row kernel's entry point in the layout the case names.
            let rows = |label: &str| {
                if row.size.ends_with("rows by invocation") {
                    format!("{label}_serial")
                } else {
                    label.to_string()
                }
            };
            // The row kernels that read texels in the invocation layout
            // where the case's rows are whole texels (its size starts with
            // its shape, the row width last).
            let width = row.size[1..row.size.find(']').unwrap_or(1)]
                .rsplit(',')
                .next()
                .and_then(|w| w.trim().parse::<usize>().ok());
            let texel_rows = |label: &str| {
                if row.size.ends_with("rows by invocation")
                    && width.is_some_and(|w| w.is_multiple_of(4))
                {
                    format!("{label}_texture")
                } else {
                    rows(label)
                }
            };
            match row.subject {
                // O(N²D): never the messages M, never a mass pass over A.
                // Its row statistics read `A` from the products' texture
                // where the softmax wrote it there.
                Subject::FusedOutput => {
                    let stats = if ran("softmax::softmax_texture") {
                        "saobp::diag_stats_texture".to_string()
                    } else {
                        rows("saobp::diag_stats")
                    };
                    assert!(
                        ran("saobp::fused_output") && ran(&stats) && !ran("saobp::remove_echoes"),
                        "{what}: {:?}",
                        row.shaders
                    );
                    assert!(!ran("saobp::mass"), "{what}: {:?}", row.shaders);
                }
                Subject::Streaming => assert!(
                    [
                        "flash::flash_refine",
                        "flash_d128::flash_refine",
                        "flash_subgroup::flash_refine",
                        "flash_subgroup_d128::flash_refine",
                    ]
                    .into_iter()
                    .any(ran)
                        && !ran("saobp::remove_echoes")
                        && !ran("softmax::softmax_rows")
                        && !ran("softmax::softmax_rows_serial"),
                    "{what}: {:?}",
                    row.shaders
                ),
                // Each adapter's own choice: the texture-subgroup kernels
                // where it has subgroups of 8, else the buffer ones.
                Subject::Flash => assert!(
                    row.shaders.iter().all(|s| if subgroup_flash {
                        s.starts_with("flash_subgroup::") || s.starts_with("flash_subgroup_d128::")
                    } else {
                        s.starts_with("flash::") || s.starts_with("flash_d128::")
                    }),
                    "{what}: {:?}",
                    row.shaders
                ),
                Subject::MergedOutputs => assert!(
                    ran("fused_output_merged::fused_output")
                        && ran("value_grad_merged::value_grad_merged")
                        && !ran("saobp::fused_output")
                        && !ran("saobp::value_grad"),
                    "{what}: {:?}",
                    row.shaders
                ),
                Subject::MaterializedOutput | Subject::Messages | Subject::Refine => {
                    assert!(ran("saobp::remove_echoes"), "{what}: {:?}", row.shaders)
                }
                // Packed panels, or operands copied as stored (no shader
                // packs them) for the linear kernels.
                Subject::MatmulTexture => {
                    let (product, linear) = if row.size.starts_with("subgroup") {
                        (
                            "matmul_texture_subgroup::matmul_texture_subgroup",
                            "::matmul_linear_subgroup",
                        )
                    } else {
                        ("matmul_texture::matmul_texture", "::matmul_linear")
                    };
                    let packed = ran("matmul_pack::pack") && ran(product);
                    let copied = row.shaders.iter().all(|s| s.ends_with(linear));
                    assert!(packed != copied, "{what}: {:?}", row.shaders)
                }
                // Only the fused builds of the linear kernels: no product
                // then an elementwise kernel.
                Subject::MatmulEpilogue => {
                    let fused = [
                        "_bias_residual::",
                        "_bias_gelu::",
                        "_split_qkv::",
                        "_gelu_backward::",
                        "_merge_heads::",
                        "_split_heads::",
                    ];
                    assert!(
                        row.shaders.iter().all(|s| s.starts_with("matmul_linear")
                            && fused.iter().any(|f| s.contains(f))),
                        "{what}: {:?}",
                        row.shaders
                    )
                }
                Subject::MatmulTiled if row.size.starts_with("128") => {
                    assert!(
                        ran("matmul_tiled_128::matmul_tiled"),
                        "{what}: {:?}",
                        row.shaders
                    )
                }
                Subject::MatmulBuffer => {
                    assert_eq!(row.shaders, ["matmul::matmul_blocked"], "{what}")
                }
                // Each backward runs its own entry points and nothing of a
                // forward it was not asked for.
                Subject::SoftmaxBackward => {
                    assert_eq!(
                        row.shaders,
                        [texel_rows("softmax::softmax_backward")],
                        "{what}"
                    )
                }
                Subject::MatmulBackward => assert!(
                    row.shaders.iter().all(|s| s.starts_with("matmul")),
                    "{what}: {:?}",
                    row.shaders
                ),
                // The map is recomputed (matmul and softmax) unless given.
                Subject::AttentionBackward => {
                    assert!(
                        ["", "_serial", "_texture"]
                            .iter()
                            .any(|form| ran(&format!("softmax::softmax_backward{form}"))),
                        "{what}: {:?}",
                        row.shaders
                    );
                    assert_eq!(
                        ran("softmax::softmax_rows") || ran("softmax::softmax_rows_serial"),
                        !row.size.ends_with("A given"),
                        "{what}: {:?}",
                        row.shaders
                    );
                }
                // O(N²D): never the messages M.
                // ∂A's terms read off A by one of the two entry points.
                Subject::SaobpOutputBackward => {
                    for entry in ["saobp::output_adjoints", "saobp::row_adjoints"] {
                        let forms = [rows(entry), format!("{entry}_texture")];
                        assert!(
                            forms.iter().any(|f| ran(f)),
                            "{what}: no {entry} in {:?}",
                            row.shaders
                        );
                    }
                    for entry in ["saobp::value_grad", "saobp::lambda_grad"] {
                        assert!(ran(entry), "{what}: no {entry} in {:?}", row.shaders);
                    }
                    assert!(
                        ran("saobp::attention_grad") != ran("saobp::attention_grad_texture"),
                        "{what}: {:?}",
                        row.shaders
                    );
                    assert!(
                        !ran("saobp::remove_echoes") && !ran("saobp::refine"),
                        "{what}: {:?}",
                        row.shaders
                    );
                }
                Subject::LayerNorm => {
                    assert_eq!(
                        row.shaders,
                        [texel_rows("gpt::layer_norm_forward")],
                        "{what}"
                    )
                }
                Subject::LayerNormBackward => assert_eq!(
                    sorted(&row.shaders),
                    sorted(&[
                        texel_rows("gpt::layer_norm_backward"),
                        texel_rows("gpt::layer_norm_params")
                    ]),
                    "{what}"
                ),
                Subject::BiasGelu => assert_eq!(row.shaders, ["gpt::bias_gelu"], "{what}"),
                Subject::BiasGeluBackward => assert_eq!(
                    sorted(&row.shaders),
                    sorted(&[
                        "gpt::gelu_backward".to_string(),
                        texel_rows("gpt::column_sum")
                    ]),
                    "{what}"
                ),
                Subject::Embed => assert_eq!(row.shaders, ["gpt::embed"], "{what}"),
                Subject::EmbedBackward => assert_eq!(
                    row.shaders,
                    [
                        "gpt::embed_backward_tokens",
                        "gpt::embed_backward_positions"
                    ],
                    "{what}"
                ),
                Subject::CrossEntropy => assert_eq!(
                    sorted(&row.shaders),
                    sorted(&[rows("gpt::cross_entropy"), "gpt::mean_loss".to_string()]),
                    "{what}"
                ),
                Subject::AdamW => assert_eq!(
                    row.shaders,
                    [
                        "optim::optim_accumulate",
                        "optim::optim_sumsq",
                        "optim::optim_norm",
                        "optim::optim_adamw"
                    ],
                    "{what}"
                ),
                _ => {}
            }
        }
        let c = report.counts();
        assert_eq!(c.pass + c.skip, report.rows.len());
        eprintln!("conformance: {} pass, {} skip on {adapter}", c.pass, c.skip);
    }
}

#[test]
fn an_injected_fault_fails_matmul_and_nothing_else() {
    let opts = Options {
        kernels: vec![Subject::Matmul, Subject::Attention],
        fault: Some(Fault::MatmulSkipsLastK),
    };
    on_every_gpu("conformance with a broken matmul", |gpu| {
        let report = conformance::run_blocking(gpu, &opts, |_| {});
        assert!(!report.passed());
        let (matmul, others): (Vec<_>, Vec<_>) = report
            .rows
            .iter()
            .partition(|r| r.subject == Subject::Matmul);
        assert!(matmul.len() >= 5 && others.len() >= 5);
        for row in matmul {
            let Status::Fail(reason) = &row.status else {
                panic!("the broken matmul passed at {}: {row:?}", row.size);
            };
            assert!(reason.starts_with("C["), "{reason}");
            assert!(row.worst() > 1.0);
        }
        // Attention runs its products through the real matmul.
        for row in others {
            assert_eq!(row.status, Status::Pass, "{} {}", row.subject, row.size);
        }
    });
}

fn skip_reasons(limits: &wgpu::Limits, flags: wgpu::DownlevelFlags) -> Vec<(Case, Option<String>)> {
    conformance::cases(limits)
        .into_iter()
        .map(|c| {
            let reason = c.skip_reason(limits, flags);
            (c, reason)
        })
        .collect()
}

#[test]
fn skips_name_the_limit_they_exceed() {
    let all = wgpu::DownlevelFlags::all();
    let full = skip_reasons(&wgpu::Limits::default(), all);
    assert!(
        full.iter().all(|(_, r)| r.is_none()),
        "WebGPU's default limits run everything"
    );
    let mut labels: Vec<_> = full
        .iter()
        .map(|(c, _)| format!("{} {}", c.subject, c.size))
        .collect();
    labels.sort();
    labels.dedup();
    assert_eq!(labels.len(), full.len(), "every case has its own label");

    // A small storage binding: the larger cases skip, naming the tensor and the limit.
    let small = wgpu::Limits {
        max_storage_buffer_binding_size: 256 << 10,
        ..Default::default()
    };
    let rows = skip_reasons(&small, all);
    let reason = |kernel: Subject, size: &str| {
        rows.iter()
            .find(|(c, _)| c.subject == kernel && c.size.starts_with(size))
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no case {kernel} {size}"))
    };
    assert_eq!(
        reason(Subject::Softmax, "[1,2,256,256]").as_deref(),
        Some("a [1,2,256,256] tensor needs 524,288 bytes, over max_storage_buffer_binding_size = 262,144")
    );
    assert_eq!(reason(Subject::Softmax, "[2,3,7,33]"), None);
    let fused = reason(Subject::FusedOutput, "[1,1024,4,2] dv=1024").unwrap_or_default();
    assert!(
        fused.contains("bytes, over max_storage_buffer_binding_size = 262,144"),
        "{fused}"
    );

    // No compute shaders at all: everything skips, nothing disappears.
    let none = skip_reasons(&wgpu::Limits::default(), wgpu::DownlevelFlags::empty());
    assert_eq!(none.len(), full.len());
    assert!(none
        .iter()
        .all(|(_, r)| r.as_deref() == Some("the adapter does not support compute shaders")));

    // A workgroup cap so large that a grid over it would not fit this check:
    // those cases stay in the matrix as skips that say so.
    let huge = wgpu::Limits {
        max_compute_workgroups_per_dimension: u32::MAX,
        ..Default::default()
    };
    let rows = skip_reasons(&huge, all);
    assert_eq!(rows.len(), full.len());
    let skipped: Vec<_> = rows.iter().filter(|(_, r)| r.is_some()).collect();
    let at_cap = rows.iter().filter(|(c, _)| c.at_cap).count();
    assert_eq!(skipped.len(), at_cap, "{skipped:?}");
    for kernel in AT_CAP {
        assert!(
            skipped.iter().any(|(c, _)| c.subject == kernel),
            "{kernel} has no case at the cap"
        );
    }
    for (case, reason) in skipped {
        let reason = reason.as_deref().unwrap_or_default();
        assert!(
            reason.starts_with("max_compute_workgroups_per_dimension = 4,294,967,295"),
            "{} {}: {reason}",
            case.subject,
            case.size
        );
    }
}

/// A device with four storage buffers per stage (the GL ES class of
/// WebGPU's downlevel defaults): the library itself refuses each entry
/// point that binds more, with a typed limit error the report shows as a
/// skip naming the entry point and the limit; everything else still runs.
#[test]
fn kernels_over_the_device_limits_skip_naming_them() {
    on_every_gpu("four storage buffers", |gpu| {
        let Ok(small) = saobp::Gpu::new_blocking(&saobp::GpuOptions {
            limits: Some(wgpu::Limits::downlevel_defaults()),
            ..common::same_adapter(gpu)
        }) else {
            panic!("cannot open the adapter with downlevel limits");
        };
        let cases = conformance::cases(small.limits());
        // Flash's texture-subgroup kernels bind four storage buffers (its
        // operands are textures), so it runs where that variant does.
        let subgroup_flash =
            saobp::FlashVariant::available(&small).contains(&saobp::FlashVariant::TextureSubgroup);
        for subject in Subject::ALL {
            // The smallest case of each subject is enough to meet the limit.
            let case = cases
                .iter()
                .find(|c| c.subject == subject)
                .expect("every subject has cases");
            let row = conformance::run_case_blocking(&small, case, &Options::default());
            let what = format!("{} {}", case.subject, case.size);
            match subject {
                Subject::Matmul
                | Subject::MatmulBuffer
                | Subject::MatmulTiled
                | Subject::MatmulTexture
                | Subject::MatmulEpilogue
                | Subject::Softmax
                | Subject::Attention
                | Subject::SoftmaxBackward
                | Subject::MatmulBackward
                | Subject::AttentionBackward
                | Subject::BiasGelu
                | Subject::BiasGeluBackward
                | Subject::Embed
                | Subject::EmbedBackward
                | Subject::CrossEntropy => {
                    assert_eq!(row.status, Status::Pass, "{what}: {row:?}")
                }
                Subject::Flash if subgroup_flash => {
                    assert_eq!(row.status, Status::Pass, "{what}: {row:?}")
                }
                _ => {
                    let Status::Skip(reason) = &row.status else {
                        panic!("{what}: {row:?}");
                    };
                    // e.g. "saobp::refine (storage buffers) needs 5, over the
                    // adapter's limit max_storage_buffers_per_shader_stage = 4"
                    assert!(
                        reason.contains("::")
                            && reason.contains("(storage buffers) needs ")
                            && reason.ends_with(
                                "over the adapter's limit max_storage_buffers_per_shader_stage = 4"
                            ),
                        "{what}: {reason}"
                    );
                }
            }
        }
    });
}
