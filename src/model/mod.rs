//! BERT-family encoders loaded from a Hugging Face model folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`), run on the
//! library's kernels, with SAOBP optionally inside every attention layer.
//!
//! ```no_run
//! # fn main() -> saobp::Result<()> {
//! use saobp::model::{sentence_embedding, BertModel, ForwardOptions};
//! use saobp::{Gpu, Lambda};
//! let gpu = Gpu::from_env_blocking()?;
//! let dir = std::path::Path::new("models/all-MiniLM-L6-v2");
//! let model = BertModel::load(&gpu, dir)?;
//! let text = model.tokenizer(dir)?.encode("A man is eating food.")?;
//! let opts = ForwardOptions { lambda: vec![Lambda::Scalar(0.5); 6], metrics: true, ..Default::default() };
//! let out = pollster::block_on(model.forward(&gpu, &[text], &opts))?;
//! let hidden = out.hidden.to_vec_blocking(&gpu)?;
//! let embedding = sentence_embedding(&hidden, model.config.hidden_size, out.lengths[0]);
//! # Ok(()) }
//! ```

mod config;
mod encoder;
mod gpt;
mod gpt_config;
mod tokenizer;
mod train;
mod weights;

pub use config::BertConfig;
pub use encoder::{
    check_weights, sentence_embedding, BertModel, ForwardOptions, ForwardOutput, LayerOutput,
};
pub use gpt::{init_values, Gpt, GptWorkspace};
pub use gpt_config::{GptConfig, ParamSpec};
pub use tokenizer::{Encoded, TextTokenizer};
pub use train::{
    evaluate, generate, layer_stats, sample, Evaluation, LayerStats, Sampling, StepReport,
    TrainOptions, Trainer,
};
