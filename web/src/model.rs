//! The page's model view: a real BERT-family encoder (all-MiniLM-L6-v2)
//! loaded from the bytes the page fetched, on typed text.
//!
//! One text's work comes in two parts, so that moving the λ slider reruns
//! only the second:
//!
//! 1. [`plain`]: the tokens, then the plain model's forward pass (λ = 0)
//!    keeping every layer's attention map `A` on the GPU with its per-head
//!    summaries (GTD at λ = 1, as the spec reports a plain map) and the
//!    sentence embedding (mean pooling, then L2 norm);
//! 2. [`refine`]: SAOBP on those kept maps, layer by layer
//!    (`R = refine_map(A, λ)`), with the metrics of `R` as the spec defines
//!    them (its own entropy, sparsity, peak and distance; `A`'s multi-hop
//!    mass `m` and the GTD at λ: the library's `refined_metrics`), as
//!    `saobp maps` measures maps.
//!
//! [`saobp_embedding`] runs the model again with SAOBP inside every layer, for
//! the sentence embedding with SAOBP. The self-test ([`crate::selftest`]) and
//! `tests/web_parity.rs` in the library run the same steps.

use saobp::model::{sentence_embedding, BertModel, Encoded, ForwardOptions, TextTokenizer};
use saobp::{refine_map, refined_metrics, Gpu, HeadSummary, Lambda, MetricsOptions, Tensor};
use serde_json::{json, Value};

/// Largest λ the page accepts: far past where `R` stops changing visibly.
pub const MAX_LAMBDA: f32 = 100.0;

/// The model and its tokenizer, loaded once.
pub struct Loaded {
    /// The encoder, its weights on the GPU.
    pub model: BertModel,
    /// Its `tokenizer.json`.
    pub tokenizer: TextTokenizer,
}

impl Loaded {
    /// Builds the model from the text of `config.json`, the bytes of
    /// `model.safetensors` and of `tokenizer.json`, and the text of
    /// `sentence_bert_config.json` when the model has one (it sets the
    /// longest input), through the library's byte loaders.
    pub fn from_bytes(
        gpu: &Gpu,
        config_json: &str,
        weights: &[u8],
        tokenizer_json: &[u8],
        sentence_config: Option<&str>,
    ) -> Result<Loaded, String> {
        let model = BertModel::from_bytes(gpu, config_json, weights).map_err(|e| e.to_string())?;
        let tokenizer = model
            .tokenizer_from_bytes(tokenizer_json, sentence_config)
            .map_err(|e| e.to_string())?;
        Ok(Loaded { model, tokenizer })
    }

    /// The model's shape as the page shows it.
    pub fn describe(&self) -> Value {
        let c = &self.model.config;
        json!({
            "layers": c.num_hidden_layers,
            "heads": c.num_attention_heads,
            "hidden": c.hidden_size,
            "vocabulary": c.vocab_size,
        })
    }

    /// Tokenizes one text; an empty or blank text is an error.
    pub fn encode(&self, text: &str) -> Result<Encoded, String> {
        if text.trim().is_empty() {
            return Err("the text is empty: type a sentence".to_string());
        }
        self.tokenizer.encode(text).map_err(|e| e.to_string())
    }
}

/// The plain model's pass over one text: what [`refine`] starts from.
pub struct PlainRun {
    /// The text's tokens.
    pub encoded: Encoded,
    /// `A` of every layer, `[1, H, N, N]`, on the GPU.
    pub attention: Vec<Tensor>,
    /// Per layer, per head: the summaries of `A` (GTD at λ = 1).
    pub summaries: Vec<Vec<HeadSummary>>,
    /// The sentence embedding of the plain model.
    pub embedding: Vec<f32>,
}

/// SAOBP on the kept maps of one text.
pub struct Refinement {
    /// `R` of every layer, `[1, H, N, N]`, on the GPU.
    pub refined: Vec<Tensor>,
    /// Per layer, per head: the summaries of `R` (GTD at λ).
    pub summaries: Vec<Vec<HeadSummary>>,
}

fn err(e: saobp::Error) -> String {
    e.to_string()
}

/// The plain forward pass of `encoded`: every layer's `A` kept, with its
/// summaries, and the sentence embedding.
pub async fn plain(gpu: &Gpu, model: &BertModel, encoded: Encoded) -> Result<PlainRun, String> {
    let opts = ForwardOptions {
        metrics: true,
        keep_maps: true,
        ..Default::default()
    };
    let out = model
        .forward(gpu, std::slice::from_ref(&encoded), &opts)
        .await
        .map_err(err)?;
    let mut attention = Vec::with_capacity(out.layers.len());
    let mut summaries = Vec::with_capacity(out.layers.len());
    for (l, layer) in out.layers.into_iter().enumerate() {
        let (Some(a), Some(m)) = (layer.attention, layer.metrics) else {
            return Err(format!("layer {l} returned no attention map or metrics"));
        };
        attention.push(a);
        summaries.push(m.attention.heads);
    }
    let hidden = out.hidden.to_vec(gpu).await.map_err(err)?;
    let embedding = sentence_embedding(&hidden, model.config.hidden_size, encoded.ids.len());
    Ok(PlainRun {
        encoded,
        attention,
        summaries,
        embedding,
    })
}

/// SAOBP with strength `lambda` on every kept `A` of `run`: `R` and its
/// summaries, layer by layer.
pub async fn refine(gpu: &Gpu, run: &PlainRun, lambda: f32) -> Result<Refinement, String> {
    check_lambda(lambda)?;
    let lambda = Lambda::Scalar(lambda);
    let at_lambda = MetricsOptions {
        lambda: Some(&lambda),
        ..Default::default()
    };
    let mut refined = Vec::with_capacity(run.attention.len());
    let mut summaries = Vec::with_capacity(run.attention.len());
    for a in &run.attention {
        let r = refine_map(gpu, a, &lambda).await.map_err(err)?;
        let of_r = refined_metrics(gpu, a, &r.refined, &at_lambda)
            .await
            .map_err(err)?;
        summaries.push(of_r.heads);
        refined.push(r.refined);
    }
    Ok(Refinement { refined, summaries })
}

/// The sentence embedding of `encoded` with SAOBP of strength `lambda`
/// inside every layer of the model (fused mode, no maps, no metrics).
pub async fn saobp_embedding(
    gpu: &Gpu,
    model: &BertModel,
    encoded: &Encoded,
    lambda: f32,
) -> Result<Vec<f32>, String> {
    check_lambda(lambda)?;
    let opts = ForwardOptions {
        lambda: vec![Lambda::Scalar(lambda); model.config.num_hidden_layers],
        ..Default::default()
    };
    let out = model
        .forward(gpu, std::slice::from_ref(encoded), &opts)
        .await
        .map_err(err)?;
    let hidden = out.hidden.to_vec(gpu).await.map_err(err)?;
    Ok(sentence_embedding(
        &hidden,
        model.config.hidden_size,
        encoded.ids.len(),
    ))
}

/// λ must be finite, at least 0 and at most [`MAX_LAMBDA`].
pub fn check_lambda(lambda: f32) -> Result<(), String> {
    if (0.0..=MAX_LAMBDA).contains(&lambda) {
        Ok(())
    } else {
        Err(format!("λ must be in 0..={MAX_LAMBDA}, got {lambda}"))
    }
}

/// The cosine of two embeddings (both L2-normalized already: their dot
/// product, computed in f64).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// Per layer: the mean over heads of `A`'s and `R`'s summaries, as
/// `HeadSummary` serializes (the layer curves of `saobp analyze`), and,
/// when `heads` is set, every head's.
pub fn layers_json(plain: &[Vec<HeadSummary>], refined: &[Vec<HeadSummary>], heads: bool) -> Value {
    let layers: Vec<Value> = plain
        .iter()
        .zip(refined)
        .enumerate()
        .map(|(l, (a, r))| {
            let mut layer = json!({
                "layer": l,
                "attention": HeadSummary::mean(a),
                "refined": HeadSummary::mean(r),
            });
            if heads {
                layer["heads"] = a
                    .iter()
                    .zip(r)
                    .map(|(a, r)| json!({ "attention": a, "refined": r }))
                    .collect();
            }
            layer
        })
        .collect();
    Value::Array(layers)
}

/// Every layer's map of `maps` read back, concatenated: `[L, H, N, N]`.
pub async fn read_all(gpu: &Gpu, maps: &[Tensor]) -> Result<Vec<f32>, String> {
    let mut all = Vec::with_capacity(maps.iter().map(Tensor::len).sum());
    for m in maps {
        all.extend(m.to_vec(gpu).await.map_err(err)?);
    }
    Ok(all)
}
