//! Reading attention inputs from safetensors files, as `saobp refine` does,
//! and the one conversion of stored floating-point tensors (f32, f16, bf16)
//! to f32 that every reader in the library uses ([`tensor_f32`]).
//!
//! Everything in a file is checked before anything is used: tensor presence,
//! dtype, rank, shapes against each other, finiteness and mask values. The
//! `safetensors` crate bounds the header and checks every tensor's byte range
//! against the file, so a hostile header cannot drive an allocation larger
//! than the file itself.

use std::borrow::Cow;

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

/// The dtypes [`tensor_f32`] reads, as its error message lists them.
pub const FLOAT_DTYPES: &str = "F32, F16 or BF16";

/// The values of tensor `name` (named in the error only) as f32, whether it
/// is stored as F32, F16 or BF16; any other dtype is an [`Error::Input`]
/// saying "tensor `name` has dtype …, expected F32, F16 or BF16".
///
/// F32 data is borrowed from the file when its bytes are aligned for f32
/// (safetensors places a tensor at any byte offset), else copied. F16 and
/// BF16 values are widened on the host, exactly: every f16 and bf16 number,
/// subnormals, infinities and NaN included, is also an f32, so the GPU sees
/// precisely the values the file holds, at twice the memory. Finiteness is
/// not checked here; readers that need it check the result.
///
/// ```
/// # fn main() -> saobp::Result<()> {
/// use safetensors::{tensor::TensorView, Dtype};
/// // 1.0 and -2.5 as f16, little-endian.
/// let bytes = [0x00, 0x3c, 0x00, 0xc1];
/// let view = TensorView::new(Dtype::F16, vec![2], &bytes).unwrap();
/// assert_eq!(&*saobp::io::tensor_f32("x", &view)?, &[1.0, -2.5]);
/// # Ok(()) }
/// ```
pub fn tensor_f32<'a>(name: &str, view: &TensorView<'a>) -> Result<Cow<'a, [f32]>> {
    // Safetensors data is little-endian, as every target wgpu runs on.
    let bytes: &'a [u8] = view.data();
    let halves = || {
        bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    Ok(match view.dtype() {
        Dtype::F32 => match bytemuck::try_cast_slice(bytes) {
            Ok(values) => Cow::Borrowed(values),
            Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(bytes)),
        },
        Dtype::F16 => Cow::Owned(halves().map(|h| half::f16::from_bits(h).to_f32()).collect()),
        Dtype::BF16 => Cow::Owned(
            halves()
                .map(|h| half::bf16::from_bits(h).to_f32())
                .collect(),
        ),
        other => return Err(wrong_dtype(name, other)),
    })
}

/// Checks that tensor `name` has a dtype [`tensor_f32`] reads, without
/// converting anything; the error is the one [`tensor_f32`] gives.
pub fn check_float_dtype(name: &str, dtype: Dtype) -> Result<()> {
    match dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(()),
        other => Err(wrong_dtype(name, other)),
    }
}

fn wrong_dtype(name: &str, dtype: Dtype) -> Error {
    fail(format!(
        "tensor `{name}` has dtype {dtype:?}, expected {FLOAT_DTYPES}"
    ))
}

/// The values of a floating-point tensor ([`tensor_f32`]), all finite.
fn f32_values(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let values = tensor_f32(name, view)?.into_owned();
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
                Dtype::U8 | Dtype::BOOL => m.data().iter().map(|&x| f32::from(x)).collect(),
                Dtype::F32 | Dtype::F16 | Dtype::BF16 => f32_values("key_mask", &m)?,
                other => {
                    return Err(fail(format!(
                        "tensor `key_mask` has dtype {other:?}, expected {FLOAT_DTYPES}, U8 or BOOL"
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

/// Attention maps read by [`parse_attention_maps`]: `[L, B, H, N, N]`, f32.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMaps {
    /// The maps, `[L, B, H, N, N]` row-major, widened to f32.
    pub values: Vec<f32>,
    /// `[L, B, H, N]`: layers (1 for a 4-D tensor), batch items, heads, tokens.
    pub shape: [usize; 4],
    /// The tensor's name in the file.
    pub name: String,
    /// Its stored dtype.
    pub dtype: Dtype,
    /// The tolerance the rows were checked with ([`map_tolerance`]).
    pub tolerance: f32,
}

impl AttentionMaps {
    /// The shape of one layer's maps, `[B, H, N, N]`.
    pub fn layer_shape(&self) -> [usize; 4] {
        let [_, b, h, n] = self.shape;
        [b, h, n, n]
    }

    /// Layer `l`'s maps, `[B, H, N, N]` flattened (empty past the last layer).
    pub fn layer(&self, l: usize) -> &[f32] {
        let per: usize = self.layer_shape().iter().product();
        self.values.get(l * per..(l + 1) * per).unwrap_or(&[])
    }
}

/// How far a row sum of a stored attention map may be from 1 (and, for a
/// causal map, an entry above the diagonal from 0): about twice the unit
/// roundoff of the format the map was stored in, since rounding each entry of
/// a row to it moves the row's sum by at most that roundoff. f16's is
/// 2⁻¹¹ ≈ 4.9e-4, so 1e-3 (also for f32, whose own error is far smaller);
/// bf16's is 2⁻⁸ ≈ 3.9e-3, so 8e-3.
pub fn map_tolerance(dtype: Dtype) -> f32 {
    match dtype {
        Dtype::BF16 => 8e-3,
        _ => 1e-3,
    }
}

/// Parses and checks attention maps as frameworks save them: the tensor
/// named `attentions`, or the file's only tensor; `[L, B, H, N, N]` (layers
/// of maps) or `[B, H, N, N]` (one layer); stored as f32, f16 or bf16
/// ([`tensor_f32`]). Every entry must be finite and non-negative, every row
/// must sum to 1 within [`map_tolerance`], and with `causal` every entry
/// above the diagonal must be at most that tolerance. Every problem is an
/// [`Error::Input`] naming what is wrong and where.
pub fn parse_attention_maps(bytes: &[u8], causal: bool) -> Result<AttentionMaps> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| fail(format!("not a valid safetensors file: {e}")))?;
    let mut names = st.names();
    names.sort();
    let name = match (st.tensor("attentions"), &names[..]) {
        (Ok(_), _) => "attentions".to_string(),
        (Err(_), [only]) => only.to_string(),
        (Err(_), []) => return Err(fail("input holds no tensor".into())),
        (Err(_), more) => {
            return Err(fail(format!(
                "input has {} tensors ({}) and none is named `attentions`; name the maps \
                 `attentions` or store them alone",
                more.len(),
                more.join(", ")
            )))
        }
    };
    let view = st
        .tensor(&name)
        .map_err(|e| fail(format!("cannot read tensor `{name}`: {e}")))?;
    let shape = match *view.shape() {
        [l, b, h, n, n2] if n == n2 => [l, b, h, n],
        [b, h, n, n2] if n == n2 => [1, b, h, n],
        ref other => {
            return Err(fail(format!(
                "tensor `{name}` has shape {other:?}, expected [L, B, H, N, N] or [B, H, N, N]"
            )))
        }
    };
    if shape.contains(&0) {
        return Err(fail(format!(
            "tensor `{name}` has shape {:?}; every dimension must be non-empty",
            view.shape()
        )));
    }
    let values = f32_values(&name, &view)?;
    let tolerance = map_tolerance(view.dtype());
    let [_, b, h, n] = shape;
    let at = |row: usize| {
        let (map, i) = (row / n, row % n);
        let (l, item, head) = (map / (b * h), map / h % b, map % h);
        format!("layer {l}, batch item {item}, head {head}, row {i}")
    };
    for (row, p) in values.chunks_exact(n).enumerate() {
        if let Some(j) = p.iter().position(|&x| x < 0.0) {
            return Err(fail(format!(
                "tensor `{name}` is not an attention map: {} has the negative entry {} at key {j}",
                at(row),
                p[j]
            )));
        }
        let sum: f64 = p.iter().map(|&x| f64::from(x)).sum();
        if (sum - 1.0).abs() > f64::from(tolerance) {
            return Err(fail(format!(
                "tensor `{name}` is not row-stochastic: {} sums to {sum:.6} (tolerance {tolerance:e} \
                 for {:?})",
                at(row),
                view.dtype()
            )));
        }
        let i = row % n;
        if causal {
            if let Some(j) = (i + 1..n).find(|&j| p[j] > tolerance) {
                return Err(fail(format!(
                    "tensor `{name}` is not causal: {} has {} at key {j} > {i} (tolerance {tolerance:e})",
                    at(row),
                    p[j]
                )));
            }
        }
    }
    Ok(AttentionMaps {
        values,
        shape,
        name,
        dtype: view.dtype(),
        tolerance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view_of(dtype: Dtype, bits: &[u16]) -> Vec<f32> {
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let view = TensorView::new(dtype, vec![bits.len()], &bytes).unwrap();
        tensor_f32("x", &view).unwrap().into_owned()
    }

    #[test]
    fn f16_and_bf16_widen_exactly() {
        // f16: 1.0, -2.5, the smallest and largest subnormals (2⁻²⁴ and
        // 1023·2⁻²⁴), the largest finite value, -0 and +inf.
        let got = view_of(
            Dtype::F16,
            &[0x3c00, 0xc100, 0x0001, 0x03ff, 0x7bff, 0x8000, 0x7c00],
        );
        let want = [
            1.0,
            -2.5,
            2f32.powi(-24),
            1023.0 * 2f32.powi(-24),
            65504.0,
            -0.0,
            f32::INFINITY,
        ];
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.to_bits(), w.to_bits(), "{g} vs {w}");
        }
        // bf16: π rounds to 0x4049 = 3.140625; 1.0; -2.5; the smallest
        // subnormal, 2⁻¹³³, is an f32 subnormal too.
        let got = view_of(Dtype::BF16, &[0x4049, 0x3f80, 0xc020, 0x0001]);
        assert_eq!(got[..3], [3.140625, 1.0, -2.5]);
        assert_eq!(got[3], f32::from_bits(0x0001_0000));
        assert_eq!(f64::from(got[3]), 2f64.powi(-133));
        assert_eq!(half::bf16::from_f32(std::f32::consts::PI).to_bits(), 0x4049);
    }

    #[test]
    fn f32_is_borrowed_and_other_dtypes_are_refused() {
        let values = [1.5f32, -0.25];
        let bytes: &[u8] = bytemuck::cast_slice(&values);
        let view = TensorView::new(Dtype::F32, vec![2], bytes).unwrap();
        let got = tensor_f32("x", &view).unwrap();
        assert!(matches!(got, Cow::Borrowed(_)));
        assert_eq!(&*got, &values);
        let f64s = TensorView::new(Dtype::F64, vec![1], &[0u8; 8]).unwrap();
        let e = tensor_f32("w", &f64s).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor `w` has dtype F64, expected F32, F16 or BF16"
        );
    }

    fn maps_file(name: &str, shape: &[usize], values: &[f32]) -> Vec<u8> {
        let view =
            TensorView::new(Dtype::F32, shape.to_vec(), bytemuck::cast_slice(values)).unwrap();
        safetensors::serialize([(name, view)], None).unwrap()
    }

    #[test]
    fn maps_are_checked_row_by_row() {
        // One layer, one head, N = 2: a causal map.
        let causal = [1.0, 0.0, 0.25, 0.75];
        let m = parse_attention_maps(&maps_file("maps", &[1, 1, 2, 2], &causal), true).unwrap();
        assert_eq!((m.shape, m.name.as_str()), ([1, 1, 1, 2], "maps"));
        assert_eq!(m.layer(0), causal);
        let e = |values: &[f32], causal: bool| {
            parse_attention_maps(&maps_file("attentions", &[2, 1, 1, 2, 2], values), causal)
                .unwrap_err()
                .to_string()
        };
        let off = [1.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.3, 0.6];
        assert!(
            e(&off, false).contains("layer 1, batch item 0, head 0, row 1 sums to 0.900000"),
            "{}",
            e(&off, false)
        );
        let leaks = [1.0, 0.0, 0.5, 0.5, 0.9, 0.1, 0.5, 0.5];
        assert!(e(&leaks, true).contains("layer 1, batch item 0, head 0, row 0 has 0.1 at key 1"));
        let negative = [1.0, 0.0, 1.5, -0.5, 1.0, 0.0, 0.5, 0.5];
        assert!(e(&negative, false).contains("negative entry -0.5 at key 1"));
    }
}
