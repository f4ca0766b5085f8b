//! `config.json` of a BERT-family model: the hyper-parameters the encoder needs.

use serde::de::IgnoredAny;
use serde::Deserialize;

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

/// One key of `config.json` as read: a value of the expected type, or
/// anything else (kept apart so that the error can name the key).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Entry<T> {
    Valid(T),
    Invalid(IgnoredAny),
}

/// The keys of `config.json` this crate reads; the rest are ignored. A
/// missing key or `null` is `None`.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object of model settings")]
struct RawConfig {
    hidden_size: Option<Entry<u64>>,
    num_hidden_layers: Option<Entry<u64>>,
    num_attention_heads: Option<Entry<u64>>,
    intermediate_size: Option<Entry<u64>>,
    max_position_embeddings: Option<Entry<u64>>,
    type_vocab_size: Option<Entry<u64>>,
    vocab_size: Option<Entry<u64>>,
    layer_norm_eps: Option<Entry<f64>>,
    hidden_act: Option<Entry<String>>,
    position_embedding_type: Option<Entry<String>>,
}

/// The size `key`: present, a positive integer, and bounded so that a
/// hostile config cannot drive huge allocations.
pub(super) fn size(key: &str, entry: Option<Entry<u64>>) -> Result<usize> {
    let n = match entry {
        Some(Entry::Valid(n)) => n,
        _ => {
            return Err(Error::model(format!(
                "config.json lacks the positive integer `{key}`"
            )))
        }
    };
    if n == 0 || n > 1 << 24 {
        return Err(Error::model(format!(
            "config.json `{key}` = {n} is out of range"
        )));
    }
    Ok(n as usize)
}

/// The optional string `key`, which must be a string when present.
pub(super) fn text(key: &str, entry: Option<Entry<String>>) -> Result<Option<String>> {
    match entry {
        None => Ok(None),
        Some(Entry::Valid(s)) => Ok(Some(s)),
        Some(Entry::Invalid(_)) => {
            Err(Error::model(format!("config.json `{key}` is not a string")))
        }
    }
}

impl BertConfig {
    /// Parses `config.json` text. Only BERT-style encoders with the erf GELU
    /// and absolute positions are accepted; anything else is an error naming
    /// the setting.
    pub fn from_json(json: &str) -> Result<BertConfig> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|e| {
            if e.is_data() {
                // Well-formed JSON of the wrong shape (not an object, a key twice).
                Error::model(format!("config.json: {e}"))
            } else {
                Error::model(format!("config.json is not valid JSON: {e}"))
            }
        })?;
        if let Some(act) = text("hidden_act", raw.hidden_act)? {
            if act != "gelu" {
                return Err(Error::model(format!(
                    "hidden_act `{act}` is not supported (only the erf form `gelu`)"
                )));
            }
        }
        if let Some(pos) = text("position_embedding_type", raw.position_embedding_type)? {
            if pos != "absolute" {
                return Err(Error::model(format!(
                    "position_embedding_type `{pos}` is not supported"
                )));
            }
        }
        let eps = match raw.layer_norm_eps {
            None => 1e-12,
            Some(Entry::Valid(eps)) => eps,
            Some(Entry::Invalid(_)) => {
                return Err(Error::model("config.json `layer_norm_eps` is not a number"))
            }
        };
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::model(format!(
                "layer_norm_eps = {eps} must be positive"
            )));
        }
        let cfg = BertConfig {
            hidden_size: size("hidden_size", raw.hidden_size)?,
            num_hidden_layers: size("num_hidden_layers", raw.num_hidden_layers)?,
            num_attention_heads: size("num_attention_heads", raw.num_attention_heads)?,
            intermediate_size: size("intermediate_size", raw.intermediate_size)?,
            max_position_embeddings: size("max_position_embeddings", raw.max_position_embeddings)?,
            type_vocab_size: size("type_vocab_size", raw.type_vocab_size)?,
            vocab_size: size("vocab_size", raw.vocab_size)?,
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
