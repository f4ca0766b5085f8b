//! Multi-head attention (plain mode) against the float64 reference on every
//! adapter. SAOBP and the spec's worked example are in `saobp.rs`.

mod common;

use common::{assert_close, on_every_gpu, Rng};
use saobp::reference::{self, RefOptions};
use saobp::{attention_blocking, AttentionOptions, Mode, Tensor};

struct Case {
    shape: [usize; 4],
    dv: usize,
    causal: bool,
    masked: bool,
    scale: Option<f32>,
}

fn check(gpu: &saobp::Gpu, rng: &mut Rng, c: &Case) {
    let [b, h, n, d] = c.shape;
    let q = rng.vec(b * h * n * d, -2.0, 2.0);
    let k = rng.vec(b * h * n * d, -2.0, 2.0);
    let v = rng.vec(b * h * n * c.dv, -1.0, 1.0);
    // Pad the tail of each batch item; item 0 keeps at least one key.
    let mask: Vec<f32> = (0..b * n)
        .map(|i| {
            if c.masked && i % n >= (n / 2).max(1) + i / n % 2 {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let tq = Tensor::from_slice(gpu, &c.shape, &q).unwrap();
    let tk = Tensor::from_slice(gpu, &c.shape, &k).unwrap();
    let tv = Tensor::from_slice(gpu, &[b, h, n, c.dv], &v).unwrap();
    let tm = Tensor::from_slice(gpu, &[b, n], &mask).unwrap();
    let opts = AttentionOptions {
        causal: c.causal,
        key_mask: c.masked.then_some(&tm),
        scale: c.scale,
        mode: Mode::Plain,
        return_attention: true,
        ..Default::default()
    };
    let out = attention_blocking(gpu, &tq, &tk, &tv, &opts).unwrap();
    let want = reference::attention(
        &q,
        &k,
        &v,
        c.shape,
        c.dv,
        &RefOptions {
            causal: c.causal,
            key_mask: c.masked.then_some(&mask),
            scale: c.scale.map(f64::from),
        },
    );
    let what = format!(
        "attention {:?} dv={} causal={} masked={}",
        c.shape, c.dv, c.causal, c.masked
    );
    assert_close(
        &format!("{what} A"),
        &out.attention
            .as_ref()
            .unwrap()
            .to_vec_blocking(gpu)
            .unwrap(),
        &want.attention,
        1e-4,
        1e-5,
    );
    assert_close(
        &format!("{what} O"),
        &out.output.to_vec_blocking(gpu).unwrap(),
        &want.output,
        1e-4,
        1e-5,
    );
}

#[test]
fn random_cases_match_reference() {
    on_every_gpu("attention random", |gpu| {
        let mut rng = Rng::new(5);
        for i in 0..12 {
            let shape = [
                1 + rng.below(2),
                1 + rng.below(3),
                1 + rng.below(80),
                1 + rng.below(40),
            ];
            let case = Case {
                shape,
                dv: 1 + rng.below(20),
                causal: i % 2 == 0,
                masked: i % 3 != 0,
                scale: None,
            };
            check(gpu, &mut rng, &case);
        }
    });
}

#[test]
fn edge_shapes_match_reference() {
    on_every_gpu("attention edges", |gpu| {
        let mut rng = Rng::new(6);
        let cases = [
            Case {
                shape: [1, 1, 1, 1],
                dv: 1,
                causal: false,
                masked: false,
                scale: None,
            },
            Case {
                shape: [1, 1, 1, 5],
                dv: 3,
                causal: true,
                masked: false,
                scale: None,
            },
            Case {
                shape: [2, 2, 7, 1],
                dv: 1,
                causal: true,
                masked: true,
                scale: Some(3.0),
            },
            Case {
                shape: [1, 3, 33, 64],
                dv: 64,
                causal: false,
                masked: true,
                scale: None,
            },
            Case {
                shape: [2, 1, 65, 9],
                dv: 2,
                causal: true,
                masked: true,
                scale: Some(0.05),
            },
        ];
        for c in &cases {
            check(gpu, &mut rng, c);
        }
    });
}

#[test]
fn bad_arguments_are_typed_errors() {
    let gpu = &common::gpus()[0];
    let q = Tensor::zeros(gpu, &[1, 2, 4, 8]).unwrap();
    let k3 = Tensor::zeros(gpu, &[2, 4, 8]).unwrap();
    let v_bad = Tensor::zeros(gpu, &[1, 2, 5, 8]).unwrap();
    let empty = Tensor::zeros(gpu, &[1, 2, 0, 8]).unwrap();
    let mask_bad = Tensor::zeros(gpu, &[1, 5]).unwrap();
    let plain = AttentionOptions::default();
    let shape_err =
        |r: saobp::Result<saobp::AttentionOutput>| matches!(r, Err(saobp::Error::Shape(_)));
    let invalid = |r: saobp::Result<saobp::AttentionOutput>| {
        matches!(r, Err(saobp::Error::InvalidArgument(_)))
    };
    assert!(shape_err(attention_blocking(gpu, &q, &k3, &q, &plain)));
    assert!(shape_err(attention_blocking(gpu, &q, &q, &v_bad, &plain)));
    assert!(shape_err(attention_blocking(
        gpu,
        &q,
        &q,
        &q,
        &AttentionOptions {
            key_mask: Some(&mask_bad),
            ..plain.clone()
        }
    )));
    assert!(invalid(attention_blocking(
        gpu, &empty, &empty, &empty, &plain
    )));
    for scale in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(invalid(attention_blocking(
            gpu,
            &q,
            &q,
            &q,
            &AttentionOptions {
                scale: Some(scale),
                ..plain.clone()
            }
        )));
    }
}
