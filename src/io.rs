//! Reading attention inputs from safetensors files, as `saobp refine` does.
//!
//! Everything in a file is checked before anything is used: tensor presence,
//! dtype, rank, shapes against each other, finiteness and mask values. The
//! `safetensors` crate bounds the header and checks every tensor's byte range
//! against the file, so a hostile header cannot drive an allocation larger
//! than the file itself.

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// The checked content of an input file: `q`, `k`, `v` `[B, H, N, D]`, and
/// optionally `key_mask` `[B, N]` (0 or 1) and `lambda` `[H]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RefineInput {
    /// Queries.
    pub q: Vec<f32>,
    /// Keys.
    pub k: Vec<f32>,
    /// Values.
    pub v: Vec<f32>,
    /// Shape of `q` and `k`.
    pub q_shape: Vec<usize>,
    /// Shape of `v`.
    pub v_shape: Vec<usize>,
    /// Key mask, 1 keep / 0 padded, as f32.
    pub key_mask: Option<Vec<f32>>,
    /// λ per head.
    pub lambda: Option<Vec<f32>>,
}

fn fail(msg: String) -> Error {
    Error::Input(msg)
}

/// The values of an f32 tensor, all finite.
fn f32_values(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    if view.dtype() != Dtype::F32 {
        return Err(fail(format!(
            "tensor `{name}` has dtype {:?}, expected F32",
            view.dtype()
        )));
    }
    // Safetensors data is little-endian, as every target wgpu runs on, and
    // may sit at any byte offset: the values are copied out, not borrowed.
    let values: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(fail(format!(
            "tensor `{name}` holds a non-finite value ({}) at index {i}",
            values[i]
        )));
    }
    Ok(values)
}

/// Parses and checks the bytes of a safetensors input file. Every problem is
/// an [`Error::Input`] whose message names the tensor at fault.
pub fn parse_refine_input(bytes: &[u8]) -> Result<RefineInput> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| fail(format!("not a valid safetensors file: {e}")))?;
    let get = |name: &str| {
        st.tensor(name).map_err(|_| {
            let mut names = st.names();
            names.sort();
            fail(format!(
                "input has no tensor `{name}` (it has: {})",
                names.join(", ")
            ))
        })
    };
    let (q, k, v) = (get("q")?, get("k")?, get("v")?);
    for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
        if t.shape().len() != 4 {
            return Err(fail(format!(
                "tensor `{name}` has shape {:?}, expected rank 4 [B, H, N, D]",
                t.shape()
            )));
        }
    }
    if k.shape() != q.shape() {
        return Err(fail(format!(
            "tensor `k` has shape {:?}, `q` has {:?}; they must match",
            k.shape(),
            q.shape()
        )));
    }
    let (b, h, n) = (q.shape()[0], q.shape()[1], q.shape()[2]);
    let key_mask = match st.tensor("key_mask") {
        Err(_) => None,
        Ok(m) => {
            if m.shape() != [b, n] {
                return Err(fail(format!(
                    "tensor `key_mask` has shape {:?}, expected [B, N] = [{b}, {n}]",
                    m.shape()
                )));
            }
            let values: Vec<f32> = match m.dtype() {
                Dtype::F32 => f32_values("key_mask", &m)?,
                Dtype::U8 | Dtype::BOOL => m.data().iter().map(|&x| f32::from(x)).collect(),
                other => {
                    return Err(fail(format!(
                        "tensor `key_mask` has dtype {other:?}, expected F32, U8 or BOOL"
                    )))
                }
            };
            if let Some(x) = values.iter().find(|&&x| x != 0.0 && x != 1.0) {
                return Err(fail(format!(
                    "tensor `key_mask` must hold only 0 and 1, found {x}"
                )));
            }
            Some(values)
        }
    };
    let lambda = match st.tensor("lambda") {
        Err(_) => None,
        Ok(l) => {
            if l.shape() != [h] {
                return Err(fail(format!(
                    "tensor `lambda` has shape {:?}, expected [H] = [{h}]",
                    l.shape()
                )));
            }
            Some(f32_values("lambda", &l)?)
        }
    };
    Ok(RefineInput {
        q: f32_values("q", &q)?,
        k: f32_values("k", &k)?,
        v: f32_values("v", &v)?,
        q_shape: q.shape().to_vec(),
        v_shape: v.shape().to_vec(),
        key_mask,
        lambda,
    })
}
