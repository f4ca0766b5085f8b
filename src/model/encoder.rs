//! The BERT encoder's forward pass on the library's kernels, with SAOBP
//! optionally applied inside every attention layer.

use std::path::Path;

use super::config::BertConfig;
use super::tokenizer::{Encoded, TextTokenizer};
use super::weights::{EmbeddingWeights, LayerWeights, WeightFile};
use crate::attention::{attention, AttentionOptions, Metrics, Mode, RefinedMetrics};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Step};
use crate::kernels::bert::{self, Dims};
use crate::kernels::matmul::{self, MatmulOptions};
use crate::kernels::saobp::Lambda;
use crate::tensor::Tensor;

/// A BERT-family encoder on the GPU.
#[derive(Debug)]
pub struct BertModel {
    /// Hyper-parameters from `config.json`.
    pub config: BertConfig,
    embeddings: EmbeddingWeights,
    layers: Vec<LayerWeights>,
}

/// Options of [`BertModel::forward`].
#[derive(Debug, Clone)]
pub struct ForwardOptions {
    /// λ of each layer (a scalar or one per head). Missing layers get λ = 0;
    /// a layer whose λ is all zeros runs plain attention.
    pub lambda: Vec<Lambda>,
    /// How refined layers compute their output (fused by default).
    pub mode: Mode,
    /// Row metrics and per-head summaries of every layer's `A` (and `R`).
    pub metrics: bool,
    /// Keep every layer's attention map `A` (and `R` where refined).
    pub keep_maps: bool,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions {
            lambda: Vec::new(),
            mode: Mode::Fused,
            metrics: false,
            keep_maps: false,
        }
    }
}

/// What one layer's attention produced.
#[derive(Debug, Clone)]
pub struct LayerOutput {
    /// Metrics of `A` and, when refined, of `R`.
    pub metrics: Option<Metrics>,
    /// `A` `[B, H, N, N]` when kept.
    pub attention: Option<Tensor>,
    /// `R` `[B, H, N, N]` when kept and refined.
    pub refined: Option<Tensor>,
}

/// The result of [`BertModel::forward`].
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// Last hidden states `[B, N, hidden]` (`N` = longest text; shorter ones padded).
    pub hidden: Tensor,
    /// One entry per layer.
    pub layers: Vec<LayerOutput>,
    /// Tokens per text before padding.
    pub lengths: Vec<usize>,
}

impl BertModel {
    /// Loads `config.json` and `model.safetensors` from a Hugging Face model
    /// folder, as [`BertModel::from_bytes`] does from their contents.
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<BertModel> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| Error::model(format!("cannot read {}: {e}", dir.join(name).display())))
        };
        let config = String::from_utf8(read("config.json")?)
            .map_err(|_| Error::model("config.json is not UTF-8"))?;
        BertModel::from_bytes(gpu, &config, &read("model.safetensors")?)
    }

    /// Builds the model from the text of `config.json` and the bytes of
    /// `model.safetensors` (as a browser fetches them). Fails with
    /// [`Error::Model`] when the config is unsupported or the weights do not
    /// fit it; nothing is uploaded then.
    pub fn from_bytes(gpu: &Gpu, config_json: &str, weights: &[u8]) -> Result<BertModel> {
        BertModel::from_safetensors(gpu, BertConfig::from_json(config_json)?, weights)
    }

    /// Builds the model from `config` and the bytes of a safetensors file.
    pub fn from_safetensors(gpu: &Gpu, config: BertConfig, bytes: &[u8]) -> Result<BertModel> {
        let file = WeightFile::parse(bytes)?;
        // Every tensor is checked before the first upload: a bad file costs no GPU work.
        file.check(&config)?;
        let (embeddings, layers) = file.upload(gpu, &config)?;
        Ok(BertModel {
            config,
            embeddings,
            layers,
        })
    }

    /// Loads the folder's `tokenizer.json`, truncating at the model's longest
    /// input (`max_seq_length` of `sentence_bert_config.json` when present,
    /// else `max_position_embeddings`), as
    /// [`BertModel::tokenizer_from_bytes`] does from their contents.
    pub fn tokenizer(&self, dir: &Path) -> Result<TextTokenizer> {
        let sentence_config = std::fs::read_to_string(dir.join("sentence_bert_config.json")).ok();
        TextTokenizer::from_file(
            &dir.join("tokenizer.json"),
            self.max_tokens(sentence_config.as_deref()),
        )
    }

    /// The tokenizer from the bytes of `tokenizer.json`, truncating at the
    /// model's longest input: `max_seq_length` of `sentence_config` (the text
    /// of `sentence_bert_config.json`, when the model has one and it names
    /// that key) capped at `max_position_embeddings`.
    pub fn tokenizer_from_bytes(
        &self,
        tokenizer_json: &[u8],
        sentence_config: Option<&str>,
    ) -> Result<TextTokenizer> {
        TextTokenizer::from_bytes(tokenizer_json, self.max_tokens(sentence_config))
    }

    /// The longest input: `max_seq_length` of `sentence_bert_config.json`'s
    /// text when given, capped at `max_position_embeddings`.
    fn max_tokens(&self, sentence_config: Option<&str>) -> usize {
        let st_max = sentence_config
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|v| v.get("max_seq_length").and_then(serde_json::Value::as_u64));
        st_max.map_or(self.config.max_position_embeddings, |m| {
            usize::try_from(m).map_or(self.config.max_position_embeddings, |m| {
                m.min(self.config.max_position_embeddings)
            })
        })
    }

    /// Runs the encoder over `texts` (padded to the longest, with a key mask).
    pub async fn forward(
        &self,
        gpu: &Gpu,
        texts: &[Encoded],
        opts: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        let c = &self.config;
        let batch = texts.len();
        let n = texts.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        if batch == 0 || n == 0 {
            return Err(Error::invalid("forward needs at least one non-empty text"));
        }
        if n > c.max_position_embeddings {
            return Err(Error::invalid(format!(
                "a text has {n} tokens, the model takes at most {}",
                c.max_position_embeddings
            )));
        }
        let mut ids = vec![0.0f32; batch * n];
        let mut types = vec![0.0f32; batch * n];
        let mut mask = vec![0.0f32; batch * n];
        for (b, t) in texts.iter().enumerate() {
            if t.type_ids.len() != t.ids.len() {
                return Err(Error::shape("token ids and type ids differ in length"));
            }
            for (i, (&id, &ty)) in t.ids.iter().zip(&t.type_ids).enumerate() {
                if id as usize >= c.vocab_size || ty as usize >= c.type_vocab_size {
                    return Err(Error::invalid(format!(
                        "token {id} (type {ty}) is outside the vocabulary of {} ({} types)",
                        c.vocab_size, c.type_vocab_size
                    )));
                }
                ids[b * n + i] = id as f32;
                types[b * n + i] = ty as f32;
                mask[b * n + i] = 1.0;
            }
        }
        let lambdas: Vec<Vec<f32>> = (0..c.num_hidden_layers)
            .map(|l| {
                opts.lambda
                    .get(l)
                    .cloned()
                    .unwrap_or_default()
                    .per_head(c.num_attention_heads)
            })
            .collect::<Result<_>>()?;
        let padded = texts.iter().any(|t| t.ids.len() != n);
        let d = Dims {
            batch,
            n,
            width: c.hidden_size,
            heads: c.num_attention_heads,
        };
        let rows = batch * n;
        let e = &self.embeddings;
        let ids = Tensor::from_slice(gpu, &[rows], &ids)?;
        let types = Tensor::from_slice(gpu, &[rows], &types)?;
        let key_mask = padded
            .then(|| Tensor::from_slice(gpu, &[batch, n], &mask))
            .transpose()?;
        let summed = Tensor::scratch(gpu, &[rows, c.hidden_size])?;
        let mut x = Tensor::scratch(gpu, &[rows, c.hidden_size])?;
        gpu.run(&[
            bert::embed(
                &d,
                &ids,
                &types,
                &e.word,
                &e.position,
                &e.token_type,
                &summed,
            )?,
            bert::layer_norm(
                gpu,
                &d,
                c.layer_norm_eps,
                &summed,
                None,
                &e.norm.0,
                &e.norm.1,
                &x,
            )?,
        ])
        .await?;

        let mut layers = Vec::with_capacity(self.layers.len());
        for (w, lambda) in self.layers.iter().zip(lambdas) {
            let refined = lambda.iter().any(|&l| l > 0.0);
            let opts = AttentionOptions {
                causal: false,
                key_mask: key_mask.as_ref(),
                scale: None,
                lambda: Lambda::PerHead(lambda),
                mode: if refined { opts.mode } else { Mode::Plain },
                return_attention: opts.keep_maps,
                return_refined: opts.keep_maps && refined,
                metrics: opts.metrics,
                // Layer reports summarize R itself.
                refined_metrics: RefinedMetrics::Full,
            };
            let (next, out) = self.layer(gpu, &d, w, &x, &opts).await?;
            x = next;
            layers.push(out);
        }
        Ok(ForwardOutput {
            hidden: x.reshape(&[batch, n, c.hidden_size])?,
            layers,
            lengths: texts.iter().map(|t| t.ids.len()).collect(),
        })
    }

    /// One encoder layer: attention (with SAOBP per `opts`), then the feed-forward block.
    async fn layer(
        &self,
        gpu: &Gpu,
        d: &Dims,
        w: &LayerWeights,
        x: &Tensor,
        opts: &AttentionOptions<'_>,
    ) -> Result<(Tensor, LayerOutput)> {
        let c = &self.config;
        let rows = d.batch * d.n;
        let heads_shape = [d.batch, c.num_attention_heads, d.n, c.head_dim()];
        let flat = |width: usize| Tensor::scratch(gpu, &[rows, width]);
        let (q, k, v) = (
            flat(c.hidden_size)?,
            flat(c.hidden_size)?,
            flat(c.hidden_size)?,
        );
        let (qh, kh, vh) = (
            Tensor::scratch(gpu, &heads_shape)?,
            Tensor::scratch(gpu, &heads_shape)?,
            Tensor::scratch(gpu, &heads_shape)?,
        );
        let mut steps = Vec::new();
        for ((weight, bias), out, split) in
            [(&w.query, &q, &qh), (&w.key, &k, &kh), (&w.value, &v, &vh)]
        {
            steps.extend(dense(gpu, d, x, weight, bias, out, false)?);
            steps.push(bert::split_heads(d, out, split)?);
        }
        gpu.run(&steps).await?;
        drop(steps);

        let att = attention(gpu, &qh, &kh, &vh, opts).await?;
        let merged = flat(c.hidden_size)?;
        let projected = flat(c.hidden_size)?;
        let x1 = flat(c.hidden_size)?;
        let inner = flat(c.intermediate_size)?;
        let ffn = flat(c.hidden_size)?;
        let x2 = flat(c.hidden_size)?;
        let eps = c.layer_norm_eps;
        let mut steps = vec![bert::merge_heads(d, &att.output, &merged)?];
        steps.extend(dense(
            gpu,
            d,
            &merged,
            &w.attention_out.0,
            &w.attention_out.1,
            &projected,
            false,
        )?);
        steps.push(bert::layer_norm(
            gpu,
            d,
            eps,
            &projected,
            Some(x),
            &w.attention_norm.0,
            &w.attention_norm.1,
            &x1,
        )?);
        steps.extend(dense(
            gpu,
            d,
            &x1,
            &w.intermediate.0,
            &w.intermediate.1,
            &inner,
            true,
        )?);
        steps.extend(dense(
            gpu,
            d,
            &inner,
            &w.output.0,
            &w.output.1,
            &ffn,
            false,
        )?);
        steps.push(bert::layer_norm(
            gpu,
            d,
            eps,
            &ffn,
            Some(&x1),
            &w.output_norm.0,
            &w.output_norm.1,
            &x2,
        )?);
        gpu.run(&steps).await?;
        drop(steps);
        Ok((
            x2,
            LayerOutput {
                metrics: att.metrics,
                attention: att.attention,
                refined: att.refined,
            },
        ))
    }
}

/// Checks that `bytes` (a safetensors file) holds every tensor `config`
/// needs, as f32, f16 or bf16 of the right shape, without touching a GPU.
pub fn check_weights(config: &BertConfig, bytes: &[u8]) -> Result<()> {
    WeightFile::parse(bytes)?.check(config)
}

/// `out = x · Wᵀ + b` (then GELU if `gelu`), with `W` stored `[out, in]`.
fn dense<'a>(
    gpu: &Gpu,
    d: &Dims,
    x: &'a Tensor,
    w: &'a Tensor,
    b: &'a Tensor,
    out: &'a Tensor,
    gelu: bool,
) -> Result<Vec<Step<'a>>> {
    let plan = matmul::plan(
        x.shape(),
        w.shape(),
        &MatmulOptions {
            trans_b: true,
            ..Default::default()
        },
    )?;
    let width = w.shape()[0];
    let mut steps = matmul::steps(gpu, &plan, x, w, out)?;
    steps.push(bert::bias_act(d, width, gelu, out, b)?);
    Ok(steps)
}

/// Mean of the first `len` token vectors of `hidden` (`[n, width]` row-major),
/// then L2-normalized, as sentence-transformers pools this family of models.
pub fn sentence_embedding(hidden: &[f32], width: usize, len: usize) -> Vec<f32> {
    if width == 0 {
        return Vec::new();
    }
    let mut mean = vec![0.0f64; width];
    for row in hidden.chunks(width).take(len) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += f64::from(x);
        }
    }
    let count = len.min(hidden.len() / width.max(1)).max(1) as f64;
    mean.iter_mut().for_each(|m| *m /= count);
    let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt();
    // sentence-transformers clamps the norm at 1e-12 to avoid dividing by zero.
    mean.iter().map(|x| (x / norm.max(1e-12)) as f32).collect()
}
