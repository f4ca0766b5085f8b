//! SAOBP's O(N²D) output backward on the GPU against the float64
//! references: the spec's O(N²D) adjoint ([`reference::saobp::output_backward`])
//! and the backward through `M` ([`reference::saobp::output_backward_materialized`]),
//! on every adapter.

mod common;

use common::{
    assert_within, key_mask, on_every_gpu, on_every_row_layout, same_adapter, Rng, Tolerance,
};
use saobp::reference::{self, saobp::OutputGrads};
use saobp::{
    matmul_blocking, saobp_output_backward_blocking, Error, Gpu, Lambda, MatmulOptions,
    OutputGradients, Tensor,
};

/// One backward problem: `B·H` attention maps of `n`×`n` (softmax of random
/// scores), values `dv` wide, λ per head.
struct Case {
    b: usize,
    h: usize,
    n: usize,
    dv: usize,
    causal: bool,
    /// Masks key 0 of the last batch item: under causal masking its row 0
    /// has no valid key and is all zeros.
    empty_row: bool,
    lambda: Vec<f32>,
}

/// The inputs of a case, as uploaded (the references see the same f32 values).
struct Inputs {
    a: Vec<f32>,
    v: Vec<f32>,
    grad: Vec<f32>,
}

impl Case {
    fn describe(&self) -> String {
        format!(
            "[{}, {}, {}] dv {} causal {} empty row {} λ {:?}",
            self.b, self.h, self.n, self.dv, self.causal, self.empty_row, self.lambda
        )
    }

    fn inputs(&self, rng: &mut Rng) -> Inputs {
        let (b, h, n, dv) = (self.b, self.h, self.n, self.dv);
        let scores = rng.vec(b * h * n * n, -4.0, 4.0);
        let mask = self
            .empty_row
            .then(|| key_mask(b, n, |item, key| !(item == b - 1 && key == 0)));
        let a = reference::softmax(&scores, &[b, h, n, n], self.causal, mask.as_deref())
            .unwrap()
            .iter()
            .map(|&x| x as f32)
            .collect();
        Inputs {
            a,
            v: rng.vec(b * h * n * dv, -1.0, 1.0),
            grad: rng.vec(b * h * n * dv, -1.0, 1.0),
        }
    }

    fn lambda64(&self) -> Vec<f64> {
        self.lambda.iter().map(|&l| f64::from(l)).collect()
    }

    fn run(&self, gpu: &Gpu, x: &Inputs) -> OutputGradients {
        let (b, h, n, dv) = (self.b, self.h, self.n, self.dv);
        let a = Tensor::from_slice(gpu, &[b, h, n, n], &x.a).unwrap();
        let v = Tensor::from_slice(gpu, &[b, h, n, dv], &x.v).unwrap();
        let g = Tensor::from_slice(gpu, &[b, h, n, dv], &x.grad).unwrap();
        saobp_output_backward_blocking(gpu, &a, &v, &Lambda::PerHead(self.lambda.clone()), &g)
            .unwrap()
    }

    fn reference(&self, x: &Inputs) -> OutputGrads {
        reference::saobp::output_backward(&x.a, &x.v, &self.lambda64(), self.n, self.dv, &x.grad)
            .unwrap()
    }
}

/// The three gradients, downloaded.
fn download(gpu: &Gpu, out: &OutputGradients) -> [Vec<f32>; 3] {
    [
        out.grad_attention.to_vec_blocking(gpu).unwrap(),
        out.grad_v.to_vec_blocking(gpu).unwrap(),
        out.grad_lambda.to_vec_blocking(gpu).unwrap(),
    ]
}

/// The bound on every gradient: the spec's. The longest f32 sums here are
/// over `N` terms (`Aᵀ·W`, `Aᵀ·dY`) and over the `B·N` rows of a head (dλ),
/// yet on these shapes the worst error measured is about a sixth of
/// [`Tolerance::SPEC`]'s bound (dA at N = 33 with λ = 5), so no wider bound
/// is needed.
const TOLERANCE: Tolerance = Tolerance::SPEC;

fn check_against(what: &str, c: &Case, got: &[Vec<f32>; 3], want: &OutputGrads) {
    let name = format!("{what} {}", c.describe());
    assert_within(
        &format!("{name} dA"),
        &got[0],
        &want.grad_attention,
        TOLERANCE,
    );
    assert_within(&format!("{name} dV"), &got[1], &want.grad_v, TOLERANCE);
    assert_within(&format!("{name} dλ"), &got[2], &want.grad_lambda, TOLERANCE);
}

fn case(b: usize, h: usize, n: usize, dv: usize, causal: bool, lambda: &[f32]) -> Case {
    Case {
        b,
        h,
        n,
        dv,
        causal,
        empty_row: false,
        lambda: lambda.to_vec(),
    }
}

#[test]
fn matches_the_reference_on_random_maps() {
    let cases = [
        case(2, 3, 7, 5, false, &[0.0, 0.3, 5.0]),
        Case {
            empty_row: true,
            ..case(2, 3, 33, 9, true, &[5.0, 0.0, 0.3])
        },
        case(1, 2, 65, 3, true, &[0.3, 5.0]),
        case(2, 2, 33, 16, false, &[5.0, 0.3]),
        // Dv of whole texels with an empty row (the texel row kernels).
        Case {
            empty_row: true,
            ..case(2, 2, 20, 8, true, &[5.0, 0.3])
        },
        // Dv above the workgroup width: the row passes loop over columns.
        case(1, 2, 9, 67, false, &[0.3, 5.0]),
        Case {
            empty_row: true,
            ..case(3, 1, 7, 1, true, &[5.0])
        },
    ];
    on_every_row_layout("saobp backward vs reference", |gpu| {
        let mut rng = Rng::new(1307);
        for c in &cases {
            let x = c.inputs(&mut rng);
            let before = gpu.work();
            let got = download(gpu, &c.run(gpu, &x));
            check_against("O(N²D)", c, &got, &c.reference(&x));
            // The adjoints' row kernels read texels in the invocation
            // layout where Dv is whole texels.
            let texels = saobp::row_layout(gpu).unwrap() == saobp::RowLayout::Invocation
                && c.dv.is_multiple_of(4);
            let work = gpu.work().since(&before);
            for kernel in ["saobp::output_adjoints", "saobp::row_adjoints"] {
                let ran = work.count(&format!("{kernel}_texture")) == 1;
                assert_eq!(ran, texels, "Dv = {}: {:?}", c.dv, work.kernels);
            }
        }
    });
}

#[test]
fn agrees_with_the_materialized_backward() {
    let cases = [
        Case {
            empty_row: true,
            ..case(2, 2, 17, 6, true, &[0.3, 5.0])
        },
        case(1, 3, 33, 7, false, &[5.0, 0.0, 0.3]),
    ];
    on_every_gpu("saobp backward vs materialized", |gpu| {
        let mut rng = Rng::new(4242);
        for c in &cases {
            let x = c.inputs(&mut rng);
            let got = download(gpu, &c.run(gpu, &x));
            let want = reference::saobp::output_backward_materialized(
                &x.a,
                &x.v,
                &c.lambda64(),
                c.n,
                c.dv,
                &x.grad,
            )
            .unwrap();
            check_against("through M", c, &got, &want);
        }
    });
}

#[test]
fn lambda_zero_gives_plain_attention_gradients_exactly() {
    on_every_gpu("saobp backward λ=0", |gpu| {
        let mut rng = Rng::new(99);
        for c in [
            case(2, 2, 33, 8, true, &[0.0, 0.0]),
            Case {
                empty_row: true,
                ..case(2, 1, 65, 5, true, &[0.0])
            },
        ] {
            let x = c.inputs(&mut rng);
            let (b, h, n, dv) = (c.b, c.h, c.n, c.dv);
            let a = Tensor::from_slice(gpu, &[b, h, n, n], &x.a).unwrap();
            let v = Tensor::from_slice(gpu, &[b, h, n, dv], &x.v).unwrap();
            let g = Tensor::from_slice(gpu, &[b, h, n, dv], &x.grad).unwrap();
            let out =
                saobp_output_backward_blocking(gpu, &a, &v, &Lambda::Scalar(0.0), &g).unwrap();
            let got = download(gpu, &out);
            // Plain attention's O = A·V: ∂L/∂A = G·Vᵀ and ∂L/∂V = Aᵀ·G.
            let trans_b = MatmulOptions {
                trans_b: true,
                ..Default::default()
            };
            let trans_a = MatmulOptions {
                trans_a: true,
                ..Default::default()
            };
            let plain_da = matmul_blocking(gpu, &g, &v, &trans_b).unwrap();
            let plain_dv = matmul_blocking(gpu, &a, &g, &trans_a).unwrap();
            assert_eq!(
                got[0],
                plain_da.to_vec_blocking(gpu).unwrap(),
                "{}: dA = G·Vᵀ",
                c.describe()
            );
            assert_eq!(
                got[1],
                plain_dv.to_vec_blocking(gpu).unwrap(),
                "{}: dV = Aᵀ·G",
                c.describe()
            );
            // dλ at λ = 0 is not 0: it is the first-order effect of refining.
            let want = c.reference(&x);
            assert!(want.grad_lambda.iter().all(|&l| l.abs() > 1e-3));
            assert_within(
                &format!("{} dλ", c.describe()),
                &got[2],
                &want.grad_lambda,
                TOLERANCE,
            );
        }
    });
}

#[test]
fn work_is_of_order_n2d_in_one_submission() {
    on_every_gpu("saobp backward work", |shared| {
        // A context of its own: tests running alongside add to a shared one's counts.
        let gpu = &Gpu::new_blocking(&same_adapter(shared)).unwrap();
        let mut rng = Rng::new(5);
        let c = case(2, 2, 65, 4, true, &[0.3, 5.0]);
        let x = c.inputs(&mut rng);
        let (b, h, n, dv) = (c.b, c.h, c.n, c.dv);
        let a = Tensor::from_slice(gpu, &[b, h, n, n], &x.a).unwrap();
        let v = Tensor::from_slice(gpu, &[b, h, n, dv], &x.v).unwrap();
        let g = Tensor::from_slice(gpu, &[b, h, n, dv], &x.grad).unwrap();
        let before = gpu.work();
        let out =
            saobp_output_backward_blocking(gpu, &a, &v, &Lambda::PerHead(c.lambda.clone()), &g)
                .unwrap();
        let work = gpu.work().since(&before);
        // Six products of N×N by N×k: Y = A·V, A·U', Aᵀ·W, dY·Vᵀ, W·U'ᵀ and
        // Aᵀ·dY, with k = Dv for three and for the other three Dv + 1
        // padded with zero columns to a multiple of 4 (whole texels).
        let maps = (b * h) as u64;
        let (n, dv) = (n as u64, dv as u64);
        let wide = (dv + 1).next_multiple_of(4);
        assert_eq!(work.product_flops, 2 * maps * n * n * (3 * dv + 3 * wide));
        // A single N³ product (A·A, as the materialized path does) would be
        // more than all of them together at this N.
        assert!(work.product_flops < 2 * maps * n * n * n);
        assert_eq!(work.count("saobp::remove_echoes"), 0, "{:?}", work.kernels);
        assert_eq!(work.count("saobp::refine"), 0, "{:?}", work.kernels);
        for kernel in [
            "saobp::diag_stats",
            "saobp::two_hop_values",
            "saobp::output_adjoints",
            "saobp::row_adjoints",
            "saobp::attention_grad",
            "saobp::value_grad",
            "saobp::lambda_grad",
        ] {
            // In either row layout, reading storage buffers or texels.
            let runs = ["", "_serial", "_texture"]
                .iter()
                .map(|form| work.count(&format!("{kernel}{form}")))
                .sum::<u64>();
            assert_eq!(runs, 1, "{kernel}: {:?}", work.kernels);
        }
        assert_eq!(work.submissions, 1, "{:?}", work.kernels);

        // The same call again gives the same bits: no float atomics anywhere.
        let first = download(gpu, &out);
        let again =
            saobp_output_backward_blocking(gpu, &a, &v, &Lambda::PerHead(c.lambda.clone()), &g)
                .unwrap();
        let bits = |x: &[Vec<f32>; 3]| -> Vec<Vec<u32>> {
            x.iter()
                .map(|v| v.iter().map(|f| f.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(&first), bits(&download(gpu, &again)));
    });
}

#[test]
fn bad_arguments_are_typed_errors_before_any_gpu_work() {
    // A context of its own: tests running alongside add to a shared one's counts.
    let gpu = &Gpu::new_blocking(&same_adapter(&common::gpus()[0])).unwrap();
    let t = |shape: &[usize]| Tensor::zeros(gpu, shape).unwrap();
    let (a, v) = (t(&[1, 2, 5, 5]), t(&[1, 2, 5, 3]));
    let shape_cases = [
        (
            "A not square",
            t(&[1, 2, 5, 4]),
            t(&[1, 2, 5, 3]),
            t(&[1, 2, 5, 3]),
        ),
        (
            "A of rank 3",
            t(&[2, 5, 5]),
            t(&[1, 2, 5, 3]),
            t(&[1, 2, 5, 3]),
        ),
        (
            "V of another N",
            a.clone(),
            t(&[1, 2, 4, 3]),
            t(&[1, 2, 4, 3]),
        ),
        (
            "V of other heads",
            a.clone(),
            t(&[1, 1, 5, 3]),
            t(&[1, 1, 5, 3]),
        ),
        (
            "V with Dv = 0",
            a.clone(),
            t(&[1, 2, 5, 0]),
            t(&[1, 2, 5, 0]),
        ),
        ("G not V's shape", a.clone(), v.clone(), t(&[1, 2, 5, 4])),
        ("G of rank 3", a.clone(), v.clone(), t(&[2, 5, 3])),
    ];
    let before = gpu.work();
    for (what, a, v, g) in &shape_cases {
        let e = saobp_output_backward_blocking(gpu, a, v, &Lambda::Scalar(0.5), g).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{what}: {e}");
    }
    for lambda in [
        Lambda::Scalar(-0.1),
        Lambda::Scalar(f32::NAN),
        Lambda::PerHead(vec![1.0]),
        Lambda::PerHead(vec![1.0, f32::INFINITY]),
    ] {
        let e = saobp_output_backward_blocking(gpu, &a, &v, &lambda, &v).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{lambda:?}: {e}");
    }
    let mut bad = vec![0.0; 30];
    bad[7] = f32::NAN;
    let g = Tensor::from_slice(gpu, &[1, 2, 5, 3], &bad).unwrap();
    let e = saobp_output_backward_blocking(gpu, &a, &v, &Lambda::Scalar(0.5), &g).unwrap_err();
    assert!(
        matches!(&e, Error::NonFinite { tensor, index: 7, .. } if tensor == "grad_output"),
        "{e}"
    );
    let work = gpu.work().since(&before);
    assert_eq!(work.submissions, 0, "{:?}", work.kernels);
}
