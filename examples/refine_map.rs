//! SAOBP on an attention map from anywhere (another framework's
//! `output_attentions`, a file, a plot): the refined map `R`, the multi-hop
//! mass `m`, GTD, and the entropy of `A` and `R`, per head.
//!
//! `cargo run --release --example refine_map`

use saobp::{metrics_blocking, refine_map_blocking, Gpu, Lambda, MetricsOptions, Tensor};

fn main() -> saobp::Result<()> {
    let gpu = Gpu::from_env_blocking()?;
    println!("adapter: {}", gpu.adapter());
    // Two heads of six tokens: one attends locally, one has collapsed onto
    // token 0. Any row-stochastic `[B, H, N, N]` map will do.
    let n = 6;
    let mut a = Vec::with_capacity(2 * n * n);
    for head in 0..2 {
        for i in 0..n {
            let scores: Vec<f32> = (0..n)
                .map(|j| match head {
                    0 => -((i as f32 - j as f32).abs()),
                    _ => {
                        if j == 0 {
                            4.0
                        } else {
                            0.0
                        }
                    }
                })
                .collect();
            let total: f32 = scores.iter().map(|s| s.exp()).sum();
            a.extend(scores.iter().map(|s| s.exp() / total));
        }
    }
    let a = Tensor::from_slice(&gpu, &[1, 2, n, n], &a)?;
    let lambda = Lambda::Scalar(0.5);

    let refined = refine_map_blocking(&gpu, &a, &lambda)?;
    let m = refined.mass.to_vec_blocking(&gpu)?; // [B, H, N]
    let of_a = metrics_blocking(&gpu, &a, &MetricsOptions::default())?;
    let of_r = metrics_blocking(
        &gpu,
        &refined.refined,
        &MetricsOptions {
            lambda: Some(&lambda),
            ..Default::default()
        },
    )?;
    println!("head  norm. entropy A → R   GTD of R   m per token");
    for head in 0..2 {
        let (sa, sr) = (&of_a.heads[head], &of_r.heads[head]);
        let mass: Vec<String> = m[head * n..][..n]
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect();
        println!(
            "{head:>4}  {:.4} → {:.4}        {:.4}     {}",
            sa.normalized_entropy,
            sr.normalized_entropy,
            sr.gtd,
            mass.join(" ")
        );
    }
    Ok(())
}
