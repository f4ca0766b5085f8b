//! The float64 CPU reference of every kernel, written as plainly as the spec.
//!
//! Inputs are the same f32 values the GPU sees; all arithmetic is f64. Tests
//! compare GPU results against these functions, and users can do the same to
//! check their own GPU, judging with [`compare()`] and the spec's [`Tolerance`].
//! Nothing here shares code with the GPU path beyond argument types.
//!
//! Every function checks that its slices have the lengths its shapes imply
//! and returns [`Error::Shape`] when they do not, so a caller's mistake is
//! an error, never a panic or a silently short result.

pub mod attention;
pub mod bert;
pub mod compare;
pub mod gpt;
#[cfg(feature = "model")]
pub mod gpt_model;
pub mod matmul;
pub mod metrics;
pub mod optim;
pub mod saobp;
pub mod softmax;

pub use attention::{attention, attention_backward, AttentionGrads, AttentionRef, RefOptions};
pub use compare::{compare, Comparison, Tolerance};
pub use matmul::matmul;
pub use saobp::{saobp, saobp_backward, SaobpGrads, SaobpRef};
pub use softmax::{softmax, softmax_backward};

use crate::error::{Error, Result};

/// The number of values of shape `dims`, or a shape error when it overflows.
fn numel(what: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::shape(format!("{what}: shape {dims:?} is too large")))
}

/// Fails with a shape error unless `what` holds exactly the values of shape `dims`.
fn expect_len(what: &str, len: usize, dims: &[usize]) -> Result<()> {
    let want = numel(what, dims)?;
    if len == want {
        Ok(())
    } else {
        Err(Error::shape(format!(
            "{what} holds {len} values, shape {dims:?} needs {want}"
        )))
    }
}

/// The number of `[side, side]` blocks in `len` values (`what` names the
/// slice), or a shape error when `side` is 0 or does not divide it evenly.
fn blocks(what: &str, len: usize, side: usize) -> Result<usize> {
    let block = side
        .checked_mul(side)
        .filter(|&b| b > 0)
        .ok_or_else(|| Error::shape(format!("{what}: n = {side} gives no [n, n] blocks")))?;
    if len.is_multiple_of(block) {
        Ok(len / block)
    } else {
        Err(Error::shape(format!(
            "{what} holds {len} values, not a whole number of [{side}, {side}] blocks"
        )))
    }
}

#[cfg(test)]
mod tests {
    //! Wrong lengths and shapes give `Error::Shape`, never a panic.

    use super::*;
    use crate::kernels::matmul::MatmulOptions;

    fn is_shape<T: std::fmt::Debug>(r: Result<T>) -> bool {
        matches!(r, Err(Error::Shape(_)))
    }

    #[test]
    fn attention_checks_lengths() {
        let x = [0.5f32; 8];
        let shape = [1, 1, 2, 4];
        let ok = RefOptions::default();
        assert!(attention::attention(&x, &x, &x, shape, 4, &ok).is_ok());
        assert!(is_shape(attention::attention(
            &x[..7],
            &x,
            &x,
            shape,
            4,
            &ok
        )));
        assert!(is_shape(attention::attention(
            &x,
            &x[..4],
            &x,
            shape,
            4,
            &ok
        )));
        assert!(is_shape(attention::attention(&x, &x, &x, shape, 3, &ok)));
        let short_mask = RefOptions {
            key_mask: Some(&[1.0]),
            ..ok
        };
        assert!(is_shape(attention::attention(
            &x,
            &x,
            &x,
            shape,
            4,
            &short_mask
        )));
        assert!(is_shape(attention::row_stats(&x, &x, shape, &short_mask)));
        assert!(is_shape(attention::row_stats(&x, &x[1..], shape, &ok)));
        let huge = [usize::MAX, 2, 2, 2];
        assert!(is_shape(attention::attention(&x, &x, &x, huge, 4, &ok)));
    }

    #[test]
    fn saobp_checks_lengths() {
        let a = [0.25f64; 8];
        assert!(saobp::messages(&a, 2).is_ok());
        assert!(is_shape(saobp::messages(&a[..7], 2)));
        assert!(is_shape(saobp::messages(&a, 0)));
        assert!(is_shape(saobp::multi_hop_mass(&a[..6], 2)));
        assert!(is_shape(saobp::multi_hop_mass(&a, 0)));
        let mass = [0.1f64; 4];
        assert!(saobp::refine(&a, &a, &mass, &[1.0, 2.0], 2).is_ok());
        assert!(is_shape(saobp::refine(&a, &a[..4], &mass, &[1.0], 2)));
        assert!(is_shape(saobp::refine(&a, &a, &mass[..3], &[1.0], 2)));
        assert!(is_shape(saobp::refine(&a, &a, &mass, &[], 2)));
        assert!(is_shape(saobp::refine(&a, &a, &mass, &[1.0; 3], 2)));
        assert!(saobp::gtd(&mass, &[1.0, 2.0], 2).is_ok());
        assert!(is_shape(saobp::gtd(&mass[..3], &[1.0], 2)));
        assert!(is_shape(saobp::gtd(&mass, &[], 2)));
        assert!(is_shape(saobp::gtd(&mass, &[1.0], 0)));
        let v = [1.0f32; 4];
        assert!(saobp::apply(&a, &v, 2, 1).is_ok());
        assert!(is_shape(saobp::apply(&a, &v[..3], 2, 1)));
        assert!(is_shape(saobp::apply(&a, &v, 0, 1)));
        let x = [0.5f32; 8];
        let opts = RefOptions::default();
        assert!(saobp::saobp(&x, &x, &x, [1, 2, 2, 2], 2, &opts, &[1.0, 1.0]).is_ok());
        assert!(is_shape(saobp::saobp(
            &x,
            &x,
            &x,
            [1, 2, 2, 2],
            2,
            &opts,
            &[1.0]
        )));
        assert!(is_shape(saobp::saobp(
            &x[..6],
            &x,
            &x,
            [1, 2, 2, 2],
            2,
            &opts,
            &[1.0, 1.0]
        )));
    }

    #[test]
    fn softmax_matmul_and_metrics_check_lengths() {
        let x = [0.5f32; 12];
        assert!(softmax::softmax(&x, &[2, 2, 3], false, None).is_ok());
        assert!(is_shape(softmax::softmax(&x, &[12], false, None)));
        assert!(is_shape(softmax::softmax(&x, &[2, 2, 2], false, None)));
        assert!(is_shape(softmax::softmax(
            &x,
            &[2, 2, 3],
            false,
            Some(&[1.0; 3])
        )));
        let m = MatmulOptions::default();
        assert!(is_shape(matmul::matmul(&x, &[3, 4], &x, &[2, 2], &m)));
        assert!(is_shape(matmul::matmul(&x, &[3], &x, &[4, 3], &m)));
        assert!(is_shape(matmul::matmul(
            &x,
            &[usize::MAX, 2, 2],
            &x,
            &[2, 2],
            &m
        )));

        let p = [0.5f64; 8];
        let mass = [0.1f64; 4];
        assert!(metrics::row_metrics(&p, &mass, None, [1, 2, 2], false, None).is_ok());
        assert!(is_shape(metrics::row_metrics(
            &p[..7],
            &mass,
            None,
            [1, 2, 2],
            false,
            None
        )));
        assert!(is_shape(metrics::row_metrics(
            &p,
            &mass[..3],
            None,
            [1, 2, 2],
            false,
            None
        )));
        assert!(is_shape(metrics::row_metrics(
            &p,
            &mass,
            Some(&[1.0]),
            [1, 2, 2],
            false,
            None
        )));
        assert!(is_shape(metrics::row_metrics(
            &p,
            &mass,
            None,
            [1, 2, 2],
            false,
            Some(&[1.0])
        )));
        let rows = metrics::row_metrics(&p, &mass, None, [1, 2, 2], false, None).unwrap();
        assert_eq!(metrics::summarize(&rows, 2).unwrap().len(), 2);
        assert!(is_shape(metrics::summarize(&rows, 0)));
        assert!(is_shape(metrics::summarize(&rows[..3], 2)));
    }

    #[test]
    fn bert_checks_its_weights_and_inputs() {
        use bert::{bert, BertRefConfig};
        let cfg = BertRefConfig {
            hidden: 2,
            layers: 1,
            heads: 1,
            intermediate: 3,
            eps: 1e-12,
        };
        // Every tensor of a one-layer encoder, by name and length.
        let sizes = |name: &str| -> Option<usize> {
            let per_layer = [
                ("attention.self.query.weight", 4),
                ("attention.self.key.weight", 4),
                ("attention.self.value.weight", 4),
                ("attention.output.dense.weight", 4),
                ("intermediate.dense.weight", 6),
                ("intermediate.dense.bias", 3),
                ("output.dense.weight", 6),
            ];
            let rest = name.strip_prefix("encoder.layer.0.").unwrap_or(name);
            match rest {
                "embeddings.word_embeddings.weight" => Some(10),
                "embeddings.position_embeddings.weight" => Some(8),
                "embeddings.token_type_embeddings.weight" => Some(4),
                _ => per_layer
                    .iter()
                    .find(|(n, _)| *n == rest)
                    .map(|&(_, len)| len)
                    .or(Some(2)),
            }
        };
        let full = |name: &str| sizes(name).map(|len| vec![0.1; len]);
        let (ids, types) = ([1u32, 4, 2], [0u32, 1, 0]);
        assert!(bert(&full, &cfg, &ids, &types, &[vec![0.5]]).is_ok());

        let short = |name: &str| {
            let len = sizes(name)? - usize::from(name.ends_with("output.dense.weight"));
            Some(vec![0.1; len])
        };
        assert!(is_shape(bert(&short, &cfg, &ids, &types, &[])));
        let missing = |name: &str| full(name).filter(|_| !name.ends_with("key.bias"));
        assert!(matches!(
            bert(&missing, &cfg, &ids, &types, &[]),
            Err(Error::Model(_))
        ));
        // A token beyond the 5-row vocabulary, a type beyond 2, more
        // tokens than the 4 positions, type ids of another length.
        assert!(is_shape(bert(&full, &cfg, &[5, 0, 0], &types, &[])));
        assert!(is_shape(bert(&full, &cfg, &ids, &[0, 2, 0], &[])));
        assert!(is_shape(bert(&full, &cfg, &[0; 5], &[0; 5], &[])));
        assert!(is_shape(bert(&full, &cfg, &ids, &types[..2], &[])));
        assert!(is_shape(bert(&full, &cfg, &[], &[], &[])));
        assert!(is_shape(bert(&full, &cfg, &ids, &types, &[vec![0.5; 2]])));
        let odd = BertRefConfig { heads: 3, ..cfg };
        assert!(is_shape(bert(&full, &odd, &ids, &types, &[])));
    }

    #[test]
    fn compare_checks_lengths() {
        assert!(is_shape(compare(&[1.0], &[1.0, 2.0], Tolerance::SPEC)));
    }
}
