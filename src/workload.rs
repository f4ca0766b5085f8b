//! Synthetic attention workloads with known shapes of attention, for demos,
//! benchmarks and tests: diffuse heads, local heads, a global sink, and heads
//! collapsed onto a few tokens (the entropy collapse SAOBP is meant to relieve).
//!
//! The generator is a small SplitMix64 written here so that the same seed
//! gives the same tensors on every platform, the browser included, without a
//! dependency.

/// The kind of attention a synthetic head is built to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Small random queries and keys: attention close to uniform.
    Diffuse,
    /// Rotary-style position codes: each token attends to its neighbours.
    Local,
    /// Every query attends mostly to token 0.
    Sink,
    /// Every query attends to the same few "hub" tokens, sharply.
    Collapsed,
}

impl Pattern {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Diffuse => "diffuse",
            Pattern::Local => "local",
            Pattern::Sink => "sink",
            Pattern::Collapsed => "collapsed",
        }
    }

    /// Head `h`'s pattern in the default cycle: diffuse, local, sink, collapsed.
    pub fn for_head(h: usize) -> Pattern {
        [
            Pattern::Diffuse,
            Pattern::Local,
            Pattern::Sink,
            Pattern::Collapsed,
        ][h % 4]
    }
}

/// `q`, `k`, `v` (`[B, H, N, D]`, row-major) and each head's pattern.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `[B, H, N, D]`.
    pub shape: [usize; 4],
    /// Queries.
    pub q: Vec<f32>,
    /// Keys.
    pub k: Vec<f32>,
    /// Values.
    pub v: Vec<f32>,
    /// Pattern of each head.
    pub patterns: Vec<Pattern>,
}

/// SplitMix64; also the conformance matrix's input generator.
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Uniform in [-1, 1).
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Builds a workload with heads following `patterns` (cycled over the heads),
/// `temperature` scaling every score (higher = sharper), from `seed`.
pub fn synthetic(shape: [usize; 4], patterns: &[Pattern], temperature: f32, seed: u64) -> Workload {
    let [b, h, n, d] = shape;
    let mut rng = SplitMix(seed);
    let mut q = vec![0.0f32; b * h * n * d];
    let mut k = vec![0.0f32; b * h * n * d];
    let v: Vec<f32> = (0..b * h * n * d).map(|_| rng.next()).collect();
    let head_patterns: Vec<Pattern> = (0..h)
        .map(|i| {
            patterns
                .get(i % patterns.len().max(1))
                .copied()
                .unwrap_or(Pattern::Diffuse)
        })
        .collect();
    // Scores are scaled by 1/sqrt(D) later; sqrt(D)^(1/2) per side undoes that.
    let unit = (d as f32).sqrt().sqrt() * temperature.max(0.0).sqrt();
    for bi in 0..b {
        for (hi, pattern) in head_patterns.iter().enumerate() {
            let base = (bi * h + hi) * n * d;
            let q = &mut q[base..][..n * d];
            let k = &mut k[base..][..n * d];
            match pattern {
                Pattern::Diffuse => {
                    for x in q.iter_mut().chain(k.iter_mut()) {
                        *x = 0.3 * unit * rng.next() / (d as f32).sqrt().sqrt();
                    }
                }
                Pattern::Local => {
                    let pairs = (d / 2).max(1);
                    for i in 0..n {
                        for c in 0..pairs {
                            // Wavelengths from 4 tokens up: nearby tokens score highest.
                            let omega = std::f32::consts::TAU / (4.0 * 1.5f32.powi(c as i32));
                            let angle = i as f32 * omega;
                            let s = 1.6 * unit / (pairs as f32).sqrt().sqrt();
                            // libm, not std: std's sin and cos call the target's
                            // math library, whose last bits differ between native
                            // and WebAssembly builds.
                            let (sin, cos) = (libm::sinf(angle), libm::cosf(angle));
                            q[i * d + 2 * c] = s * cos;
                            k[i * d + 2 * c] = s * cos;
                            if 2 * c + 1 < d {
                                q[i * d + 2 * c + 1] = s * sin;
                                k[i * d + 2 * c + 1] = s * sin;
                            }
                        }
                    }
                }
                Pattern::Sink | Pattern::Collapsed => {
                    let hubs: Vec<usize> = if *pattern == Pattern::Sink {
                        vec![0]
                    } else {
                        [n / 7, n / 2, (5 * n) / 6].into_iter().collect()
                    };
                    let strength = if *pattern == Pattern::Sink { 2.2 } else { 3.0 };
                    for i in 0..n {
                        for c in 0..d {
                            // Queries share one direction (dimension 0); hubs' keys point along it.
                            let along = if c == 0 { 1.0 } else { 0.0 };
                            q[i * d + c] = unit * (strength * along + 0.2 * rng.next());
                            let hub = if hubs.contains(&i) { strength } else { 0.0 };
                            k[i * d + c] = unit * (hub * along + 0.2 * rng.next());
                        }
                    }
                }
            }
        }
    }
    Workload {
        shape,
        q,
        k,
        v,
        patterns: head_patterns,
    }
}
