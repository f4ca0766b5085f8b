//! Reading a model's `model.safetensors` into GPU tensors, checking every
//! tensor's presence, dtype and shape against `config.json` first.

use safetensors::{Dtype, SafeTensors};

use super::config::BertConfig;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tensor::Tensor;

/// The weights of one encoder layer.
#[derive(Debug)]
pub(crate) struct LayerWeights {
    pub query: (Tensor, Tensor),
    pub key: (Tensor, Tensor),
    pub value: (Tensor, Tensor),
    pub attention_out: (Tensor, Tensor),
    pub attention_norm: (Tensor, Tensor),
    pub intermediate: (Tensor, Tensor),
    pub output: (Tensor, Tensor),
    pub output_norm: (Tensor, Tensor),
}

/// Embedding tables and their LayerNorm.
#[derive(Debug)]
pub(crate) struct EmbeddingWeights {
    pub word: Tensor,
    pub position: Tensor,
    pub token_type: Tensor,
    pub norm: (Tensor, Tensor),
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

    /// The tensor `name`, which must be f32 of `shape`, as host values.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .st
            .tensor(&full)
            .map_err(|_| Error::model(format!("model.safetensors has no tensor `{full}`")))?;
        if t.dtype() != Dtype::F32 {
            return Err(Error::model(format!(
                "tensor `{full}` has dtype {:?}, expected F32",
                t.dtype()
            )));
        }
        if t.shape() != shape {
            return Err(Error::model(format!(
                "tensor `{full}` has shape {:?}, config.json implies {shape:?}",
                t.shape()
            )));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn upload(&self, gpu: &Gpu, name: &str, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_slice(gpu, shape, &self.values(name, shape)?)
    }

    fn pair(
        &self,
        gpu: &Gpu,
        name: &str,
        out: usize,
        input: Option<usize>,
    ) -> Result<(Tensor, Tensor)> {
        let weight = match input {
            Some(i) => self.upload(gpu, &format!("{name}.weight"), &[out, i])?,
            None => self.upload(gpu, &format!("{name}.weight"), &[out])?,
        };
        Ok((weight, self.upload(gpu, &format!("{name}.bias"), &[out])?))
    }

    pub fn embeddings(&self, gpu: &Gpu, c: &BertConfig) -> Result<EmbeddingWeights> {
        let h = c.hidden_size;
        Ok(EmbeddingWeights {
            word: self.upload(gpu, "embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
            position: self.upload(
                gpu,
                "embeddings.position_embeddings.weight",
                &[c.max_position_embeddings, h],
            )?,
            token_type: self.upload(
                gpu,
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, h],
            )?,
            norm: self.pair(gpu, "embeddings.LayerNorm", h, None)?,
        })
    }

    pub fn layer(&self, gpu: &Gpu, c: &BertConfig, i: usize) -> Result<LayerWeights> {
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let p = format!("encoder.layer.{i}");
        Ok(LayerWeights {
            query: self.pair(gpu, &format!("{p}.attention.self.query"), h, Some(h))?,
            key: self.pair(gpu, &format!("{p}.attention.self.key"), h, Some(h))?,
            value: self.pair(gpu, &format!("{p}.attention.self.value"), h, Some(h))?,
            attention_out: self.pair(gpu, &format!("{p}.attention.output.dense"), h, Some(h))?,
            attention_norm: self.pair(gpu, &format!("{p}.attention.output.LayerNorm"), h, None)?,
            intermediate: self.pair(gpu, &format!("{p}.intermediate.dense"), f, Some(h))?,
            output: self.pair(gpu, &format!("{p}.output.dense"), h, Some(f))?,
            output_norm: self.pair(gpu, &format!("{p}.output.LayerNorm"), h, None)?,
        })
    }
}
