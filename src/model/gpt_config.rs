//! `config.json` of a GPT-2-layout model (the spec's "Training a small GPT
//! with SAOBP"), and the model's parameter tensors by name, shape and
//! optimizer group.

use serde::Deserialize;

use super::config::{size, text, Entry};
use crate::error::{Error, Result};
use crate::kernels::optim::ParamGroup;

/// Hyper-parameters of a GPT-2-layout model, under GPT-2's `config.json` keys.
#[derive(Debug, Clone, PartialEq)]
pub struct GptConfig {
    /// Rows of `wte`: the vocabulary `V`.
    pub vocab_size: usize,
    /// Rows of `wpe`: the longest context `T`.
    pub n_positions: usize,
    /// Width `C`.
    pub n_embd: usize,
    /// Layers `L`.
    pub n_layer: usize,
    /// Heads per layer `H`; divides `C`.
    pub n_head: usize,
    /// LayerNorm ε (GPT-2's 1e-5 when absent).
    pub layer_norm_epsilon: f32,
}

/// One parameter tensor of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Its Hugging Face name, e.g. `transformer.h.0.attn.c_attn.weight`.
    pub name: String,
    /// Its shape (`Conv1D` weights are `[in, out]`).
    pub shape: Vec<usize>,
    /// Its AdamW group: decayed 2-D weights, undecayed biases and
    /// LayerNorm, and the clamped λ.
    pub group: ParamGroup,
}

/// The keys this crate reads; others (dropout rates, `architectures`, …) are ignored.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object of model settings")]
struct RawGptConfig {
    model_type: Option<Entry<String>>,
    vocab_size: Option<Entry<u64>>,
    n_positions: Option<Entry<u64>>,
    n_embd: Option<Entry<u64>>,
    n_layer: Option<Entry<u64>>,
    n_head: Option<Entry<u64>>,
    n_inner: Option<Entry<u64>>,
    activation_function: Option<Entry<String>>,
    layer_norm_epsilon: Option<Entry<f64>>,
}

impl GptConfig {
    /// Checks that the sizes are positive and that `n_head` divides `n_embd`.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ];
        if let Some((key, n)) = sizes.iter().find(|(_, n)| *n == 0 || *n > 1 << 24) {
            return Err(Error::model(format!(
                "GPT config `{key}` = {n} is out of range"
            )));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::model(format!(
                "GPT config: n_embd {} is not a multiple of n_head {}",
                self.n_embd, self.n_head
            )));
        }
        let eps = self.layer_norm_epsilon;
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::model(format!(
                "GPT config: layer_norm_epsilon = {eps} must be positive"
            )));
        }
        Ok(())
    }

    /// Width of one head, `C / H`.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    /// Parses `config.json` text. Only GPT-2 models with the tanh GELU
    /// (`gelu_new`) and the usual 4·C feed-forward width are accepted;
    /// anything else is an error naming the setting.
    pub fn from_json(json: &str) -> Result<GptConfig> {
        let raw: RawGptConfig = serde_json::from_str(json).map_err(|e| {
            if e.is_data() {
                Error::model(format!("config.json: {e}"))
            } else {
                Error::model(format!("config.json is not valid JSON: {e}"))
            }
        })?;
        if let Some(kind) = text("model_type", raw.model_type)? {
            if kind != "gpt2" {
                return Err(Error::model(format!(
                    "config.json model_type `{kind}` is not `gpt2`"
                )));
            }
        }
        if let Some(act) = text("activation_function", raw.activation_function)? {
            if act != "gelu_new" {
                return Err(Error::model(format!(
                    "activation_function `{act}` is not supported (only the tanh form `gelu_new`)"
                )));
            }
        }
        let eps = match raw.layer_norm_epsilon {
            None => 1e-5,
            Some(Entry::Valid(eps)) => eps,
            Some(Entry::Invalid(_)) => {
                return Err(Error::model(
                    "config.json `layer_norm_epsilon` is not a number",
                ))
            }
        };
        let cfg = GptConfig {
            vocab_size: size("vocab_size", raw.vocab_size)?,
            n_positions: size("n_positions", raw.n_positions)?,
            n_embd: size("n_embd", raw.n_embd)?,
            n_layer: size("n_layer", raw.n_layer)?,
            n_head: size("n_head", raw.n_head)?,
            layer_norm_epsilon: eps as f32,
        };
        match raw.n_inner {
            None => {}
            Some(Entry::Valid(inner)) if inner as usize == 4 * cfg.n_embd => {}
            Some(_) => {
                return Err(Error::model(format!(
                    "config.json `n_inner` must be absent or 4·n_embd = {}",
                    4 * cfg.n_embd
                )))
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// `config.json` text under GPT-2's keys, so that `transformers` loads
    /// the checkpoint as a `GPT2LMHeadModel` (λ aside). The model has no
    /// dropout and no special tokens, and says so.
    pub fn to_json(&self) -> String {
        let v = serde_json::json!({
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "tie_word_embeddings": true,
            // A character vocabulary has no GPT-2 begin/end token (50256).
            "bos_token_id": null,
            "eos_token_id": null,
        });
        // A `Value` always serializes.
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    }

    /// Every parameter tensor in the model's fixed order: `wte`, `wpe`,
    /// each layer's tensors (with `attn.saobp_lambda` when `lambda`), then
    /// `ln_f`. Gradients and optimizer state follow the same order.
    pub fn parameters(&self, lambda: bool) -> Vec<ParamSpec> {
        let (c, v, t, h) = (self.n_embd, self.vocab_size, self.n_positions, self.n_head);
        let spec = |name: String, shape: &[usize], group| ParamSpec {
            name,
            shape: shape.to_vec(),
            group,
        };
        let (decayed, plain) = (ParamGroup::Decayed, ParamGroup::NotDecayed);
        let mut out = vec![
            spec("transformer.wte.weight".into(), &[v, c], decayed),
            spec("transformer.wpe.weight".into(), &[t, c], decayed),
        ];
        for i in 0..self.n_layer {
            let p = |s: &str| format!("transformer.h.{i}.{s}");
            out.extend([
                spec(p("ln_1.weight"), &[c], plain),
                spec(p("ln_1.bias"), &[c], plain),
                spec(p("attn.c_attn.weight"), &[c, 3 * c], decayed),
                spec(p("attn.c_attn.bias"), &[3 * c], plain),
                spec(p("attn.c_proj.weight"), &[c, c], decayed),
                spec(p("attn.c_proj.bias"), &[c], plain),
                spec(p("ln_2.weight"), &[c], plain),
                spec(p("ln_2.bias"), &[c], plain),
                spec(p("mlp.c_fc.weight"), &[c, 4 * c], decayed),
                spec(p("mlp.c_fc.bias"), &[4 * c], plain),
                spec(p("mlp.c_proj.weight"), &[4 * c, c], decayed),
                spec(p("mlp.c_proj.bias"), &[c], plain),
            ]);
            if lambda {
                out.push(spec(p("attn.saobp_lambda"), &[h], ParamGroup::Lambda));
            }
        }
        out.push(spec("transformer.ln_f.weight".into(), &[c], plain));
        out.push(spec("transformer.ln_f.bias".into(), &[c], plain));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GptConfig {
        GptConfig {
            vocab_size: 65,
            n_positions: 64,
            n_embd: 128,
            n_layer: 4,
            n_head: 4,
            layer_norm_epsilon: 1e-5,
        }
    }

    #[test]
    fn json_round_trips_and_counts_nanogpt_tiny_parameters() {
        let c = tiny();
        assert_eq!(GptConfig::from_json(&c.to_json()).unwrap(), c);
        let params = c.parameters(false);
        assert_eq!(params.len(), 2 + 12 * 4 + 2);
        let total: usize = params
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum();
        // 12·L·C² + 13·L·C (weights, biases and LayerNorms) + (V + T)·C + 2·C.
        assert_eq!(
            total,
            12 * 4 * 128 * 128 + 13 * 4 * 128 + (65 + 64) * 128 + 2 * 128
        );
        let with = c.parameters(true);
        assert_eq!(with.len(), params.len() + 4);
        assert_eq!(with[14].name, "transformer.h.0.attn.saobp_lambda");
        assert_eq!(with[14].group, ParamGroup::Lambda);
    }

    #[test]
    fn bad_configs_name_the_setting() {
        let err = |j: &str| GptConfig::from_json(j).unwrap_err().to_string();
        let base = r#""vocab_size": 5, "n_positions": 8, "n_embd": 12, "n_layer": 1"#;
        assert!(err(&format!("{{{base}, \"n_head\": 5}}")).contains("n_head"));
        assert!(err(&format!("{{{base}}}")).contains("n_head"));
        assert!(err(&format!(
            "{{{base}, \"n_head\": 2, \"activation_function\": \"relu\"}}"
        ))
        .contains("activation_function"));
        assert!(err(&format!(
            "{{{base}, \"n_head\": 2, \"model_type\": \"bert\"}}"
        ))
        .contains("model_type"));
        assert!(err(&format!("{{{base}, \"n_head\": 2, \"n_inner\": 7}}")).contains("n_inner"));
        assert!(err("[1]").contains("config.json"));
        let ok = GptConfig::from_json(&format!("{{{base}, \"n_head\": 2}}")).unwrap();
        assert_eq!((ok.head_dim(), ok.layer_norm_epsilon), (6, 1e-5));
    }
}
