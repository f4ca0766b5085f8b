//! The model's `tokenizer.json`, through the `tokenizers` crate, set up so
//! that one text is never padded.

use std::path::Path;

use crate::error::{Error, Result};

/// One tokenized text.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Token ids, `[CLS]` and `[SEP]` included.
    pub ids: Vec<u32>,
    /// Token type ids.
    pub type_ids: Vec<u32>,
    /// The wordpiece strings.
    pub tokens: Vec<String>,
}

/// A tokenizer loaded from a model folder.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, turns its padding off, and truncates at
    /// `max_len` tokens.
    pub fn from_file(path: &Path, max_len: usize) -> Result<TextTokenizer> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::model(format!("cannot load {}: {e}", path.display())))?;
        // The file pads to a fixed length for batching; an analysis of one text must not pad.
        inner.with_padding(None);
        let truncation = tokenizers::TruncationParams {
            max_length: max_len,
            ..Default::default()
        };
        inner
            .with_truncation(Some(truncation))
            .map_err(|e| Error::model(format!("cannot set truncation: {e}")))?;
        Ok(TextTokenizer { inner })
    }

    /// Tokenizes one text with the model's special tokens.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::invalid(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            tokens: enc.get_tokens().to_vec(),
        })
    }
}
