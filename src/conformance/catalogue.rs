//! The matrix of cases: which subject at which sizes, with what inputs, and
//! what of it an adapter cannot run before any GPU work.

use crate::kernels::flash as flash_kernel;
use crate::kernels::gpt as gpt_kernel;
use crate::kernels::matmul::{
    self as matmul_kernel, MatmulFamily, MatmulOptions, MatmulVariant, TiledTile,
};
use crate::kernels::metrics::METRIC_COUNT;
use crate::kernels::optim::{ParamGroup, OPTIM_ADAMW};
use crate::kernels::rows::RowLayout;
use crate::kernels::saobp as saobp_kernel;
use crate::tensor::numel;

use super::Subject;

/// The inputs of one case.
#[derive(Debug, Clone)]
pub(super) enum Input {
    /// `A` (`a`) times `B` (`b`), values uniform in [-1, 1), by `variant`
    /// (`None`: the default choice).
    Matmul {
        a: Vec<usize>,
        b: Vec<usize>,
        opts: MatmulOptions,
        variant: Option<MatmulVariant>,
    },
    /// A product with its epilogue fused into the store.
    MatmulEpilogue(FusedCase),
    /// Scores of `shape` uniform in [-range, range).
    Softmax {
        shape: Vec<usize>,
        causal: bool,
        masked: bool,
        range: f32,
    },
    /// `q`, `k` (`shape`) uniform in [-2, 2), `v` (`[B, H, N, dv]`) in [-1, 1);
    /// refined modes use λ per head from [`lambdas`].
    Attention {
        shape: [usize; 4],
        dv: usize,
        causal: bool,
        masked: bool,
        with_lambda: bool,
    },
    /// An attention map `[B, H, N, N]`: the reference softmax of scores
    /// uniform in [-6, 6), rounded to f32; λ per head from [`lambdas`] when
    /// `with_lambda`, else none given.
    Map {
        shape: [usize; 3],
        causal: bool,
        masked: bool,
        with_lambda: bool,
    },
    /// Plain attention's backward: `q`, `k` (`shape`) uniform in [-2, 2),
    /// `v` and `∂L/∂O` (`[B, H, N, dv]`) in [-1, 1); the map recomputed from
    /// `q` and `k`, or, when `given_a`, given: the reference's, rounded to f32.
    AttentionBackward {
        shape: [usize; 4],
        dv: usize,
        causal: bool,
        masked: bool,
        given_a: bool,
    },
    /// SAOBP's output backward: a map `[B, H, N, N]` made as [`Input::Map`]
    /// makes it, `v` and `∂L/∂O` (`[B, H, N, dv]`) uniform in [-1, 1); λ per
    /// head from [`lambdas`] when `with_lambda`, else 0 for every head.
    OutputBackward {
        shape: [usize; 3],
        dv: usize,
        causal: bool,
        masked: bool,
        with_lambda: bool,
    },
    /// Token activations of `shape` (`[.., width]`) uniform in [lo, hi),
    /// for the GPT's per-token ops; their parameters and `∂L/∂y` are drawn
    /// by the runner.
    Activations { shape: Vec<usize>, lo: f32, hi: f32 },
    /// Token ids `[batch, n]` uniform below `vocab`, the tables `wte`
    /// (`[vocab, width]`) and `wpe` (`[positions, width]`) uniform in
    /// [-1, 1), and `∂L/∂x` (`[batch, n, width]`) in [-1, 1).
    Embed {
        batch: usize,
        n: usize,
        vocab: usize,
        positions: usize,
        width: usize,
    },
    /// Logits `[batch, n, vocab]` uniform in [-range, range), targets
    /// uniform below `vocab`.
    CrossEntropy {
        batch: usize,
        n: usize,
        vocab: usize,
        range: f32,
    },
    /// `steps` AdamW steps over `tensors` (parameters uniform in [-1, 1),
    /// λ's starting at 0.001, 0 and 0.5 in turn), each gradient the mean of
    /// two micro-batches' uniform in [-amp, amp) (λ's all +amp, pushing them
    /// under 0), clipped at norm 1 when `clip`.
    AdamW {
        tensors: Vec<(Vec<usize>, ParamGroup)>,
        steps: usize,
        amp: f32,
        clip: bool,
    },
    /// A size at the adapter's limits that would be unreasonable to build
    /// and check here; the reason.
    TooLarge(String),
}

/// One kernel at one size.
#[derive(Debug, Clone)]
pub struct Case {
    /// The kernel.
    pub subject: Subject,
    /// The size, e.g. `[2,3,7,5] dv=3 causal mask λ=0.5,2,0`.
    pub size: String,
    /// What the size exercises, where the size alone does not say (e.g. a
    /// grid over the per-dimension workgroup cap).
    pub note: Option<String>,
    /// Whether the case's grid goes over `max_compute_workgroups_per_dimension`.
    pub at_cap: bool,
    /// The row layout the case forces (`None`: the adapter's choice).
    pub(super) rows: Option<RowLayout>,
    pub(super) input: Input,
}

/// The largest buffer a case at the dispatch limit may allocate: an adapter
/// with a far larger workgroup cap gets a skip instead of a huge CPU check.
const LIMIT_CASE_BUDGET: u64 = 256 << 20;

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn dims(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(","))
}

/// ` causal mask λ=0.5,2,...`: the flags of a size label; λ for `heads`
/// heads when given.
fn flags(causal: bool, masked: bool, lambda_heads: Option<usize>) -> String {
    let mut s = String::new();
    if causal {
        s.push_str(" causal");
    }
    if masked {
        s.push_str(" mask");
    }
    if let Some(heads) = lambda_heads {
        // λ cycles with period 4 (see `lambdas`): show one period.
        let l: Vec<String> = lambdas(heads.min(4))
            .iter()
            .map(|x| x.to_string())
            .collect();
        let more = if heads > 4 { ",..." } else { "" };
        s.push_str(&format!(" λ={}{more}", l.join(",")));
    }
    s
}

/// λ per head: 0.5, 2, 0, 1, 0.5, ... (0 checks that refinement is then off).
pub(super) fn lambdas(heads: usize) -> Vec<f32> {
    (0..heads).map(|h| [0.5, 2.0, 0.0, 1.0][h % 4]).collect()
}

/// The key mask of every masked case, `[B, N]`: item 0 pads its last key;
/// odd items pad key 0 and the second half (so a causal row 0 is empty, and
/// with N = 1 the whole item is); other even items keep everything.
pub(super) fn key_mask(batch: usize, n: usize) -> Vec<f32> {
    (0..batch * n)
        .map(|i| {
            let (b, j) = (i / n, i % n);
            let padded = if b == 0 {
                n > 1 && j == n - 1
            } else if b % 2 == 1 {
                j == 0 || j > n / 2
            } else {
                false
            };
            if padded {
                0.0
            } else {
                1.0
            }
        })
        .collect()
}

/// A stable seed per case, so a failure reproduces whatever else runs.
fn seed(subject: Subject, size: &str) -> u64 {
    subject
        .name()
        .bytes()
        .chain(size.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Every matmul variant of `family` an adapter may offer, in report order;
/// those an adapter lacks become skips.
fn family_variants(family: MatmulFamily) -> Vec<MatmulVariant> {
    match family {
        MatmulFamily::Buffer => vec![MatmulVariant::Buffer],
        MatmulFamily::Tiled => vec![
            MatmulVariant::Tiled(TiledTile::T64),
            MatmulVariant::Tiled(TiledTile::T128),
        ],
        MatmulFamily::Texture => [false, true]
            .into_iter()
            .flat_map(|subgroups| {
                [1, 2, 4, 8].map(|group_rows| MatmulVariant::Texture {
                    subgroups,
                    group_rows,
                })
            })
            .collect(),
    }
}

/// `x` `[rows, k]` times `W` `[k, n]` with `epilogue` fused into the store
/// by `variant`; values uniform in [-1, 1). For [`Epilogue::SplitQkv`],
/// `n` = 3·C and the rows are sequences of `seq` tokens split into `heads`
/// heads.
#[derive(Debug, Clone, Copy)]
pub(super) struct FusedCase {
    pub epilogue: Epilogue,
    pub rows: usize,
    pub k: usize,
    pub n: usize,
    pub heads: usize,
    pub seq: usize,
    pub variant: MatmulVariant,
}

/// The epilogue a [`Input::MatmulEpilogue`] case fuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Epilogue {
    /// `C = residual + (x·W + bias)`.
    BiasResidual,
    /// `C = x·W`, `act = gelu(C + bias)`.
    BiasGelu,
    /// `x·W + bias` split into q, k, v heads.
    SplitQkv,
    /// `C = x·Wᵀ · gelu'(pre + bias)`, `W` stored `[n, k]`: the MLP's GELU
    /// backward.
    GeluBackward,
    /// `x·Wᵀ`, `W` stored `[n, k]`, split into `heads` heads of sequences
    /// of `seq` tokens: the GPT's `∂L/∂O` into heads.
    SplitHeads,
    /// Per-head products merged into token rows, as the second of three
    /// parts (the GPT's dk into dqkv): `x` `[B·H, T, k]`, `W` `[B·H, k, hd]`
    /// (`rows` = T, `n` = hd, `seq` = B).
    MergeHeads,
    /// [`Epilogue::MergeHeads`] with `x` stored `[B·H, k, T]` and transposed.
    MergeHeadsTransposed,
}

impl Epilogue {
    pub(super) fn name(self) -> &'static str {
        match self {
            Epilogue::BiasResidual => "bias+residual",
            Epilogue::BiasGelu => "bias+gelu",
            Epilogue::SplitQkv => "bias+split qkv",
            Epilogue::GeluBackward => "gelu backward",
            Epilogue::SplitHeads => "split heads",
            Epilogue::MergeHeads => "merge heads",
            Epilogue::MergeHeadsTransposed => "merge heads, x^T",
        }
    }

    /// The heads' merge, which multiplies per-head matrices.
    pub(super) fn merges(self) -> bool {
        matches!(self, Epilogue::MergeHeads | Epilogue::MergeHeadsTransposed)
    }
}

/// A variant as its row labels name it: without the family, which is the
/// kernel's name (`64x64x16 4x4`, `subgroup 8x1 groups`); the buffer
/// family's one variant has no label.
fn variant_label(v: MatmulVariant) -> String {
    let full = v.to_string();
    ["buffer", "tiled ", "texture "]
        .iter()
        .find_map(|family| full.strip_prefix(family))
        .unwrap_or(&full)
        .to_string()
}

impl Case {
    fn new(subject: Subject, input: Input, note: Option<String>) -> Case {
        let size = match &input {
            Input::Matmul {
                a,
                b,
                opts,
                variant,
            } => {
                let t = |on: bool| if on { "^T" } else { "" };
                let alpha = if opts.alpha == 1.0 {
                    String::new()
                } else {
                    format!(" alpha={}", opts.alpha)
                };
                // The family is the kernel's name; the label says which of its variants.
                let variant = match variant.map(variant_label) {
                    Some(v) if !v.is_empty() => format!("{v}: "),
                    _ => String::new(),
                };
                format!(
                    "{variant}A{}{} x B{}{}{alpha}",
                    dims(a),
                    t(opts.trans_a),
                    dims(b),
                    t(opts.trans_b)
                )
            }
            Input::MatmulEpilogue(f) if f.epilogue.merges() => format!(
                "{}: {}x[{},{},{}] {} (B={} H={}, part 2 of 3)",
                variant_label(f.variant),
                if f.epilogue == Epilogue::MergeHeads {
                    format!("[{},{},{}]", f.seq * f.heads, f.rows, f.k)
                } else {
                    format!("[{},{},{}]^T", f.seq * f.heads, f.k, f.rows)
                },
                f.seq * f.heads,
                f.k,
                f.n,
                f.epilogue.name(),
                f.seq,
                f.heads
            ),
            Input::MatmulEpilogue(f) => {
                let split = if matches!(f.epilogue, Epilogue::SplitQkv | Epilogue::SplitHeads) {
                    format!(" heads={} T={}", f.heads, f.seq)
                } else {
                    String::new()
                };
                let w = if matches!(f.epilogue, Epilogue::GeluBackward | Epilogue::SplitHeads) {
                    format!("[{},{}]^T", f.n, f.k)
                } else {
                    format!("[{},{}]", f.k, f.n)
                };
                format!(
                    "{}: [{},{}]x{w} {}{split}",
                    variant_label(f.variant),
                    f.rows,
                    f.k,
                    f.epilogue.name()
                )
            }
            Input::Softmax {
                shape,
                causal,
                masked,
                range,
            } => format!(
                "{}{} |x|<{range}",
                dims(shape),
                flags(*causal, *masked, None)
            ),
            Input::Attention {
                shape,
                dv,
                causal,
                masked,
                with_lambda,
            } => format!(
                "{} dv={dv}{}",
                dims(shape),
                flags(*causal, *masked, with_lambda.then_some(shape[1]))
            ),
            Input::Map {
                shape: [b, h, n],
                causal,
                masked,
                with_lambda,
            } => format!(
                "A{}{}",
                dims(&[*b, *h, *n, *n]),
                flags(*causal, *masked, with_lambda.then_some(*h))
            ),
            Input::AttentionBackward {
                shape,
                dv,
                causal,
                masked,
                given_a,
            } => format!(
                "{} dv={dv}{}{}",
                dims(shape),
                flags(*causal, *masked, None),
                if *given_a { " A given" } else { "" }
            ),
            Input::OutputBackward {
                shape: [b, h, n],
                dv,
                causal,
                masked,
                with_lambda,
            } => {
                let lambda = if *with_lambda {
                    flags(false, false, Some(*h))
                } else {
                    " λ=0".to_string()
                };
                format!(
                    "A{} dv={dv}{}{lambda}",
                    dims(&[*b, *h, *n, *n]),
                    flags(*causal, *masked, None)
                )
            }
            Input::Activations { shape, lo, hi } => format!("{} x∈[{lo},{hi})", dims(shape)),
            Input::Embed {
                batch,
                n,
                vocab,
                positions,
                width,
            } => format!(
                "ids{} wte{} wpe{}",
                dims(&[*batch, *n]),
                dims(&[*vocab, *width]),
                dims(&[*positions, *width])
            ),
            Input::CrossEntropy {
                batch,
                n,
                vocab,
                range,
            } => format!("logits{} |x|<{range}", dims(&[*batch, *n, *vocab])),
            Input::AdamW {
                tensors,
                steps,
                amp,
                clip,
            } => {
                let tensors: Vec<String> = tensors
                    .iter()
                    .map(|(shape, group)| {
                        let name = match group {
                            ParamGroup::Decayed => "W",
                            ParamGroup::NotDecayed => "b",
                            ParamGroup::Lambda => "λ",
                        };
                        format!("{name}{}", dims(shape))
                    })
                    .collect();
                let plural = if *steps == 1 { "" } else { "s" };
                let clip = if *clip { "clip 1" } else { "no clip" };
                format!(
                    "{steps} step{plural}: {} |g|<{amp} {clip}",
                    tensors.join(" ")
                )
            }
            Input::TooLarge(_) => String::new(),
        };
        Case {
            subject,
            size,
            note,
            at_cap: false,
            rows: None,
            input,
        }
    }

    /// The shapes of the tensors the case allocates that may be largest.
    fn buffers(&self) -> Vec<Vec<usize>> {
        match &self.input {
            Input::Matmul { a, b, opts, .. } => {
                let out = matmul_kernel::plan(a, b, opts)
                    .map(|p| p.out_shape)
                    .unwrap_or_default();
                vec![a.clone(), b.clone(), out]
            }
            Input::MatmulEpilogue(f) if f.epilogue.merges() => {
                let g = f.seq * f.heads;
                // x as stored: [g, T, k], or [g, k, T] when transposed.
                let x = if f.epilogue == Epilogue::MergeHeads {
                    vec![g, f.rows, f.k]
                } else {
                    vec![g, f.k, f.rows]
                };
                vec![x, vec![g, f.k, f.n], vec![g, f.rows, 3 * f.n]]
            }
            Input::MatmulEpilogue(f) => vec![vec![f.rows, f.k], vec![f.k, f.n], vec![f.rows, f.n]],
            Input::Softmax { shape, .. } => vec![shape.clone()],
            Input::Attention { shape, dv, .. } => {
                let [b, h, n, _] = *shape;
                let mut out = vec![shape.to_vec(), vec![b, h, n, *dv]];
                // The streaming modes never form an N×N map.
                if !matches!(self.subject, Subject::Flash | Subject::Streaming) {
                    out.push(vec![b, h, n, n]);
                }
                out
            }
            Input::Map {
                shape: [b, h, n], ..
            } => {
                vec![vec![*b, *h, *n, *n], vec![METRIC_COUNT, *b, *h, *n]]
            }
            Input::AttentionBackward { shape, dv, .. } => {
                let [b, h, n, _] = *shape;
                vec![shape.to_vec(), vec![b, h, n, *dv], vec![b, h, n, n]]
            }
            Input::OutputBackward {
                shape: [b, h, n],
                dv,
                ..
            } => vec![
                vec![*b, *h, *n, *n],
                vec![*b, *h, *n, saobp_kernel::wide(*dv)],
            ],
            Input::Activations { shape, .. } => vec![shape.clone()],
            Input::Embed {
                batch,
                n,
                vocab,
                positions,
                width,
            } => vec![
                vec![*batch, *n, *width],
                vec![*vocab, *width],
                vec![*positions, *width],
            ],
            Input::CrossEntropy {
                batch, n, vocab, ..
            } => vec![vec![*batch, *n, *vocab]],
            Input::AdamW { tensors, .. } => tensors.iter().map(|(s, _)| s.clone()).collect(),
            Input::TooLarge(_) => Vec::new(),
        }
    }

    /// Why an adapter with `limits` and `downlevel` flags cannot run this
    /// case before any GPU work, naming the limit: no compute shaders, or a
    /// tensor over the buffer limits. `None` when it may run; a kernel over
    /// the device's limits (storage buffers, workgroup memory or size) is
    /// refused by the library itself when the case runs, with
    /// [`crate::Error::Limit`], which the runner reports as a skip.
    pub fn skip_reason(
        &self,
        limits: &wgpu::Limits,
        downlevel: wgpu::DownlevelFlags,
    ) -> Option<String> {
        if let Input::TooLarge(reason) = &self.input {
            return Some(reason.clone());
        }
        if !downlevel.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
            return Some("the adapter does not support compute shaders".to_string());
        }
        for shape in self.buffers() {
            let bytes = numel(&shape).map_or(u64::MAX, |n| (n as u64).saturating_mul(4));
            for (name, limit) in [
                (
                    "max_storage_buffer_binding_size",
                    limits.max_storage_buffer_binding_size,
                ),
                ("max_buffer_size", limits.max_buffer_size),
            ] {
                if bytes > limit {
                    return Some(format!(
                        "a {} tensor needs {} bytes, over {name} = {}",
                        dims(&shape),
                        grouped(bytes),
                        grouped(limit)
                    ));
                }
            }
        }
        None
    }

    pub(super) fn seed(&self) -> u64 {
        seed(self.subject, &self.size)
    }
}

/// A case sized from the per-dimension workgroup cap, noted as such; a skip
/// (keeping its size) when that would allocate more than [`LIMIT_CASE_BUDGET`].
fn at_cap(subject: Subject, input: Input, cap: u64, what: &str, workgroups: u64) -> Case {
    let case = Case::new(subject, input, None);
    let note = Some(format!(
        "{what}: {} workgroups > max_compute_workgroups_per_dimension = {}, split over x and y",
        grouped(workgroups),
        grouped(cap)
    ));
    let largest = case
        .buffers()
        .iter()
        .map(|s| numel(s).map_or(u64::MAX, |n| (n as u64).saturating_mul(4)))
        .max()
        .unwrap_or(0);
    let input = if largest > LIMIT_CASE_BUDGET {
        Input::TooLarge(format!(
            "max_compute_workgroups_per_dimension = {}: a grid over it needs a buffer of {} MiB here, \
             over this check's {} MiB",
            grouped(cap),
            grouped(largest >> 20),
            LIMIT_CASE_BUDGET >> 20
        ))
    } else {
        case.input
    };
    Case {
        note,
        at_cap: true,
        input,
        ..case
    }
}

/// The fixed matrix for an adapter with `limits`: the same sizes everywhere,
/// except those at the dispatch limit, which follow the adapter's
/// `max_compute_workgroups_per_dimension`. Each entry point that sizes its
/// grid from the data goes over that cap once, just barely: software adapters
/// pay a few microseconds per workgroup.
pub fn cases(limits: &wgpu::Limits) -> Vec<Case> {
    let cap = u64::from(limits.max_compute_workgroups_per_dimension.max(1));
    let cap_usize = usize::try_from(cap).unwrap_or(usize::MAX);
    // The smallest count `c` with `c · unit` over the cap.
    let over = |unit: usize| (cap_usize / unit).saturating_add(1);
    let mut out = Vec::new();

    // Matmul: 1x1x1, K = 1, transposes, rank-4 batches, broadcast of either
    // operand, the score product at N = 256, and one tile per matrix over the cap.
    let mm =
        |m: usize, n: usize, k: usize, batch: &[usize], broadcast: char, opts: MatmulOptions| {
            let (a_mat, b_mat) = (
                if opts.trans_a { [k, m] } else { [m, k] },
                if opts.trans_b { [n, k] } else { [k, n] },
            );
            let with = |lead: bool, mat: [usize; 2]| {
                let mut s = if lead { batch.to_vec() } else { Vec::new() };
                s.extend(mat);
                s
            };
            Input::Matmul {
                a: with(broadcast != 'a', a_mat),
                b: with(broadcast != 'b', b_mat),
                opts,
                variant: None,
            }
        };
    let plain = MatmulOptions::default();
    let ta = MatmulOptions {
        trans_a: true,
        ..plain
    };
    let tb = MatmulOptions {
        trans_b: true,
        ..plain
    };
    let matmuls = [
        mm(1, 1, 1, &[], '-', plain),
        mm(7, 33, 65, &[], '-', ta),
        mm(33, 7, 1, &[3], '-', tb),
        mm(65, 31, 33, &[2, 3], 'b', plain),
        mm(9, 7, 5, &[3], 'a', MatmulOptions { alpha: -1.5, ..ta }),
        mm(
            256,
            256,
            64,
            &[2],
            '-',
            MatmulOptions { alpha: 0.125, ..tb },
        ),
        // Rows of whole texels, which the subgroup texture variants copy
        // instead of packing: the other three transposes, ragged blocks.
        mm(36, 20, 44, &[2], 'b', plain),
        mm(20, 36, 12, &[3], 'a', ta),
        mm(
            12,
            37,
            28,
            &[],
            '-',
            MatmulOptions {
                trans_a: true,
                trans_b: true,
                alpha: 2.0,
            },
        ),
    ];
    let batch = over(1);
    let matmul_at_cap = mm(5, 4, 3, &[batch], 'b', plain);
    // The default choice, then every variant of each family on the same sizes.
    let families = [
        (Subject::Matmul, None),
        (Subject::MatmulBuffer, Some(MatmulFamily::Buffer)),
        (Subject::MatmulTiled, Some(MatmulFamily::Tiled)),
        (Subject::MatmulTexture, Some(MatmulFamily::Texture)),
    ];
    for (subject, family) in families {
        let variants = family.map_or(vec![None], |f| {
            family_variants(f).into_iter().map(Some).collect()
        });
        for variant in variants {
            let with = |input: &Input| match input {
                Input::Matmul { a, b, opts, .. } => Input::Matmul {
                    a: a.clone(),
                    b: b.clone(),
                    opts: *opts,
                    variant,
                },
                other => other.clone(),
            };
            for input in &matmuls {
                out.push(Case::new(subject, with(input), None));
            }
            // Over the cap once per family's default variant (with and
            // without subgroups): the layouts of a family share their grid
            // indexing, and each such case costs seconds on a software adapter.
            let defaults = [
                MatmulVariant::Buffer,
                MatmulVariant::Tiled(TiledTile::T64),
                MatmulVariant::Texture {
                    subgroups: false,
                    group_rows: 8,
                },
                MatmulVariant::Texture {
                    subgroups: true,
                    group_rows: 8,
                },
            ];
            if variant.is_some_and(|v| !defaults.contains(&v)) {
                continue;
            }
            out.push(at_cap(
                subject,
                with(&matmul_at_cap),
                cap,
                "one tile per matrix",
                batch as u64,
            ));
        }
    }

    // The GPT's fused epilogues, by the texture layouts with and without
    // subgroups (whose linear kernels they are builds of): ragged edges of
    // the 16-row blocks and 32- or 64-column panels, the tiny preset's
    // shapes, a split into heads of 12 and of 32 columns, the GELU
    // backward (W transposed) at the MLP's shapes, and merges of
    // heads 8 and 32 wide (the tiny preset's attention, T = 64, batch 12),
    // from x as stored and transposed (whose rows, T, and columns are then
    // whole texels: the store is built for operands copied as stored).
    let texture_defaults = [false, true].map(|subgroups| MatmulVariant::Texture {
        subgroups,
        group_rows: 8,
    });
    for variant in texture_defaults {
        let fused = |epilogue, rows, k, n, heads, seq| {
            Input::MatmulEpilogue(FusedCase {
                epilogue,
                rows,
                k,
                n,
                heads,
                seq,
                variant,
            })
        };
        for input in [
            fused(Epilogue::BiasResidual, 37, 28, 52, 0, 0),
            fused(Epilogue::BiasResidual, 768, 128, 128, 0, 0),
            fused(Epilogue::BiasGelu, 37, 28, 52, 0, 0),
            fused(Epilogue::BiasGelu, 768, 128, 512, 0, 0),
            fused(Epilogue::SplitQkv, 15, 28, 72, 2, 5),
            fused(Epilogue::SplitQkv, 768, 128, 384, 4, 64),
            fused(Epilogue::GeluBackward, 37, 28, 52, 0, 0),
            fused(Epilogue::GeluBackward, 768, 128, 512, 0, 0),
            fused(Epilogue::SplitHeads, 15, 28, 24, 3, 5),
            fused(Epilogue::SplitHeads, 768, 128, 128, 4, 64),
            fused(Epilogue::MergeHeads, 9, 12, 8, 3, 2),
            fused(Epilogue::MergeHeads, 64, 64, 32, 4, 12),
            fused(Epilogue::MergeHeadsTransposed, 12, 20, 8, 3, 2),
            fused(Epilogue::MergeHeadsTransposed, 64, 64, 32, 4, 12),
        ] {
            out.push(Case::new(Subject::MatmulEpilogue, input, None));
        }
    }

    out.extend(softmax_cases(Subject::Softmax, cap));

    // Attention and the refined outputs share shapes: N = 1, odd N and D,
    // D = 1, Dv != D, several items and heads, masks, N = 256 D = 64 (one
    // head: the reference of the refined modes is N³ per head). Plain
    // attention is matmul then softmax, whose cases above go over the cap.
    let att = |shape: [usize; 4], dv, causal, masked, with_lambda| Input::Attention {
        shape,
        dv,
        causal,
        masked,
        with_lambda,
    };
    // Rows and values of whole texels (N = 36, 256) let the softmax write
    // `A` into the texture the products read where the matmul copies it.
    let shapes: [([usize; 4], usize, bool, bool); 6] = [
        ([1, 1, 1, 1], 1, false, false),
        ([2, 3, 7, 5], 3, true, true),
        ([2, 2, 33, 1], 7, false, true),
        ([2, 2, 36, 8], 12, true, true),
        ([1, 2, 65, 16], 16, true, true),
        ([1, 1, 256, 64], 64, false, false),
    ];
    for &(shape, dv, causal, masked) in &shapes {
        out.push(Case::new(
            Subject::Attention,
            att(shape, dv, causal, masked, false),
            None,
        ));
    }
    // The streaming modes on the same shapes (D and Dv within 64),
    // then one N long enough that software adapters split the keys over
    // several dispatches, masked keys straddling a boundary. Streaming's
    // reference is N³ per head, so its long case is shorter.
    let streamed = |subject: Subject, n: usize, causal: bool| {
        let (d, dv) = (64, 64);
        // Key ranges on software adapters, per flash layout.
        let layouts = [
            (flash_kernel::FlashVariant::Buffer, "buffer"),
            (
                flash_kernel::FlashVariant::TextureSubgroup,
                "texture subgroup",
            ),
        ];
        let ranges = |keys: usize| n.div_ceil(keys.max(1));
        let counts: Vec<String> = layouts
            .iter()
            .map(|&(variant, name)| {
                let (forward, refine) =
                    flash_kernel::keys_per_dispatch(n, d, dv, causal, Some(variant));
                if subject == Subject::Flash {
                    format!("{} ({name})", ranges(forward))
                } else {
                    format!("{} + {} ({name})", ranges(forward), ranges(refine))
                }
            })
            .collect();
        let note = format!(
            "keys in {} dispatches on software adapters",
            counts.join(", ")
        );
        Case::new(
            subject,
            att(
                [1, 1, n, d],
                dv,
                causal,
                true,
                subject == Subject::Streaming,
            ),
            Some(note),
        )
    };
    for &(shape, dv, causal, masked) in &shapes {
        out.push(Case::new(
            Subject::Flash,
            att(shape, dv, causal, masked, false),
            None,
        ));
    }
    out.push(streamed(Subject::Flash, 1100, false));
    out.push(streamed(Subject::Flash, 1100, true));
    // Heads wider than 64: the kernels' 128-wide build (4 query rows per
    // invocation), at D = Dv = 128 over several key ranges, and with only
    // Dv past 64.
    let wide: [([usize; 4], usize, bool, bool, &str); 2] = [
        ([1, 2, 300, 128], 128, true, true, "128-wide build"),
        ([2, 1, 33, 40], 100, false, true, "128-wide build, Dv only"),
    ];
    for subject in [Subject::Flash, Subject::Streaming] {
        for &(shape, dv, causal, masked, note) in &wide {
            out.push(Case::new(
                subject,
                att(shape, dv, causal, masked, subject == Subject::Streaming),
                Some(note.to_string()),
            ));
        }
    }

    // Messages and refinement of given maps. Over the cap: one message tile
    // per 3x3 map (refine then has three times as many rows), and one refine
    // workgroup per row of 8x8 maps.
    let map = |shape: [usize; 3], causal, masked, with_lambda| Input::Map {
        shape,
        causal,
        masked,
        with_lambda,
    };
    let maps: [([usize; 3], bool, bool); 5] = [
        ([1, 1, 1], false, false),
        ([2, 3, 3], false, true),
        ([2, 2, 33], true, true),
        ([1, 3, 65], false, false),
        ([1, 1, 256], false, false),
    ];
    for subject in [Subject::Messages, Subject::Refine] {
        for &(shape, causal, masked) in &maps {
            out.push(Case::new(subject, map(shape, causal, masked, true), None));
        }
    }
    let heads = over(2);
    let messages_at_cap = at_cap(
        Subject::Messages,
        map([2, heads, 3], true, true, true),
        cap,
        "one tile per map",
        2 * heads as u64,
    );
    let heads = over(8);
    out.push(at_cap(
        Subject::Refine,
        map([1, heads, 8], true, false, true),
        cap,
        "one workgroup per row",
        8 * heads as u64,
    ));
    let refine_at = out
        .iter()
        .position(|c| c.subject == Subject::Refine)
        .unwrap_or(out.len());
    out.insert(refine_at, messages_at_cap);

    // The fused output, then the materialized one, on the attention shapes;
    // the fused one also with its elementwise kernels over the cap (wide
    // values keep the row-wise kernels under it).
    for &(shape, dv, causal, masked) in &shapes {
        out.push(Case::new(
            Subject::FusedOutput,
            att(shape, dv, causal, masked, true),
            None,
        ));
    }
    let per_group = saobp_kernel::FUSED_OUTPUT.workgroup_size as usize;
    let heads = over(per_group);
    let elements = heads as u64 * 4 * 1024;
    out.push(at_cap(
        Subject::FusedOutput,
        att([1, heads, 4, 2], 1024, false, true, true),
        cap,
        &format!(
            "{} output values, {per_group} per workgroup",
            grouped(elements)
        ),
        saobp_kernel::FUSED_OUTPUT.groups_for(elements as usize),
    ));
    for &(shape, dv, causal, masked) in &shapes {
        out.push(Case::new(
            Subject::Streaming,
            att(shape, dv, causal, masked, true),
            None,
        ));
    }
    out.push(streamed(Subject::Streaming, 800, false));
    for &(shape, dv, causal, masked) in &shapes {
        out.push(Case::new(
            Subject::MaterializedOutput,
            att(shape, dv, causal, masked, true),
            None,
        ));
    }

    // Metrics of given maps, with and without λ; then one workgroup per row over the cap.
    for (&(shape, causal, masked), lambda) in maps.iter().zip([false, true, false, true, true]) {
        out.push(Case::new(
            Subject::Metrics,
            map(shape, causal, masked, lambda),
            None,
        ));
    }
    let heads = over(16);
    out.push(at_cap(
        Subject::Metrics,
        map([4, heads, 4], true, true, true),
        cap,
        "one workgroup per row",
        16 * heads as u64,
    ));
    out.extend(training_cases(cap));
    with_row_layouts(out)
}

/// The row kernels' cases (softmax, LayerNorm, column sums, cross-entropy,
/// the fused SAOBP output's row stats and its backward's row adjoints) in
/// each [`RowLayout`]: every case with one workgroup per row, as the
/// notes of the cases over the workgroup cap say, and the others again with
/// one invocation per row.
fn with_row_layouts(cases: Vec<Case>) -> Vec<Case> {
    let mut out = Vec::with_capacity(cases.len());
    for case in cases {
        let rows = matches!(
            case.subject,
            Subject::Softmax
                | Subject::SoftmaxBackward
                | Subject::LayerNorm
                | Subject::LayerNormBackward
                | Subject::BiasGeluBackward
                | Subject::CrossEntropy
                | Subject::FusedOutput
                | Subject::SaobpOutputBackward
        );
        if !rows {
            out.push(case);
            continue;
        }
        let per = |layout: RowLayout| Case {
            size: format!("{}, rows by {layout}", case.size),
            rows: Some(layout),
            ..case.clone()
        };
        out.push(per(RowLayout::Workgroup));
        if !case.at_cap {
            out.push(per(RowLayout::Invocation));
        }
    }
    out
}

/// The training kernels' share of the matrix: the backward of each forward
/// above, the GPT's per-token ops both ways, and AdamW. Each goes over the
/// workgroup cap once, in the entry point whose grid grows with the data.
/// The softmax's cases, forward or backward (`subject`): one element, short
/// and long rows, logits at the spec's ±50, and one workgroup per row over
/// the cap.
fn softmax_cases(subject: Subject, cap: u64) -> Vec<Case> {
    let rows = usize::try_from(cap).unwrap_or(usize::MAX) / 2 + 1;
    let sm = |shape: &[usize], causal, masked, range| Input::Softmax {
        shape: shape.to_vec(),
        causal,
        masked,
        range,
    };
    let mut out: Vec<Case> = [
        sm(&[1, 1], false, false, 8.0),
        sm(&[2, 3, 7, 33], true, true, 8.0),
        sm(&[1, 2, 65, 65], true, true, 8.0),
        sm(&[1, 1, 33, 257], false, false, 50.0),
        sm(&[1, 2, 256, 256], false, true, 8.0),
    ]
    .into_iter()
    .map(|input| Case::new(subject, input, None))
    .collect();
    out.push(at_cap(
        subject,
        sm(&[2, 1, rows, 5], true, true, 8.0),
        cap,
        "one workgroup per row",
        2 * rows as u64,
    ));
    out
}

fn training_cases(cap: u64) -> Vec<Case> {
    let cap_usize = usize::try_from(cap).unwrap_or(usize::MAX);
    let over = |unit: usize| (cap_usize / unit).saturating_add(1);

    // The softmax's backward on the softmax's sizes.
    let mut out = softmax_cases(Subject::SoftmaxBackward, cap);

    // The matmul's backward: each transpose, K = 1, a B shared by a batch
    // (a linear layer, whose gradient sums over the batch), the score
    // product at N = 256, and both products over the cap. A shared A is
    // refused by the backward, so it has no case. Over the cap, both
    // operands have the batch (a shared B's gradient would sum more terms
    // than llvmpipe lets one invocation loop over) and the matrices are
    // 1x1, which the default choice gives the buffer kernel everywhere (the
    // texture family's packing of 65,536 maps takes seconds on software
    // adapters).
    let mm = |a: &[usize], b: &[usize], trans_a, trans_b, alpha| Input::Matmul {
        a: a.to_vec(),
        b: b.to_vec(),
        opts: MatmulOptions {
            trans_a,
            trans_b,
            alpha,
        },
        variant: None,
    };
    for input in [
        mm(&[1, 1], &[1, 1], false, false, 1.0),
        mm(&[65, 7], &[65, 33], true, false, 1.0),
        mm(&[3, 33, 1], &[3, 7, 1], false, true, 1.0),
        mm(&[2, 3, 65, 33], &[33, 31], false, false, 1.0),
        mm(&[3, 5, 9], &[3, 7, 5], true, true, -0.5),
        mm(&[2, 256, 64], &[2, 256, 64], false, true, 0.125),
    ] {
        out.push(Case::new(Subject::MatmulBackward, input, None));
    }
    let batch = over(1);
    out.push(at_cap(
        Subject::MatmulBackward,
        mm(&[batch, 1, 1], &[batch, 1, 1], false, false, 1.0),
        cap,
        "one tile per matrix",
        batch as u64,
    ));

    // Attention's backward on the attention shapes, one of them with the
    // map given; over the cap, the softmax backward's rows.
    let att = |shape: [usize; 4], dv, causal, masked, given_a| Input::AttentionBackward {
        shape,
        dv,
        causal,
        masked,
        given_a,
    };
    for input in [
        att([1, 1, 1, 1], 1, false, false, false),
        att([2, 3, 7, 5], 3, true, true, false),
        att([2, 2, 33, 1], 7, false, true, true),
        att([1, 2, 65, 16], 16, true, true, false),
        att([1, 1, 256, 64], 64, false, false, false),
    ] {
        out.push(Case::new(Subject::AttentionBackward, input, None));
    }
    let heads = over(16);
    out.push(at_cap(
        Subject::AttentionBackward,
        att([1, heads, 16, 1], 1, true, true, false),
        cap,
        "one softmax workgroup per row",
        16 * heads as u64,
    ));

    // SAOBP's output backward: λ per head (0 among them) or 0 everywhere,
    // Dv above the workgroup width, empty rows (causal and masked); over
    // the cap, the row passes.
    let ob = |shape: [usize; 3], dv, causal, masked, with_lambda| Input::OutputBackward {
        shape,
        dv,
        causal,
        masked,
        with_lambda,
    };
    for input in [
        ob([1, 1, 1], 1, false, false, true),
        ob([2, 3, 7], 5, true, true, true),
        ob([2, 2, 33], 9, false, true, false),
        ob([1, 2, 9], 67, false, false, true),
        ob([1, 3, 65], 16, true, false, true),
        ob([1, 1, 256], 64, false, false, true),
    ] {
        out.push(Case::new(Subject::SaobpOutputBackward, input, None));
    }
    // The same kernels writing into token rows, on shapes of whole and
    // ragged texels, one head and several, several batch items, and the
    // mid size.
    for input in [
        ob([1, 1, 4], 4, false, false, true),
        ob([2, 3, 7], 5, false, false, true),
        ob([2, 2, 12], 8, false, false, true),
        ob([3, 4, 64], 32, false, false, true),
        ob([1, 1, 256], 64, false, false, true),
    ] {
        out.push(Case::new(Subject::MergedOutputs, input, None));
    }
    let heads = over(16);
    out.push(at_cap(
        Subject::SaobpOutputBackward,
        ob([1, heads, 16], 1, true, true, true),
        cap,
        "one workgroup per row",
        16 * heads as u64,
    ));

    // The GPT's per-token ops: one value, odd widths, rows off centre (the
    // LayerNorm's mean matters) or in GELU's tails, GPT-2's width 768, and
    // over the cap one workgroup per row (LayerNorm) or per 64 values
    // (GELU). The LayerNorm rows over the cap are 16 wide: among 65,536 rows
    // of 3, some are nearly constant, and there 1/σ magnifies the f32
    // rounding of the mean past any fixed bound (the input's conditioning,
    // not the kernel's error).
    let act = |shape: &[usize], lo, hi| Input::Activations {
        shape: shape.to_vec(),
        lo,
        hi,
    };
    let rows = over(1);
    for subject in [Subject::LayerNorm, Subject::LayerNormBackward] {
        for input in [
            act(&[1, 1], -2.0, 2.0),
            act(&[3, 67], 1.0, 5.0),
            act(&[2, 33, 65], -2.0, 2.0),
            act(&[1000, 33], 1.0, 5.0),
            act(&[4, 64, 768], -2.0, 2.0),
        ] {
            out.push(Case::new(subject, input, None));
        }
        out.push(at_cap(
            subject,
            act(&[rows, 16], 1.0, 5.0),
            cap,
            "one workgroup per row",
            rows as u64,
        ));
    }
    let width = gpt_kernel::BIAS_GELU.workgroup_size as usize;
    let values = rows as u64 * width as u64;
    for subject in [Subject::BiasGelu, Subject::BiasGeluBackward] {
        for input in [
            act(&[1, 1], -6.0, 6.0),
            act(&[3, 67], -6.0, 6.0),
            act(&[2, 33, 65], -6.0, 6.0),
            act(&[7, 10], -30.0, 30.0),
            act(&[4, 64, 768], -6.0, 6.0),
        ] {
            out.push(Case::new(subject, input, None));
        }
        out.push(at_cap(
            subject,
            act(&[rows, width], -6.0, 6.0),
            cap,
            &format!("{} values, {width} per workgroup", grouped(values)),
            gpt_kernel::BIAS_GELU.groups_for(values as usize),
        ));
    }

    // Embeddings: one token, positions beyond the sequence, ids repeated
    // across long runs (a vocabulary of 3) and mostly unused (one of
    // 4,096); over the cap, the output (forward) or ∂wte (backward).
    let emb = |batch, n, vocab, positions, width| Input::Embed {
        batch,
        n,
        vocab,
        positions,
        width,
    };
    let embeds = [
        emb(1, 1, 1, 1, 1),
        emb(3, 7, 5, 9, 33),
        emb(2, 65, 84, 65, 67),
        emb(1, 1024, 3, 1024, 8),
        emb(8, 256, 4096, 256, 256),
    ];
    for subject in [Subject::Embed, Subject::EmbedBackward] {
        for input in embeds.iter().cloned() {
            out.push(Case::new(subject, input, None));
        }
    }
    let per_group = gpt_kernel::EMBED.workgroup_size as usize;
    let batch = over(per_group);
    let values = (batch * 64 * per_group) as u64;
    let embed_at_cap = at_cap(
        Subject::Embed,
        emb(batch, 64, 50, 64, per_group),
        cap,
        &format!(
            "{} output values, {per_group} per workgroup",
            grouped(values)
        ),
        gpt_kernel::EMBED.groups_for(values as usize),
    );
    let per_group = gpt_kernel::EMBED_BACKWARD_TOKENS.workgroup_size as usize;
    let vocab = over(1);
    let values = (vocab * per_group) as u64;
    out.push(at_cap(
        Subject::EmbedBackward,
        emb(4, 64, vocab, 64, per_group),
        cap,
        &format!("{} ∂wte values, {per_group} per workgroup", grouped(values)),
        gpt_kernel::EMBED_BACKWARD_TOKENS.groups_for(values as usize),
    ));
    let backward_at = out
        .iter()
        .position(|c| c.subject == Subject::EmbedBackward)
        .unwrap_or(out.len());
    out.insert(backward_at, embed_at_cap);

    // Cross-entropy: a vocabulary of one (loss 0), the corpus's 84
    // characters, logits of ±1e4 (the max-subtraction), and one row per
    // workgroup over the cap.
    let ce = |batch, n, vocab, range| Input::CrossEntropy {
        batch,
        n,
        vocab,
        range,
    };
    for input in [
        ce(1, 1, 1, 4.0),
        ce(3, 7, 5, 4.0),
        ce(2, 65, 84, 8.0),
        ce(2, 33, 257, 1e4),
        ce(4, 256, 1000, 8.0),
    ] {
        out.push(Case::new(Subject::CrossEntropy, input, None));
    }
    let rows = over(1);
    out.push(at_cap(
        Subject::CrossEntropy,
        ce(1, rows, 5, 4.0),
        cap,
        "one workgroup per row",
        rows as u64,
    ));

    // AdamW: one value, every group with the clip engaged and not, more
    // steps, GPT-2's 768² weight, and one update invocation per value over
    // the cap.
    let adamw = |tensors: &[(&[usize], ParamGroup)], steps, amp, clip| Input::AdamW {
        tensors: tensors.iter().map(|(s, g)| (s.to_vec(), *g)).collect(),
        steps,
        amp,
        clip,
    };
    let groups: &[(&[usize], ParamGroup)] = &[
        (&[7, 13], ParamGroup::Decayed),
        (&[13], ParamGroup::NotDecayed),
        (&[3], ParamGroup::Lambda),
    ];
    for input in [
        adamw(&[(&[1], ParamGroup::Decayed)], 1, 1.0, true),
        // Norms about 20·amp (each gradient the mean of two uniform draws):
        // clipped at amp 2, not at amp 0.01.
        adamw(groups, 3, 2.0, true),
        adamw(groups, 3, 0.01, true),
        adamw(
            &[
                (&[300, 11], ParamGroup::Decayed),
                (&[5], ParamGroup::NotDecayed),
                (&[3], ParamGroup::Lambda),
            ],
            5,
            1.0,
            false,
        ),
        adamw(
            &[
                (&[768, 768], ParamGroup::Decayed),
                (&[768], ParamGroup::NotDecayed),
            ],
            2,
            1.0,
            true,
        ),
    ] {
        out.push(Case::new(Subject::AdamW, input, None));
    }
    let per_group = OPTIM_ADAMW.workgroup_size as usize;
    let rows = over(1);
    let values = (rows * per_group) as u64;
    out.push(at_cap(
        Subject::AdamW,
        adamw(&[(&[rows, per_group], ParamGroup::Decayed)], 2, 1.0, true),
        cap,
        &format!("{} values, {per_group} per workgroup", grouped(values)),
        OPTIM_ADAMW.groups_for(values as usize),
    ));
    out
}
