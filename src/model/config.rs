//! `config.json` of a BERT-family model: the hyper-parameters the encoder needs.

use serde_json::Value;

use crate::error::{Error, Result};

/// Hyper-parameters read from a Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Rows of the position embedding table.
    pub max_position_embeddings: usize,
    /// Rows of the token-type embedding table.
    pub type_vocab_size: usize,
    /// Rows of the word embedding table.
    pub vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
}

impl BertConfig {
    /// Parses `config.json` text. Only BERT-style encoders with the erf GELU
    /// and absolute positions are accepted; anything else is an error naming
    /// the setting.
    pub fn from_json(text: &str) -> Result<BertConfig> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::model(format!("config.json is not valid JSON: {e}")))?;
        let size = |key: &str| -> Result<usize> {
            let n = v.get(key).and_then(Value::as_u64).ok_or_else(|| {
                Error::model(format!("config.json lacks the positive integer `{key}`"))
            })?;
            // Bounds keep a hostile config from driving huge allocations.
            if n == 0 || n > 1 << 24 {
                return Err(Error::model(format!(
                    "config.json `{key}` = {n} is out of range"
                )));
            }
            Ok(n as usize)
        };
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
            if act != "gelu" {
                return Err(Error::model(format!(
                    "hidden_act `{act}` is not supported (only the erf form `gelu`)"
                )));
            }
        }
        if let Some(pos) = v.get("position_embedding_type").and_then(Value::as_str) {
            if pos != "absolute" {
                return Err(Error::model(format!(
                    "position_embedding_type `{pos}` is not supported"
                )));
            }
        }
        let eps = v
            .get("layer_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(1e-12);
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::model(format!(
                "layer_norm_eps = {eps} must be positive"
            )));
        }
        let cfg = BertConfig {
            hidden_size: size("hidden_size")?,
            num_hidden_layers: size("num_hidden_layers")?,
            num_attention_heads: size("num_attention_heads")?,
            intermediate_size: size("intermediate_size")?,
            max_position_embeddings: size("max_position_embeddings")?,
            type_vocab_size: size("type_vocab_size")?,
            vocab_size: size("vocab_size")?,
            layer_norm_eps: eps as f32,
        };
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(Error::model(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        Ok(cfg)
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
