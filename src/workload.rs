//! Synthetic attention workloads with known shapes of attention, for demos,
//! benchmarks and tests: diffuse heads, local heads, a global sink, and heads
//! collapsed onto a few tokens (the entropy collapse SAOBP is meant to relieve).
//!
//! The generator, [`SplitMix64`], is written here so that the same seed
//! gives the same tensors on every platform, the browser included, without a
//! dependency. It is the project's one seeded generator: the conformance
//! matrix and the tests draw their inputs from it too.
//!
//! [`median`] summarizes the timed runs of the demo and the benchmark.

use std::time::Duration;

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

/// SplitMix64 (Steele, Lea and Flood, 2014): a small, fast generator whose
/// stream depends only on the seed, so a seed reproduces the same values on
/// every platform.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`, from the top 24 bits of one draw (every value
    /// an f32 can hold exactly in `[0, 1)` at that spacing).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    /// `len` values uniform in `[lo, hi)`.
    pub fn vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(lo, hi)).collect()
    }

    /// A standard normal draw, `N(0, 1)`, by the Box–Muller transform of two
    /// uniform draws: `√(−2 ln u₁) · cos(2π u₂)`, `u₁` in `(0, 1]` (so the
    /// logarithm is finite) and `u₂` in `[0, 1)`, each from the top 53 bits
    /// of one draw. The sine partner is dropped, so every call takes exactly
    /// two draws; `ln` and `cos` are `libm`'s, so a seed gives the same bits
    /// on every platform.
    pub fn normal(&mut self) -> f64 {
        let unit = |bits: u64| (bits >> 11) as f64 / (1u64 << 53) as f64;
        let u1 = 1.0 - unit(self.next_u64());
        let u2 = unit(self.next_u64());
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(std::f64::consts::TAU * u2)
    }

    /// Uniform in `[0, n)` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }
}

/// The median of `samples`: the middle one of an odd count, the mean of the
/// two middle ones of an even count; `None` when there are none.
pub fn median(samples: &[Duration]) -> Option<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        len if len % 2 == 1 => Some(sorted[mid]),
        _ => Some(sorted[mid - 1] + (sorted[mid] - sorted[mid - 1]) / 2),
    }
}

/// Builds a workload with heads following `patterns` (cycled over the heads),
/// `temperature` scaling every score (higher = sharper), from `seed`.
pub fn synthetic(shape: [usize; 4], patterns: &[Pattern], temperature: f32, seed: u64) -> Workload {
    let [b, h, n, d] = shape;
    let mut rng = SplitMix64::new(seed);
    let mut q = vec![0.0f32; b * h * n * d];
    let mut k = vec![0.0f32; b * h * n * d];
    let v = rng.vec(b * h * n * d, -1.0, 1.0);
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
                        *x = 0.3 * unit * rng.uniform(-1.0, 1.0) / (d as f32).sqrt().sqrt();
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
                            q[i * d + c] = unit * (strength * along + 0.2 * rng.uniform(-1.0, 1.0));
                            let hub = if hubs.contains(&i) { strength } else { 0.0 };
                            k[i * d + c] = unit * (hub * along + 0.2 * rng.uniform(-1.0, 1.0));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream the browser and native builds share: SplitMix64's
    /// published first outputs for seed 0, and the inputs they become.
    #[test]
    fn the_generator_reproduces_its_stream() {
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut rng = SplitMix64::new(0);
        assert_eq!(
            rng.uniform(-1.0, 1.0),
            (0xE220A8 as f32) / 8_388_608.0 - 1.0
        );
        let mut a = SplitMix64::new(7);
        let mut b = a.clone();
        assert_eq!(a.vec(5, -2.0, 2.0), b.vec(5, -2.0, 2.0));
        assert!(a
            .vec(1000, -1.0, 1.0)
            .iter()
            .all(|x| (-1.0..1.0).contains(x)));
        assert!((0..1000).all(|_| a.below(7) < 7));
        assert_eq!(a.below(0), 0);
    }

    /// `uniform(-1, 1)` is bit for bit the `[-1, 1)` draw the workloads
    /// were first built with, `top24 / 2²³ − 1`, so seeds keep their tensors.
    #[test]
    fn symmetric_draws_keep_their_bits() {
        let (mut a, mut b) = (SplitMix64::new(3), SplitMix64::new(3));
        for _ in 0..10_000 {
            let old = (b.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            assert_eq!(a.uniform(-1.0, 1.0).to_bits(), old.to_bits());
        }
    }

    /// Normal draws have the moments of `N(0, 1)`: over 200,000 draws the
    /// standard errors are 0.0022 (mean), 0.0032 (variance) and 0.011
    /// (kurtosis), so the bounds sit at about 5 of them. A uniform draw
    /// scaled to variance 1 (kurtosis 1.8) or a wrong scale fails.
    #[test]
    fn normal_draws_have_mean_0_variance_1_and_kurtosis_3() {
        let mut rng = SplitMix64::new(11);
        let xs: Vec<f64> = (0..200_000).map(|_| rng.normal()).collect();
        let len = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / len;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / len;
        let kurtosis = xs.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / len / (var * var);
        assert!(mean.abs() < 0.011, "mean {mean}");
        assert!((var - 1.0).abs() < 0.016, "variance {var}");
        assert!((kurtosis - 3.0).abs() < 0.055, "kurtosis {kurtosis}");
        assert!(xs.iter().all(|x| x.is_finite()));
        // One in 2,000 beyond 3.29σ on each side (100 ± 10 expected).
        let tail = |f: fn(f64) -> bool| xs.iter().filter(|&&x| f(x)).count();
        assert!((60..140).contains(&tail(|x| x > 3.29)));
        assert!((60..140).contains(&tail(|x| x < -3.29)));
        let mut again = SplitMix64::new(11);
        assert_eq!(again.normal().to_bits(), xs[0].to_bits());
    }

    #[test]
    fn median_is_the_middle_or_the_mean_of_the_two_middles() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[ms(5)]), Some(ms(5)));
        assert_eq!(median(&[ms(9), ms(1), ms(5)]), Some(ms(5)));
        assert_eq!(median(&[ms(9), ms(1), ms(4), ms(6)]), Some(ms(5)));
        assert_eq!(median(&[ms(3), ms(1)]), Some(ms(2)));
    }
}
