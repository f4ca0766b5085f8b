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
    /// Loads `tokenizer.json` from `path`, as [`TextTokenizer::from_bytes`]
    /// does from its bytes.
    pub fn from_file(path: &Path, max_len: usize) -> Result<TextTokenizer> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::model(format!("cannot read {}: {e}", path.display())))?;
        TextTokenizer::parse(&bytes, max_len, &path.display().to_string())
    }

    /// Builds the tokenizer from the bytes of a `tokenizer.json` (as a
    /// browser fetches it), turns its padding off, and truncates at
    /// `max_len` tokens. Fails with [`Error::Model`] when the bytes are not a
    /// tokenizer or `max_len` is 0.
    pub fn from_bytes(bytes: &[u8], max_len: usize) -> Result<TextTokenizer> {
        TextTokenizer::parse(bytes, max_len, "tokenizer.json")
    }

    /// [`TextTokenizer::from_bytes`], naming the file `source` in errors.
    fn parse(bytes: &[u8], max_len: usize, source: &str) -> Result<TextTokenizer> {
        if max_len == 0 {
            return Err(Error::model(format!(
                "cannot load {source}: a tokenizer must keep at least one token (max_len is 0)"
            )));
        }
        let mut inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::model(format!("cannot load {source}: {e}")))?;
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
