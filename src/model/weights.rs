//! Reading a model's `model.safetensors` into GPU tensors, checking every
//! tensor's presence, dtype and shape against `config.json` first.

use std::borrow::Cow;

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

use super::config::BertConfig;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::io::{check_float_dtype, tensor_f32};
use crate::tensor::Tensor;

/// The weights of one encoder layer: GPU tensors, or `()` when only checked.
#[derive(Debug)]
pub(crate) struct LayerWeights<T = Tensor> {
    pub query: (T, T),
    pub key: (T, T),
    pub value: (T, T),
    pub attention_out: (T, T),
    pub attention_norm: (T, T),
    pub intermediate: (T, T),
    pub output: (T, T),
    pub output_norm: (T, T),
}

/// Embedding tables and their LayerNorm.
#[derive(Debug)]
pub(crate) struct EmbeddingWeights<T = Tensor> {
    pub word: T,
    pub position: T,
    pub token_type: T,
    pub norm: (T, T),
}

/// Loads one tensor by name and expected shape.
type Load<'f, T> = &'f mut dyn FnMut(&str, &[usize]) -> Result<T>;

/// `name.weight` (`[out, input]`, or `[out]` for a LayerNorm) and `name.bias`.
fn pair<T>(get: Load<'_, T>, name: &str, out: usize, input: Option<usize>) -> Result<(T, T)> {
    let weight = match input {
        Some(i) => get(&format!("{name}.weight"), &[out, i])?,
        None => get(&format!("{name}.weight"), &[out])?,
    };
    Ok((weight, get(&format!("{name}.bias"), &[out])?))
}

/// Every embedding tensor, with the shape `config.json` implies.
pub(crate) fn embeddings<T>(c: &BertConfig, get: Load<'_, T>) -> Result<EmbeddingWeights<T>> {
    let h = c.hidden_size;
    Ok(EmbeddingWeights {
        word: get("embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
        position: get(
            "embeddings.position_embeddings.weight",
            &[c.max_position_embeddings, h],
        )?,
        token_type: get(
            "embeddings.token_type_embeddings.weight",
            &[c.type_vocab_size, h],
        )?,
        norm: pair(get, "embeddings.LayerNorm", h, None)?,
    })
}

/// Every tensor of layer `i`, with the shape `config.json` implies.
pub(crate) fn layer<T>(c: &BertConfig, i: usize, get: Load<'_, T>) -> Result<LayerWeights<T>> {
    let (h, f) = (c.hidden_size, c.intermediate_size);
    let p = format!("encoder.layer.{i}");
    Ok(LayerWeights {
        query: pair(get, &format!("{p}.attention.self.query"), h, Some(h))?,
        key: pair(get, &format!("{p}.attention.self.key"), h, Some(h))?,
        value: pair(get, &format!("{p}.attention.self.value"), h, Some(h))?,
        attention_out: pair(get, &format!("{p}.attention.output.dense"), h, Some(h))?,
        attention_norm: pair(get, &format!("{p}.attention.output.LayerNorm"), h, None)?,
        intermediate: pair(get, &format!("{p}.intermediate.dense"), f, Some(h))?,
        output: pair(get, &format!("{p}.output.dense"), h, Some(f))?,
        output_norm: pair(get, &format!("{p}.output.LayerNorm"), h, None)?,
    })
}

/// Finds tensors by their Hugging Face names, with the prefix the file uses
/// (`bert.` when saved from a task model, none when saved as `BertModel`).
pub(crate) struct WeightFile<'a> {
    st: SafeTensors<'a>,
    prefix: &'static str,
}

impl<'a> WeightFile<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<WeightFile<'a>> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            Error::model(format!(
                "model.safetensors is not a valid safetensors file: {e}"
            ))
        })?;
        let probe = "embeddings.word_embeddings.weight";
        let prefix = ["", "bert."]
            .into_iter()
            .find(|p| st.tensor(&format!("{p}{probe}")).is_ok())
            .ok_or_else(|| Error::model(format!("model.safetensors has no tensor `{probe}`")))?;
        Ok(WeightFile { st, prefix })
    }

    /// The tensor `name`, which must be of `shape` and stored as f32, f16
    /// or bf16, as f32 host values ([`crate::io::tensor_f32`]): borrowed
    /// from the file when f32 and aligned, else converted or copied.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Cow<'a, [f32]>> {
        let (full, t) = self.tensor(name, shape)?;
        tensor_f32(&full, &t).map_err(|e| Error::model(e.to_string()))
    }

    /// The tensor `name` with its full name in the file, checked for shape.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<(String, TensorView<'a>)> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .st
            .tensor(&full)
            .map_err(|_| Error::model(format!("model.safetensors has no tensor `{full}`")))?;
        if t.shape() != shape {
            return Err(Error::model(format!(
                "tensor `{full}` has shape {:?}, config.json implies {shape:?}",
                t.shape()
            )));
        }
        Ok((full, t))
    }

    /// Checks every tensor `config` needs (presence, dtype, shape) on the
    /// host, converting nothing.
    pub fn check(&self, c: &BertConfig) -> Result<()> {
        let mut get = |name: &str, shape: &[usize]| {
            let (full, t) = self.tensor(name, shape)?;
            check_float_dtype(&full, t.dtype()).map_err(|e| Error::model(e.to_string()))
        };
        embeddings(c, &mut get)?;
        (0..c.num_hidden_layers).try_for_each(|i| layer(c, i, &mut get).map(|_| ()))
    }

    /// Uploads every tensor `config` needs.
    pub fn upload(
        &self,
        gpu: &Gpu,
        c: &BertConfig,
    ) -> Result<(EmbeddingWeights, Vec<LayerWeights>)> {
        let mut get = |name: &str, shape: &[usize]| {
            Tensor::from_slice(gpu, shape, &self.values(name, shape)?)
        };
        let e = embeddings(c, &mut get)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| layer(c, i, &mut get))
            .collect::<Result<Vec<_>>>()?;
        Ok((e, layers))
    }
}
