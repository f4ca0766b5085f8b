//! The GPT's per-token layer ops (bias + GELU, bias gradient, LayerNorm,
//! embeddings, cross-entropy), forward and backward, against the float64
//! reference on every adapter; the reductions are bit-identical run to run,
//! and bad shapes are typed errors.
//!
//! Bounds: the spec's (`Tolerance::SPEC`) on every elementwise and per-row
//! result. A gradient that sums over rows (a bias's, `dγ`, `dβ`, `dwte`,
//! `dwpe`) is a product with a ones vector over those rows, so it takes the
//! library's matmul bound for that many terms (`Tolerance::matmul`: f32
//! accumulation rounding grows with the count).

mod common;

use common::{assert_within, on_every_gpu, on_every_row_layout, Rng, Tolerance};
use saobp::kernels::gpt::{
    bias_backward_blocking, bias_gelu_backward_blocking, bias_gelu_blocking,
    cross_entropy_blocking, embed_backward_add_blocking, embed_backward_blocking, embed_blocking,
    layer_norm_backward_blocking, layer_norm_blocking, TokenIds,
};
use saobp::reference::gpt as reference;
use saobp::{row_layout, Error, Gpu, RowLayout, Tensor, Work};

fn upload(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_slice(gpu, shape, data).unwrap()
}

fn download(gpu: &Gpu, t: &Tensor) -> Vec<f32> {
    t.to_vec_blocking(gpu).unwrap()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Asserts that `kernel` ran since `before` in the form `gpu`'s row layout
/// gives it for rows `width` wide: reading texels in the invocation layout
/// where the width is whole texels, one invocation per row (or column)
/// elsewhere in that layout, one workgroup per row in the other.
fn check_ran(gpu: &Gpu, what: &str, kernel: &str, width: usize, before: &Work) {
    let want = match row_layout(gpu).unwrap() {
        RowLayout::Invocation if width.is_multiple_of(4) => format!("gpt::{kernel}_texture"),
        RowLayout::Invocation => format!("gpt::{kernel}_serial"),
        RowLayout::Workgroup => format!("gpt::{kernel}"),
    };
    let work = gpu.work().since(before);
    assert!(
        work.kernels.iter().any(|(k, _)| *k == want),
        "{what}: {want} did not run: {:?}",
        work.kernels
    );
}

/// Random `(rows, width)`, widths mostly not multiples of 64.
fn shape(rng: &mut Rng) -> (usize, usize) {
    (1 + rng.below(130), 1 + rng.below(200))
}

#[test]
fn bias_gelu_forward_and_backward_match_reference() {
    on_every_gpu("bias + GELU", |gpu| {
        let mut rng = Rng::new(11);
        for case in 0..6 {
            let (rows, width) = shape(&mut rng);
            let mut x = rng.vec(rows * width, -6.0, 6.0);
            // Far tails: tanh saturates, x³ overflows f32 beyond ~7e12.
            if case == 0 {
                let tails = [-1e20, -1e4, -30.0, -20.5, -9.0, 9.0, 20.5, 30.0, 1e4, 1e20];
                for (v, t) in x.iter_mut().zip(tails) {
                    *v = t;
                }
            }
            let bias = rng.vec(width, -1.0, 1.0);
            let dy = rng.vec(rows * width, -1.0, 1.0);
            let what = format!("[{rows}, {width}]");
            let (tx, tb, tdy) = (
                upload(gpu, &[rows, width], &x),
                upload(gpu, &[width], &bias),
                upload(gpu, &[rows, width], &dy),
            );

            let y = download(gpu, &bias_gelu_blocking(gpu, &tx, &tb).unwrap());
            let want = reference::bias_gelu(&x, &bias).unwrap();
            assert_within(&format!("gelu {what}"), &y, &want, Tolerance::SPEC);

            let g = bias_gelu_backward_blocking(gpu, &tx, &tb, &tdy).unwrap();
            let (dx, db) = reference::bias_gelu_backward(&x, &bias, &dy).unwrap();
            assert_within(
                &format!("gelu dx {what}"),
                &download(gpu, &g.dx),
                &dx,
                Tolerance::SPEC,
            );
            let got_db = download(gpu, &g.dbias);
            // A sum over `rows` terms.
            assert_within(
                &format!("gelu dbias {what}"),
                &got_db,
                &db,
                Tolerance::matmul(rows),
            );
            let again = bias_gelu_backward_blocking(gpu, &tx, &tb, &tdy).unwrap();
            assert_eq!(bits(&download(gpu, &again.dbias)), bits(&got_db), "{what}");
        }
    });
}

#[test]
fn bias_backward_is_deterministic_column_sums() {
    on_every_row_layout("bias backward", |gpu| {
        let mut rng = Rng::new(12);
        // Widths of whole texels too (the software adapters' texture kernel).
        let mut shapes = vec![
            (1, 1),
            (3, 67),
            (257, 5),
            (1000, 33),
            (768, 128),
            (3, 4),
            (37, 516),
        ];
        shapes.extend((0..3).map(|_| shape(&mut rng)));
        for (rows, width) in shapes {
            let dy = rng.vec(rows * width, -1.0, 1.0);
            let t = upload(gpu, &[rows, width], &dy);
            let before = gpu.work();
            let got = download(gpu, &bias_backward_blocking(gpu, &t).unwrap());
            check_ran(gpu, "bias backward", "column_sum", width, &before);
            let want = reference::column_sum(&dy, width).unwrap();
            // A sum over `rows` terms.
            assert_within(
                &format!("bias backward [{rows}, {width}]"),
                &got,
                &want,
                Tolerance::matmul(rows),
            );
            let again = download(gpu, &bias_backward_blocking(gpu, &t).unwrap());
            assert_eq!(bits(&again), bits(&got), "[{rows}, {width}] twice");
        }
    });
}

#[test]
fn layer_norm_forward_and_backward_match_reference() {
    on_every_row_layout("LayerNorm", |gpu| {
        let mut rng = Rng::new(13);
        let eps = 1e-5;
        // Widths of whole texels too (the software adapters' texture kernels).
        let mut shapes: Vec<_> = (0..6).map(|_| shape(&mut rng)).collect();
        shapes.extend([(768, 128), (5, 4), (33, 36)]);
        for (case, (rows, width)) in shapes.into_iter().enumerate() {
            let width = width.max(2);
            // Rows off-centre, so the mean matters.
            let shift = if case % 2 == 0 { 3.0 } else { 0.0 };
            let x: Vec<f32> = rng
                .vec(rows * width, -2.0, 2.0)
                .into_iter()
                .map(|v| v + shift)
                .collect();
            let gamma = rng.vec(width, 0.5, 1.5);
            let beta = rng.vec(width, -0.5, 0.5);
            let dy = rng.vec(rows * width, -1.0, 1.0);
            let what = format!("[{rows}, {width}]");
            let tx = upload(gpu, &[rows, width], &x);
            let (tg, tb) = (upload(gpu, &[width], &gamma), upload(gpu, &[width], &beta));

            let before = gpu.work();
            let fwd = layer_norm_blocking(gpu, &tx, &tg, &tb, eps).unwrap();
            check_ran(gpu, &what, "layer_norm_forward", width, &before);
            let want = reference::layer_norm(&x, &gamma, &beta, f64::from(eps)).unwrap();
            assert_within(
                &format!("LayerNorm {what}"),
                &download(gpu, &fwd.out),
                &want.out,
                Tolerance::SPEC,
            );
            let stats: Vec<f64> = want
                .mean
                .iter()
                .zip(&want.rstd)
                .flat_map(|(&m, &r)| [m, r])
                .collect();
            assert_within(
                &format!("LayerNorm stats {what}"),
                &download(gpu, &fwd.stats),
                &stats,
                Tolerance::SPEC,
            );

            let tdy = upload(gpu, &[rows, width], &dy);
            let before = gpu.work();
            let g = layer_norm_backward_blocking(gpu, &tx, &tg, &fwd.stats, &tdy).unwrap();
            for kernel in ["layer_norm_backward", "layer_norm_params"] {
                check_ran(gpu, &what, kernel, width, &before);
            }
            let want = reference::layer_norm_backward(&x, &gamma, &dy, f64::from(eps)).unwrap();
            assert_within(
                &format!("LayerNorm dx {what}"),
                &download(gpu, &g.dx),
                &want.dx,
                Tolerance::SPEC,
            );
            let dgamma = download(gpu, &g.dgamma);
            // Sums over `rows` terms.
            assert_within(
                &format!("LayerNorm dgamma {what}"),
                &dgamma,
                &want.dgamma,
                Tolerance::matmul(rows),
            );
            assert_within(
                &format!("LayerNorm dbeta {what}"),
                &download(gpu, &g.dbeta),
                &want.dbeta,
                Tolerance::matmul(rows),
            );
            let again = layer_norm_backward_blocking(gpu, &tx, &tg, &fwd.stats, &tdy).unwrap();
            assert_eq!(bits(&download(gpu, &again.dgamma)), bits(&dgamma), "{what}");
        }
    });
}

#[test]
fn embedding_forward_and_scatter_add_backward_match_reference() {
    on_every_gpu("embedding", |gpu| {
        let mut rng = Rng::new(14);
        // (batch, n, vocab, width, spare positions): a tiny vocabulary with
        // many repeats, odd sizes, a vocabulary larger than the tokens.
        let mut cases = vec![(3, 67, 3, 5, 0), (1, 1, 1, 1, 2), (4, 33, 84, 129, 3)];
        cases.extend((0..3).map(|_| {
            (
                1 + rng.below(4),
                1 + rng.below(40),
                1 + rng.below(90),
                1 + rng.below(100),
                rng.below(5),
            )
        }));
        for (batch, n, vocab, width, spare) in cases {
            let positions = n + spare;
            let rows = batch * n;
            let ids: Vec<u32> = (0..rows).map(|_| rng.below(vocab) as u32).collect();
            let wte = rng.vec(vocab * width, -1.0, 1.0);
            let wpe = rng.vec(positions * width, -1.0, 1.0);
            let dx = rng.vec(rows * width, -1.0, 1.0);
            let what = format!("B={batch} T={n} V={vocab} C={width} P={positions}");
            let tids = TokenIds::new(gpu, &ids, batch, n, vocab).unwrap();
            let twte = upload(gpu, &[vocab, width], &wte);
            let twpe = upload(gpu, &[positions, width], &wpe);

            let x = embed_blocking(gpu, &tids, &twte, &twpe).unwrap();
            assert_eq!(x.shape(), &[batch, n, width]);
            let got = download(gpu, &x);
            let want = reference::embed(&ids, n, &wte, &wpe, width).unwrap();
            assert_within(&format!("embed {what}"), &got, &want, Tolerance::SPEC);
            // One f32 addition per element: exactly the host's.
            let exact: Vec<f32> = (0..rows * width)
                .map(|i| {
                    let (t, c) = (i / width, i % width);
                    wte[ids[t] as usize * width + c] + wpe[(t % n) * width + c]
                })
                .collect();
            assert_eq!(bits(&got), bits(&exact), "embed {what}");

            let tdx = upload(gpu, &[batch, n, width], &dx);
            let g = embed_backward_blocking(gpu, &tids, &tdx, positions).unwrap();
            let (dwte, dwpe) = reference::embed_backward(&ids, n, &dx, vocab, positions).unwrap();
            let got_wte = download(gpu, &g.dwte);
            let got_wpe = download(gpu, &g.dwpe);
            // Sums over up to `rows` (an id) and `batch` (a position) terms.
            assert_within(
                &format!("dwte {what}"),
                &got_wte,
                &dwte,
                Tolerance::matmul(rows),
            );
            assert_within(
                &format!("dwpe {what}"),
                &got_wpe,
                &dwpe,
                Tolerance::matmul(batch),
            );
            // Unused ids and positions past T get exactly 0.
            for (v, row) in got_wte.chunks(width).enumerate() {
                if !ids.contains(&(v as u32)) {
                    assert!(row.iter().all(|&g| g == 0.0), "dwte row {v} {what}");
                }
            }
            assert!(got_wpe[n * width..].iter().all(|&g| g == 0.0), "{what}");

            let again = embed_backward_blocking(gpu, &tids, &tdx, positions).unwrap();
            assert_eq!(bits(&download(gpu, &again.dwte)), bits(&got_wte), "{what}");
            assert_eq!(bits(&download(gpu, &again.dwpe)), bits(&got_wpe), "{what}");

            // Adding to gradients already there (the tied head's, in a model).
            let base_wte = rng.vec(vocab * width, -1.0, 1.0);
            let base_wpe = rng.vec(positions * width, -1.0, 1.0);
            let acc_wte = upload(gpu, &[vocab, width], &base_wte);
            let acc_wpe = upload(gpu, &[positions, width], &base_wpe);
            embed_backward_add_blocking(gpu, &tids, &tdx, &acc_wte, &acc_wpe).unwrap();
            let plus = |base: &[f32], add: &[f64]| -> Vec<f64> {
                base.iter()
                    .zip(add)
                    .map(|(&b, a)| f64::from(b) + a)
                    .collect()
            };
            assert_within(
                &format!("dwte added {what}"),
                &download(gpu, &acc_wte),
                &plus(&base_wte, &dwte),
                Tolerance::matmul(rows + 1),
            );
            assert_within(
                &format!("dwpe added {what}"),
                &download(gpu, &acc_wpe),
                &plus(&base_wpe, &dwpe),
                Tolerance::matmul(batch + 1),
            );
        }
    });
}

/// Runs cross-entropy of `logits` (`[rows, vocab]`) against `targets`,
/// holds the loss, the row losses and `dlogits` to the reference, checks a
/// second run is bit-identical, and returns `(loss, dlogits)`.
fn check_cross_entropy(
    gpu: &Gpu,
    logits: &[f32],
    targets: &[u32],
    vocab: usize,
) -> (f32, Vec<f32>) {
    let rows = targets.len();
    let what = format!("cross-entropy [{rows}, {vocab}]");
    let tids = TokenIds::new(gpu, targets, 1, rows, vocab).unwrap();
    let tl = upload(gpu, &[rows, vocab], logits);
    let ce = cross_entropy_blocking(gpu, &tl, &tids).unwrap();
    let want = reference::cross_entropy(logits, targets, vocab).unwrap();
    let loss = download(gpu, &ce.loss);
    assert_within(
        &format!("{what} loss"),
        &loss,
        &[want.loss],
        Tolerance::SPEC,
    );
    assert_within(
        &format!("{what} row losses"),
        &download(gpu, &ce.losses),
        &want.losses,
        Tolerance::SPEC,
    );
    let dlogits = download(gpu, &ce.dlogits);
    assert_within(
        &format!("{what} dlogits"),
        &dlogits,
        &want.dlogits,
        Tolerance::SPEC,
    );
    let again = cross_entropy_blocking(gpu, &tl, &tids).unwrap();
    assert_eq!(bits(&download(gpu, &again.loss)), bits(&loss), "{what}");
    assert_eq!(
        bits(&download(gpu, &again.dlogits)),
        bits(&dlogits),
        "{what}"
    );
    (loss[0], dlogits)
}

#[test]
fn cross_entropy_matches_reference() {
    on_every_row_layout("cross-entropy", |gpu| {
        let mut rng = Rng::new(15);
        let mut shapes = vec![(1, 1), (48, 65), (3, 84)];
        shapes.extend((0..4).map(|_| (1 + rng.below(70), 1 + rng.below(300))));
        for (rows, vocab) in shapes {
            let logits = rng.vec(rows * vocab, -8.0, 8.0);
            let targets: Vec<u32> = (0..rows).map(|_| rng.below(vocab) as u32).collect();
            let (loss, dlogits) = check_cross_entropy(gpu, &logits, &targets, vocab);
            if vocab == 1 {
                // One class: certain, whatever the logit.
                assert_eq!((loss, dlogits[0]), (0.0, 0.0));
            }
        }
    });
}

#[test]
fn cross_entropy_of_huge_logits_is_finite_and_correct() {
    on_every_row_layout("cross-entropy ±1e4", |gpu| {
        let v = 67;
        let mut logits = Vec::new();
        // ±1e4 alternating, hit (target on a +1e4) and missed (on a −1e4);
        // all equal at 1e4; one-hot 1e4 on the target.
        let alternating = (0..v).map(|j| if j % 2 == 0 { 1e4f32 } else { -1e4 });
        logits.extend(alternating.clone());
        logits.extend(alternating);
        logits.extend(std::iter::repeat_n(1e4f32, v));
        logits.extend((0..v).map(|j| if j == 7 { 1e4f32 } else { 0.0 }));
        let targets = [0u32, 1, 5, 7];
        let (loss, dlogits) = check_cross_entropy(gpu, &logits, &targets, v);
        assert!(dlogits.iter().all(|g| g.is_finite()));
        // The miss costs the 2e4 gap plus ln(34); the uniform row ln(67).
        let hits = 34f64.ln();
        let want = (hits + (2e4 + hits) + (v as f64).ln()) / 4.0;
        assert!(
            (f64::from(loss) - want).abs() <= 1e-4 * want,
            "{loss} vs {want}"
        );
        // The one-hot row is certain and right: no gradient.
        assert!(dlogits[3 * v..].iter().all(|&g| g == 0.0));
    });
}

#[test]
fn bad_shapes_and_ids_are_typed_errors() {
    let gpu = &common::gpus()[0];
    let is_shape = |e: Error| matches!(e, Error::Shape(_));
    let is_invalid = |e: Error| matches!(e, Error::InvalidArgument(_));
    let t = |shape: &[usize]| Tensor::zeros(gpu, shape).unwrap();
    let (x, b) = (t(&[4, 3]), t(&[3]));

    assert!(is_shape(bias_gelu_blocking(gpu, &x, &t(&[4])).unwrap_err()));
    assert!(is_shape(
        bias_gelu_backward_blocking(gpu, &x, &b, &t(&[3, 4])).unwrap_err()
    ));
    assert!(is_shape(
        bias_backward_blocking(gpu, &t(&[4, 0])).unwrap_err()
    ));

    assert!(is_shape(
        layer_norm_blocking(gpu, &x, &b, &t(&[2]), 1e-5).unwrap_err()
    ));
    for eps in [-1e-5, f32::NAN, f32::INFINITY] {
        assert!(is_invalid(
            layer_norm_blocking(gpu, &x, &b, &b, eps).unwrap_err()
        ));
    }
    assert!(is_shape(
        layer_norm_backward_blocking(gpu, &x, &b, &t(&[2, 4]), &x).unwrap_err()
    ));
    assert!(is_shape(
        layer_norm_backward_blocking(gpu, &x, &b, &t(&[4, 2]), &t(&[4, 4])).unwrap_err()
    ));

    assert!(is_invalid(
        TokenIds::new(gpu, &[0, 5], 1, 2, 5).unwrap_err()
    ));
    assert!(is_shape(
        TokenIds::new(gpu, &[0, 1, 2], 1, 2, 5).unwrap_err()
    ));
    assert!(is_invalid(TokenIds::new(gpu, &[], 0, 2, 5).unwrap_err()));
    assert!(is_invalid(TokenIds::new(gpu, &[], 1, 0, 5).unwrap_err()));
    assert!(is_invalid(TokenIds::new(gpu, &[0], 1, 1, 0).unwrap_err()));

    // Ids of shape [2, 3] from a vocabulary of 5.
    let ids = TokenIds::new(gpu, &[0, 4, 1, 1, 2, 3], 2, 3, 5).unwrap();
    let (wte, wpe) = (t(&[5, 3]), t(&[4, 3]));
    assert!(embed_blocking(gpu, &ids, &wte, &wpe).is_ok());
    assert!(is_shape(
        embed_blocking(gpu, &ids, &t(&[6, 3]), &wpe).unwrap_err()
    ));
    assert!(is_shape(
        embed_blocking(gpu, &ids, &wte, &t(&[2, 3])).unwrap_err()
    ));
    assert!(is_shape(
        embed_blocking(gpu, &ids, &wte, &t(&[4, 2])).unwrap_err()
    ));
    let dx = t(&[2, 3, 3]);
    assert!(is_invalid(
        embed_backward_blocking(gpu, &ids, &dx, 2).unwrap_err()
    ));
    assert!(is_shape(
        embed_backward_blocking(gpu, &ids, &t(&[5, 3]), 4).unwrap_err()
    ));
    assert!(is_shape(
        embed_backward_add_blocking(gpu, &ids, &dx, &wte, &t(&[4, 2])).unwrap_err()
    ));

    // Six targets of a vocabulary of 5.
    assert!(cross_entropy_blocking(gpu, &t(&[6, 5]), &ids).is_ok());
    assert!(is_shape(
        cross_entropy_blocking(gpu, &t(&[6, 4]), &ids).unwrap_err()
    ));
    assert!(is_shape(
        cross_entropy_blocking(gpu, &t(&[5, 5]), &ids).unwrap_err()
    ));
    let nan = Tensor::from_slice(gpu, &[6, 5], &[f32::NAN; 30]).unwrap();
    assert!(matches!(
        cross_entropy_blocking(gpu, &nan, &ids).unwrap_err(),
        Error::NonFinite { .. }
    ));
}
