//! Soak: 10,000 calls of attention + SAOBP at a small size on every adapter.
//! Results are identical bit for bit from call to call, and neither process
//! memory nor the GPU allocator's holdings grow once warmed up.

mod common;

use common::{on_every_gpu, Rng};
use saobp::{attention_blocking, AttentionOptions, Lambda, Mode, Tensor};

const CALLS: usize = 10_000;
const WARM_UP: usize = 500;

/// Resident set size in bytes (Linux), from /proc/self/statm.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn ten_thousand_calls_stay_bounded_and_bit_identical() {
    on_every_gpu("soak", |gpu| {
        let shape = [1, 2, 16, 8];
        let x = Rng::new(51).vec(2 * 16 * 8, -2.0, 2.0);
        let q = Tensor::from_slice(gpu, &shape, &x).unwrap();
        let opts = AttentionOptions {
            causal: true,
            lambda: Lambda::Scalar(0.7),
            mode: Mode::Fused,
            metrics: true,
            ..Default::default()
        };
        let first = attention_blocking(gpu, &q, &q, &q, &opts)
            .unwrap()
            .output
            .to_vec_blocking(gpu)
            .unwrap();
        let mut baseline = (0, None);
        let start = std::time::Instant::now();
        for call in 0..CALLS {
            let out = attention_blocking(gpu, &q, &q, &q, &opts).unwrap();
            let o = out.output.to_vec_blocking(gpu).unwrap();
            assert!(o == first, "call {call}: the output changed");
            if call == WARM_UP {
                baseline = (rss_bytes().unwrap_or(0), gpu.allocated_bytes());
            }
        }
        let (rss, gpu_bytes) = (rss_bytes().unwrap_or(0), gpu.allocated_bytes());
        let grown = rss.saturating_sub(baseline.0);
        eprintln!(
            "soak on {}: {CALLS} calls in {:.1?}, RSS {} MiB (+{} KiB since call {WARM_UP}), GPU allocator {:?} -> {:?} bytes",
            gpu.adapter(),
            start.elapsed(),
            rss >> 20,
            grown >> 10,
            baseline.1,
            gpu_bytes
        );
        assert!(
            grown < 32 << 20,
            "RSS grew by {} KiB over {} calls",
            grown >> 10,
            CALLS - WARM_UP
        );
        if let (Some(before), Some(after)) = (baseline.1, gpu_bytes) {
            assert!(
                after <= before + (8 << 20),
                "GPU allocations grew from {before} to {after} bytes"
            );
        }
    });
}
