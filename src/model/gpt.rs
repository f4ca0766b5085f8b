//! A GPT-2-layout model on the GPU, as the spec's "Training a small GPT with
//! SAOBP" gives it: forward with SAOBP per layer and head, and backward to
//! the gradient of every parameter, λ included.
//!
//! The activations the backward needs live in a [`GptWorkspace`] made once
//! for a batch shape: a forward and backward record into it, so a repeated
//! step creates no buffer, and the whole step is one GPU submission with
//! nothing read back. Every kernel it runs sums in a fixed order, so a
//! repeated step gives the same bits.
//!
//! Attention keeps each layer's map `A` (`[B, H, T, T]`) from the forward to
//! the backward: at the context lengths of the presets that is cheaper than
//! recomputing it. A layer with λ runs SAOBP's fused O(N²D) forward and its
//! O(N²D) backward, never forming `M`; a layer without λ is plain GPT-2
//! attention.
//!
//! ```no_run
//! # fn main() -> saobp::Result<()> {
//! use saobp::kernels::gpt::TokenIds;
//! use saobp::model::{Gpt, GptConfig};
//! use saobp::Gpu;
//! let gpu = Gpu::from_env_blocking()?;
//! let config = GptConfig { vocab_size: 65, n_positions: 64, n_embd: 128, n_layer: 4, n_head: 4, layer_norm_epsilon: 1e-5 };
//! // λ = 0.3 in every head of every layer, learned or not as the caller's optimizer decides.
//! let model = Gpt::init(&gpu, config, 1337, Some(&vec![vec![0.3; 4]; 4]))?;
//! let (batch, n) = (2, 64);
//! let ids: Vec<u32> = (0..batch * n).map(|i| (i % 65) as u32).collect();
//! let targets: Vec<u32> = (0..batch * n).map(|i| ((i + 1) % 65) as u32).collect();
//! let ids = TokenIds::new(&gpu, &ids, batch, n, 65)?;
//! let targets = TokenIds::new(&gpu, &targets, batch, n, 65)?;
//! let ws = model.workspace(&gpu, batch, n)?;
//! model.forward_backward_blocking(&gpu, &ws, &ids, &targets)?;
//! println!("loss {}", ws.loss_blocking(&gpu)?);
//! let d_lambda = ws.grad("transformer.h.0.attn.saobp_lambda").unwrap().to_vec_blocking(&gpu)?;
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::gpt_config::{GptConfig, ParamSpec};
use crate::attention::{attention, AttentionOptions, Metrics, Mode};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Step};
use crate::kernels::attention::{
    map_steps_via, scores_backward_softmax_steps, scores_backward_steps, AttentionShape,
};
use crate::kernels::bert::{self, Dims};
use crate::kernels::gpt::{self as ops, GptParams, TokenIds};
use crate::kernels::matmul::{self, Epilogue, MatmulOptions};
use crate::kernels::saobp::{self, BackwardScratch, FusedIntermediates, Lambda};
use crate::tensor::Tensor;
use crate::workload::SplitMix64;

/// Parameters of one layer, in [`GptConfig::parameters`] order.
const PER_LAYER: usize = 12;

/// A layer's parameters (or anything laid out as them, e.g. gradients).
struct Layer<'a, T> {
    ln1: (&'a T, &'a T),
    attn: (&'a T, &'a T),
    proj: (&'a T, &'a T),
    ln2: (&'a T, &'a T),
    fc: (&'a T, &'a T),
    mproj: (&'a T, &'a T),
    lambda: Option<&'a T>,
}

/// Every parameter by role, over a slice in [`GptConfig::parameters`] order.
struct Layout<'a, T> {
    wte: &'a T,
    wpe: &'a T,
    layers: Vec<Layer<'a, T>>,
    lnf: (&'a T, &'a T),
}

fn layout<T>(items: &[T], layers: usize, has_lambda: bool) -> Layout<'_, T> {
    let stride = PER_LAYER + usize::from(has_lambda);
    let layer = |i: usize| {
        let p = &items[2 + i * stride..][..stride];
        Layer {
            ln1: (&p[0], &p[1]),
            attn: (&p[2], &p[3]),
            proj: (&p[4], &p[5]),
            ln2: (&p[6], &p[7]),
            fc: (&p[8], &p[9]),
            mproj: (&p[10], &p[11]),
            lambda: has_lambda.then(|| &p[12]),
        }
    };
    let last = 2 + layers * stride;
    Layout {
        wte: &items[0],
        wpe: &items[1],
        layers: (0..layers).map(layer).collect(),
        lnf: (&items[last], &items[last + 1]),
    }
}

/// A GPT-2-layout model with its parameters on the GPU.
#[derive(Debug)]
pub struct Gpt {
    config: GptConfig,
    specs: Vec<ParamSpec>,
    params: Vec<Tensor>,
    has_lambda: bool,
}

/// The spec's initial values of every parameter, in [`GptConfig::parameters`]
/// order, from `seed`: weights `N(0, 0.02)`, the two `c_proj` weights of each
/// layer `N(0, 0.02/√(2L))`, biases 0, LayerNorm weights 1 and biases 0, and
/// λ from `lambda[layer][head]` when given.
///
/// Fails with [`Error::Shape`] when `lambda` does not hold one value per
/// layer and head, with [`Error::InvalidArgument`] when one is negative or
/// not finite, and with [`Error::Model`] when the config is invalid.
pub fn init_values(
    config: &GptConfig,
    seed: u64,
    lambda: Option<&[Vec<f32>]>,
) -> Result<Vec<(String, Vec<f32>)>> {
    config.validate()?;
    if let Some(lambda) = lambda {
        check_lambda(config, lambda)?;
    }
    let mut rng = SplitMix64::new(seed);
    let proj_std = 0.02 / (2.0 * config.n_layer as f64).sqrt();
    let mut layer_lambda = lambda.into_iter().flatten();
    Ok(config
        .parameters(lambda.is_some())
        .into_iter()
        .map(|spec| {
            let len: usize = spec.shape.iter().product();
            let name = &spec.name;
            let values = if name.ends_with("saobp_lambda") {
                layer_lambda.next().cloned().unwrap_or_default()
            } else if name.ends_with(".bias") {
                vec![0.0; len]
            } else if name.contains("ln_") {
                vec![1.0; len]
            } else {
                let std = if name.ends_with("c_proj.weight") {
                    proj_std
                } else {
                    0.02
                };
                (0..len).map(|_| (std * rng.normal()) as f32).collect()
            };
            (spec.name, values)
        })
        .collect())
}

/// Checks one finite, non-negative λ per layer and head.
fn check_lambda(config: &GptConfig, lambda: &[Vec<f32>]) -> Result<()> {
    if lambda.len() != config.n_layer || lambda.iter().any(|l| l.len() != config.n_head) {
        return Err(Error::shape(format!(
            "λ needs {} values for each of {} layers",
            config.n_head, config.n_layer
        )));
    }
    for (i, l) in lambda.iter().enumerate() {
        if let Some(x) = l.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
            return Err(Error::invalid(format!(
                "λ of layer {i} must be finite and >= 0, got {x}"
            )));
        }
    }
    Ok(())
}

impl Gpt {
    /// A model initialized as the spec says (see [`init_values`]).
    pub fn init(
        gpu: &Gpu,
        config: GptConfig,
        seed: u64,
        lambda: Option<&[Vec<f32>]>,
    ) -> Result<Gpt> {
        let values = init_values(&config, seed, lambda)?;
        Gpt::from_values(gpu, config, &values)
    }

    /// A model from named values. The names must be exactly those of
    /// [`GptConfig::parameters`], with or without λ (all layers alike), each
    /// with its shape's number of values; λ must be finite and ≥ 0.
    ///
    /// Fails with [`Error::Model`] naming the first tensor that is missing,
    /// unexpected or of the wrong length.
    pub fn from_values(gpu: &Gpu, config: GptConfig, values: &[(String, Vec<f32>)]) -> Result<Gpt> {
        let find = |name: &str| values.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let checked = check(&config, values.len(), |name| {
            Ok(find(name).map(|v| Cow::Borrowed(v.as_slice())))
        })?;
        Gpt::upload(gpu, config, checked)
    }

    /// Reads `config.json` and `model.safetensors` from `dir`.
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Gpt> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| Error::model(format!("cannot read {}: {e}", dir.join(name).display())))
        };
        let config = String::from_utf8(read("config.json")?)
            .map_err(|_| Error::model("config.json is not UTF-8"))
            .and_then(|t| GptConfig::from_json(&t))?;
        Gpt::from_safetensors(gpu, config, &read("model.safetensors")?)
    }

    /// A model from `config` and the bytes of a safetensors file in the
    /// spec's layout (f32 tensors under Hugging Face names; λ optional).
    /// Every tensor is checked before the first upload.
    pub fn from_safetensors(gpu: &Gpu, config: GptConfig, bytes: &[u8]) -> Result<Gpt> {
        let st = parse_safetensors(bytes)?;
        let checked = check(&config, st.len(), |name| safetensors_values(&st, name))?;
        Gpt::upload(gpu, config, checked)
    }

    /// Checks, on the host and without a GPU, that a safetensors file holds
    /// exactly the tensors `config` implies (as [`Gpt::from_safetensors`]
    /// would find them), and returns whether it has λ.
    pub fn check_safetensors(config: &GptConfig, bytes: &[u8]) -> Result<bool> {
        let st = parse_safetensors(bytes)?;
        Ok(check(config, st.len(), |name| safetensors_values(&st, name))?.has_lambda)
    }

    /// Uploads checked values.
    fn upload(gpu: &Gpu, config: GptConfig, checked: Checked<'_>) -> Result<Gpt> {
        let params = checked
            .specs
            .iter()
            .zip(&checked.host)
            .map(|(spec, v)| Tensor::from_slice(gpu, &spec.shape, v))
            .collect::<Result<Vec<_>>>()?;
        Ok(Gpt {
            config,
            specs: checked.specs,
            params,
            has_lambda: checked.has_lambda,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// Whether the layers carry λ (`attn.saobp_lambda`) and run SAOBP.
    pub fn has_lambda(&self) -> bool {
        self.has_lambda
    }

    /// Every parameter tensor with its name, shape and optimizer group, in
    /// [`GptConfig::parameters`] order (the order of [`GptWorkspace::grads`]).
    pub fn parameters(&self) -> impl Iterator<Item = (&ParamSpec, &Tensor)> {
        self.specs.iter().zip(&self.params)
    }

    /// The parameter tensor `name`, if the model has it.
    pub fn parameter(&self, name: &str) -> Option<&Tensor> {
        self.parameters()
            .find(|(s, _)| s.name == name)
            .map(|(_, t)| t)
    }

    /// Every parameter's values, read back, by name.
    pub async fn values(&self, gpu: &Gpu) -> Result<Vec<(String, Vec<f32>)>> {
        let mut out = Vec::with_capacity(self.params.len());
        for (spec, t) in self.parameters() {
            out.push((spec.name.clone(), t.to_vec(gpu).await?));
        }
        Ok(out)
    }

    /// Blocking form of [`Gpt::values`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn values_blocking(&self, gpu: &Gpu) -> Result<Vec<(String, Vec<f32>)>> {
        pollster::block_on(self.values(gpu))
    }

    /// The parameters as the bytes of a safetensors file, in the layout
    /// [`Gpt::from_safetensors`] reads (and `transformers` loads).
    pub async fn to_safetensors(&self, gpu: &Gpu) -> Result<Vec<u8>> {
        let values = self.values(gpu).await?;
        let views = self
            .specs
            .iter()
            .zip(&values)
            .map(|(spec, (_, v))| {
                TensorView::new(Dtype::F32, spec.shape.clone(), bytemuck::cast_slice(v))
                    .map(|view| (spec.name.clone(), view))
                    .map_err(|e| Error::model(format!("cannot write `{}`: {e}", spec.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::model(format!("cannot write the safetensors file: {e}")))
    }

    /// Blocking form of [`Gpt::to_safetensors`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_safetensors_blocking(&self, gpu: &Gpu) -> Result<Vec<u8>> {
        pollster::block_on(self.to_safetensors(gpu))
    }

    /// Each layer's λ per head, read back (zeros when the model has no λ).
    pub async fn lambda_values(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(self.config.n_layer);
        for layer in &self.layout().layers {
            out.push(match layer.lambda {
                Some(t) => t.to_vec(gpu).await?,
                None => vec![0.0; self.config.n_head],
            });
        }
        Ok(out)
    }

    /// Metrics of every layer's attention in the last forward recorded in
    /// `ws`: of `A` (its GTD at λ = 1, as the spec reports a plain map) and
    /// of `R` at the layer's λ (`R = A` at λ = 0), as [`crate::attention()`]
    /// reports them, from the `q`, `k` and `v` the forward kept.
    pub async fn attention_metrics(&self, gpu: &Gpu, ws: &GptWorkspace) -> Result<Vec<Metrics>> {
        let lambdas = self.lambda_values(gpu).await?;
        let mut out = Vec::with_capacity(ws.layers.len());
        for (acts, lambda) in ws.layers.iter().zip(lambdas) {
            let opts = AttentionOptions {
                causal: true,
                lambda: Lambda::PerHead(lambda),
                mode: Mode::Fused,
                metrics: true,
                ..Default::default()
            };
            let o = attention(gpu, &acts.q, &acts.k, &acts.v, &opts).await?;
            out.push(
                o.metrics
                    .ok_or_else(|| Error::invalid("attention gave no metrics"))?,
            );
        }
        Ok(out)
    }

    /// Blocking form of [`Gpt::attention_metrics`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn attention_metrics_blocking(&self, gpu: &Gpu, ws: &GptWorkspace) -> Result<Vec<Metrics>> {
        pollster::block_on(self.attention_metrics(gpu, ws))
    }

    /// The buffers of a forward and backward over `batch` sequences of `n`
    /// tokens (`1 <= n <= n_positions`).
    pub fn workspace(&self, gpu: &Gpu, batch: usize, n: usize) -> Result<GptWorkspace> {
        GptWorkspace::new(gpu, self, batch, n)
    }

    fn layout(&self) -> Layout<'_, Tensor> {
        layout(&self.params, self.config.n_layer, self.has_lambda)
    }

    /// Checks that `ids` (and `targets`) fit this model and `ws`.
    fn check_batch(
        &self,
        ws: &GptWorkspace,
        ids: &TokenIds,
        targets: Option<&TokenIds>,
    ) -> Result<()> {
        for (what, t) in std::iter::once(("ids", ids)).chain(targets.map(|t| ("targets", t))) {
            if (t.batch(), t.n()) != (ws.batch, ws.n) {
                return Err(Error::shape(format!(
                    "{what} are [{}, {}], the workspace was made for [{}, {}]",
                    t.batch(),
                    t.n(),
                    ws.batch,
                    ws.n
                )));
            }
            if t.vocab() != self.config.vocab_size {
                return Err(Error::shape(format!(
                    "{what} were checked against a vocabulary of {}, the model has {}",
                    t.vocab(),
                    self.config.vocab_size
                )));
            }
        }
        if ws.has_lambda != self.has_lambda
            || ws.grads.len() != self.params.len()
            || ws.width != self.config.n_embd
        {
            return Err(Error::shape(
                "the workspace was made for another model configuration",
            ));
        }
        Ok(())
    }

    /// The forward: logits into [`GptWorkspace::logits`] and, with
    /// `targets`, the mean cross-entropy into [`GptWorkspace::loss`]. One
    /// submission; nothing is read back.
    pub async fn forward(
        &self,
        gpu: &Gpu,
        ws: &GptWorkspace,
        ids: &TokenIds,
        targets: Option<&TokenIds>,
    ) -> Result<()> {
        self.check_batch(ws, ids, targets)?;
        let mut steps = self.forward_steps(gpu, ws, ids)?;
        if let Some(targets) = targets {
            steps.extend(self.loss_steps(gpu, ws, targets)?);
        }
        gpu.run(&steps).await
    }

    /// Blocking form of [`Gpt::forward`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(
        &self,
        gpu: &Gpu,
        ws: &GptWorkspace,
        ids: &TokenIds,
        targets: Option<&TokenIds>,
    ) -> Result<()> {
        pollster::block_on(self.forward(gpu, ws, ids, targets))
    }

    /// The forward, the loss and the backward: the gradient of the mean
    /// cross-entropy with respect to every parameter into
    /// [`GptWorkspace::grads`] (λ's too, when the model has λ). One
    /// submission; nothing is read back.
    ///
    /// Fails with [`Error::Shape`] when `ids` or `targets` do not fit the
    /// workspace or the model's vocabulary.
    pub async fn forward_backward(
        &self,
        gpu: &Gpu,
        ws: &GptWorkspace,
        ids: &TokenIds,
        targets: &TokenIds,
    ) -> Result<()> {
        let steps = self.forward_backward_steps(gpu, ws, ids, targets)?;
        gpu.run(&steps).await
    }

    /// The steps of [`Gpt::forward_backward`], for a caller that submits
    /// them with others (the trainer adds AdamW's).
    pub(crate) fn forward_backward_steps<'a>(
        &'a self,
        gpu: &'a Gpu,
        ws: &'a GptWorkspace,
        ids: &'a TokenIds,
        targets: &'a TokenIds,
    ) -> Result<Vec<Step<'a>>> {
        self.check_batch(ws, ids, Some(targets))?;
        let mut steps = self.forward_steps(gpu, ws, ids)?;
        steps.extend(self.loss_steps(gpu, ws, targets)?);
        steps.extend(self.backward_steps(gpu, ws, ids)?);
        Ok(steps)
    }

    /// Blocking form of [`Gpt::forward_backward`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_backward_blocking(
        &self,
        gpu: &Gpu,
        ws: &GptWorkspace,
        ids: &TokenIds,
        targets: &TokenIds,
    ) -> Result<()> {
        pollster::block_on(self.forward_backward(gpu, ws, ids, targets))
    }

    fn forward_steps<'a>(
        &'a self,
        gpu: &'a Gpu,
        ws: &'a GptWorkspace,
        ids: &'a TokenIds,
    ) -> Result<Vec<Step<'a>>> {
        let w = self.layout();
        let s = &ws.shapes;
        let plain = MatmulOptions::default();
        let mut steps = vec![ops::embed_step(
            &ops::plan_embed(ids, w.wte.shape(), w.wpe.shape())?,
            ids,
            w.wte,
            w.wpe,
            &ws.xs[0],
        )];
        for (i, (layer, acts)) in w.layers.iter().zip(&ws.layers).enumerate() {
            let (x_in, x_mid, x_out) = (&ws.xs[2 * i], &ws.xs[2 * i + 1], &ws.xs[2 * i + 2]);
            // Attention block.
            steps.extend(ops::layer_norm_steps(
                gpu,
                &s.ln,
                x_in,
                layer.ln1.0,
                layer.ln1.1,
                &acts.ln1,
                &acts.ln1_stats,
            )?);
            let (attn, attn_bias) = layer.attn;
            let epilogue = Epilogue::SplitQkv {
                bias: attn_bias,
                q: &acts.q,
                k: &acts.k,
                v: &acts.v,
                heads: self.config.n_head,
                seq: ws.n(),
            };
            let separate =
                ops::split_qkv_step(&s.block, &ws.qkv, attn_bias, &acts.q, &acts.k, &acts.v);
            steps.extend(product_with(
                gpu,
                (&acts.ln1, attn, &plain),
                &ws.qkv,
                epilogue,
                (&ws.qkv, separate),
            )?);
            // The softmax writes A into the texture its products read
            // where they copy it, and into its buffer for the backward.
            let refined = match (&acts.fused, layer.lambda) {
                (Some((fused, mass)), Some(lambda)) => Some((fused, mass, lambda)),
                _ => None,
            };
            let av = matmul::plan(acts.a.shape(), acts.v.shape(), &plain)?;
            let map = match refined {
                Some((fused, ..)) => fused.map_texture(gpu, &acts.a, &acts.v)?,
                None => matmul::map_texture(gpu, &[(&av, &acts.v)], &acts.a)?,
            };
            let (map_steps, map) = map_steps_via(
                gpu,
                &s.attention,
                &acts.q,
                &acts.k,
                true,
                None,
                &acts.a,
                map,
                true,
            )?;
            steps.extend(map_steps);
            match (refined, map) {
                (Some((fused, mass, lambda)), map) => {
                    // The output kernel writes O's heads into token rows.
                    let merge = saobp::Merge {
                        out: &acts.merged,
                        parts: 1,
                        part: 0,
                    };
                    steps.extend(fused.output_steps(
                        gpu,
                        &s.saobp,
                        &acts.a,
                        &acts.v,
                        map,
                        lambda,
                        mass,
                        &acts.o,
                        Some(merge),
                    )?);
                }
                (None, mut map) => {
                    // O's heads go straight into token rows where the
                    // product's store can put them there.
                    let merge = Epilogue::MergeHeads {
                        out: &acts.merged,
                        heads: self.config.n_head,
                        parts: 1,
                        part: 0,
                    };
                    let shared = map.as_mut().map(|m| &mut m.shared);
                    let variant = matmul::choose(gpu, &av)?;
                    let fused = matmul::fused_steps_with(
                        gpu, variant, &av, &acts.a, &acts.v, &acts.o, merge, shared,
                    )?;
                    if let Some(fused) = fused {
                        steps.extend(fused);
                    } else {
                        steps.extend(match map {
                            Some(mut map) => matmul::steps_sharing_a(
                                gpu,
                                &av,
                                &acts.a,
                                &acts.v,
                                &acts.o,
                                &mut map.shared,
                            )?,
                            None => matmul::steps(gpu, &av, &acts.a, &acts.v, &acts.o)?,
                        });
                        steps.push(bert::merge_heads(&s.dims, &acts.o, &acts.merged)?);
                    }
                }
            }
            let (proj, proj_bias) = layer.proj;
            let epilogue = Epilogue::BiasResidual {
                bias: proj_bias,
                residual: x_in,
            };
            let separate = ops::bias_residual_step(&s.block, x_in, &ws.proj, proj_bias, x_mid);
            steps.extend(product_with(
                gpu,
                (&acts.merged, proj, &plain),
                x_mid,
                epilogue,
                (&ws.proj, separate),
            )?);
            // MLP block.
            steps.extend(ops::layer_norm_steps(
                gpu,
                &s.ln,
                x_mid,
                layer.ln2.0,
                layer.ln2.1,
                &acts.ln2,
                &acts.ln2_stats,
            )?);
            let (fc, fc_bias) = layer.fc;
            let epilogue = Epilogue::BiasGelu {
                bias: fc_bias,
                act: &acts.gelu,
            };
            let separate = ops::bias_gelu_step(&s.wide, &acts.fc, fc_bias, &acts.gelu);
            steps.extend(product_with(
                gpu,
                (&acts.ln2, fc, &plain),
                &acts.fc,
                epilogue,
                (&acts.fc, separate),
            )?);
            let (mproj, mproj_bias) = layer.mproj;
            let epilogue = Epilogue::BiasResidual {
                bias: mproj_bias,
                residual: x_mid,
            };
            let separate = ops::bias_residual_step(&s.block, x_mid, &ws.proj, mproj_bias, x_out);
            steps.extend(product_with(
                gpu,
                (&acts.gelu, mproj, &plain),
                x_out,
                epilogue,
                (&ws.proj, separate),
            )?);
        }
        let x_last = &ws.xs[ws.xs.len() - 1];
        steps.extend(ops::layer_norm_steps(
            gpu,
            &s.ln,
            x_last,
            w.lnf.0,
            w.lnf.1,
            &ws.lnf,
            &ws.lnf_stats,
        )?);
        // The output head is tied to wte: logits = ln_f(x)·wteᵀ.
        let tb = MatmulOptions {
            trans_b: true,
            ..plain
        };
        steps.extend(product(gpu, &ws.lnf, w.wte, &ws.logits, &tb)?);
        Ok(steps)
    }

    fn loss_steps<'a>(
        &'a self,
        gpu: &Gpu,
        ws: &'a GptWorkspace,
        targets: &'a TokenIds,
    ) -> Result<[Step<'a>; 2]> {
        let p = ops::plan_cross_entropy(&ws.logits, targets)?;
        ops::cross_entropy_steps(
            gpu,
            &p,
            &ws.logits,
            targets,
            &ws.losses,
            &ws.dlogits,
            &ws.loss,
        )
    }

    fn backward_steps<'a>(
        &'a self,
        gpu: &'a Gpu,
        ws: &'a GptWorkspace,
        ids: &'a TokenIds,
    ) -> Result<Vec<Step<'a>>> {
        let heads = self.config.n_head;
        let w = self.layout();
        let g = layout(&ws.grads, self.config.n_layer, self.has_lambda);
        let s = &ws.shapes;
        let b = &ws.back;
        let plain = MatmulOptions::default();
        let ta = MatmulOptions {
            trans_a: true,
            ..plain
        };
        let tb = MatmulOptions {
            trans_b: true,
            ..plain
        };
        let mut steps = Vec::new();
        // `y = x·W + b` with ∂L/∂y in `dy`: ∂W = xᵀ·dy and ∂b = column sums
        // of dy into `grad`, ...
        let weight_grads = |steps: &mut Vec<Step<'a>>,
                            x: &'a Tensor,
                            grad: (&'a Tensor, &'a Tensor),
                            dy: &'a Tensor,
                            p: &GptParams|
         -> Result<()> {
            steps.extend(product(gpu, x, dy, grad.0, &ta)?);
            steps.extend(ops::column_sum_steps(gpu, p, dy, grad.1)?);
            Ok(())
        };
        // ... and ∂x = dy·Wᵀ into `dx`.
        let linear = |steps: &mut Vec<Step<'a>>,
                      x: &'a Tensor,
                      weight: (&'a Tensor, &'a Tensor),
                      grad: (&'a Tensor, &'a Tensor),
                      dy: &'a Tensor,
                      dx: &'a Tensor,
                      p: &GptParams|
         -> Result<()> {
            weight_grads(steps, x, grad, dy, p)?;
            steps.extend(product(gpu, dy, weight.0, dx, &tb)?);
            Ok(())
        };

        // The head, tied to wte: ∂wte = dlogitsᵀ·ln_f(x) (the embedding's
        // share is added last), ∂ln_f(x) = dlogits·wte.
        steps.extend(product(gpu, &ws.dlogits, &ws.lnf, g.wte, &ta)?);
        steps.extend(product(gpu, &ws.dlogits, w.wte, &b.dc, &plain)?);
        let x_last = &ws.xs[ws.xs.len() - 1];
        steps.extend(ops::layer_norm_backward_steps(
            gpu,
            &s.ln,
            false,
            x_last,
            w.lnf.0,
            &ws.lnf_stats,
            &b.dc,
            (&b.dres, g.lnf.0, g.lnf.1),
        )?);

        // `dres` carries ∂L/∂x of the residual stream down the layers; each
        // LayerNorm's backward adds its share to it in place.
        for i in (0..self.config.n_layer).rev() {
            let (layer, grads, acts) = (&w.layers[i], &g.layers[i], &ws.layers[i]);
            let (x_in, x_mid) = (&ws.xs[2 * i], &ws.xs[2 * i + 1]);
            // MLP block: x_out = x_mid + gelu(ln_2(x_mid)·W_fc + b_fc)·W_proj + b_proj.
            // ∂L/∂gelu(h) = dres·W_projᵀ, and through GELU in the same store
            // where it can be fused.
            weight_grads(&mut steps, &acts.gelu, grads.mproj, &b.dres, &s.block)?;
            let epilogue = Epilogue::GeluBackward {
                bias: layer.fc.1,
                pre: &acts.fc,
            };
            let separate = ops::gelu_backward_step(&s.wide, &acts.fc, layer.fc.1, &b.dwide, &b.dfc);
            steps.extend(product_with(
                gpu,
                (&b.dres, layer.mproj.0, &tb),
                &b.dfc,
                epilogue,
                (&b.dwide, separate),
            )?);
            linear(
                &mut steps, &acts.ln2, layer.fc, grads.fc, &b.dfc, &b.dc, &s.wide,
            )?;
            steps.extend(ops::layer_norm_backward_steps(
                gpu,
                &s.ln,
                true,
                x_mid,
                layer.ln2.0,
                &acts.ln2_stats,
                &b.dc,
                (&b.dres, grads.ln2.0, grads.ln2.1),
            )?);

            // Attention block: x_mid = x_in + attn(ln_1(x_in))·W_proj + b_proj.
            // ∂L/∂O = dres·W_projᵀ, split into heads in the product's store
            // where it can be.
            weight_grads(&mut steps, &acts.merged, grads.proj, &b.dres, &s.block)?;
            let epilogue = Epilogue::SplitHeads {
                out: &b.d_o,
                heads,
                seq: ws.n(),
            };
            let separate = bert::split_heads(&s.dims, &b.dc, &b.d_o)?;
            steps.extend(product_with(
                gpu,
                (&b.dres, layer.proj.0, &tb),
                &b.d_o,
                epilogue,
                (&b.dc, separate),
            )?);
            match (&acts.fused, layer.lambda, grads.lambda, &b.saobp) {
                (Some((fused, _)), Some(lambda), Some(d_lambda), Some(scratch)) => {
                    // dq and dk go straight into dqkv's token rows where both
                    // products' stores can put them there, and then so does
                    // dv from the output backward's last kernel.
                    let merged = merged_qkv_grads(gpu, &s.attention, acts, b, heads, false)?;
                    let v_merged = merged.is_some().then_some(saobp::Merge {
                        out: &b.dqkv,
                        parts: 3,
                        part: 2,
                    });
                    steps.extend(saobp::output_backward_steps(
                        gpu,
                        &s.saobp,
                        &acts.a,
                        &acts.v,
                        lambda,
                        &b.d_o,
                        fused,
                        scratch,
                        saobp::Grads {
                            attention: &b.da,
                            v: &b.dv,
                            lambda: d_lambda,
                            v_merged,
                        },
                    )?);
                    qkv_grads(gpu, &mut steps, s, acts, b, merged)?;
                }
                _ => {
                    // dq, dk and dv go straight into dqkv's token rows
                    // where all three products' stores can put them there.
                    let mut merged = merged_qkv_grads(gpu, &s.attention, acts, b, heads, true)?;
                    steps.extend(product(gpu, &b.d_o, &acts.v, &b.da, &tb)?);
                    match merged.as_mut() {
                        Some(products) => steps.extend(products.remove(0)),
                        None => steps.extend(product(gpu, &acts.a, &b.d_o, &b.dv, &ta)?),
                    }
                    qkv_grads(gpu, &mut steps, s, acts, b, merged)?;
                }
            }
            linear(
                &mut steps, &acts.ln1, layer.attn, grads.attn, &b.dqkv, &b.dc, &s.qkv,
            )?;
            steps.extend(ops::layer_norm_backward_steps(
                gpu,
                &s.ln,
                true,
                x_in,
                layer.ln1.0,
                &acts.ln1_stats,
                &b.dc,
                (&b.dres, grads.ln1.0, grads.ln1.1),
            )?);
        }
        // The embedding: ∂wte gets the tokens' rows added to the head's share.
        let p = ops::plan_embed(ids, w.wte.shape(), w.wpe.shape())?;
        steps.extend(ops::embed_backward_steps(
            &p,
            [true, false],
            ids,
            &b.dres,
            g.wte,
            g.wpe,
        ));
        Ok(steps)
    }
}

/// The steps of the product `op(x)·op(W)` (`product` = (x, W, options))
/// with `epilogue` fused into its store, writing `c`, where the matmul can
/// (see [`Epilogue`]); else the product into `fallback.0` and then
/// `fallback.1`, the epilogue's own kernel.
fn product_with<'a>(
    gpu: &Gpu,
    product: (&'a Tensor, &'a Tensor, &MatmulOptions),
    c: &'a Tensor,
    epilogue: Epilogue<'a>,
    fallback: (&'a Tensor, Step<'a>),
) -> Result<Vec<Step<'a>>> {
    let (x, weight, opts) = product;
    let plan = matmul::plan(x.shape(), weight.shape(), opts)?;
    if let Some(steps) = matmul::fused_steps(gpu, &plan, x, weight, c, epilogue)? {
        return Ok(steps);
    }
    let (out, separate) = fallback;
    let mut steps = matmul::steps(gpu, &plan, x, weight, out)?;
    steps.push(separate);
    Ok(steps)
}

/// The q, k and v gradients' last steps, once `dv`'s are recorded and
/// `b.da` holds `∂L/∂A`: the softmax backward, then `merged` (the products
/// of dq and dk from [`merged_qkv_grads`], storing into `b.dqkv`), else
/// the products into `b.dq` and `b.dk` and the merge of all three.
fn qkv_grads<'a>(
    gpu: &'a Gpu,
    steps: &mut Vec<Step<'a>>,
    s: &Shapes,
    acts: &'a LayerActivations,
    b: &'a BackwardBuffers,
    merged: Option<Vec<Vec<Step<'a>>>>,
) -> Result<()> {
    match merged {
        Some(products) => {
            steps.extend(scores_backward_softmax_steps(
                gpu,
                &s.attention,
                &acts.a,
                true,
                None,
                &b.da,
            )?);
            steps.extend(products.into_iter().flatten());
        }
        None => {
            steps.extend(scores_backward_steps(
                gpu,
                &s.attention,
                &acts.q,
                &acts.k,
                &acts.a,
                true,
                None,
                &b.da,
                &b.dq,
                &b.dk,
            )?);
            steps.push(ops::merge_qkv_step(&s.block, &b.dq, &b.dk, &b.dv, &b.dqkv));
        }
    }
    Ok(())
}

/// The products `dv = Aᵀ·dO` (plain attention's, with `with_dv`), then
/// `dq = scale·dS·K` and `dk = scale·dSᵀ·Q` (`dS` in `b.da` once the softmax
/// backward ran), each stored straight into `b.dqkv`'s token rows: `None`
/// unless all their stores can (the texture family copying their
/// operands), and the caller runs them apart and merges.
fn merged_qkv_grads<'a>(
    gpu: &Gpu,
    shape: &AttentionShape,
    acts: &'a LayerActivations,
    b: &'a BackwardBuffers,
    heads: usize,
    with_dv: bool,
) -> Result<Option<Vec<Vec<Step<'a>>>>> {
    let scaled = |trans_a| MatmulOptions {
        trans_a,
        trans_b: false,
        alpha: shape.scale,
    };
    let ta = MatmulOptions {
        trans_a: true,
        ..MatmulOptions::default()
    };
    // (A, B, C, options, part of dqkv)
    let products: [(&Tensor, &Tensor, &Tensor, MatmulOptions, usize); 3] = [
        (&acts.a, &b.d_o, &b.dv, ta, 2),
        (&b.da, &acts.k, &b.dq, scaled(false), 0),
        (&b.da, &acts.q, &b.dk, scaled(true), 1),
    ];
    let mut out = Vec::with_capacity(3);
    for (a, x, c, opts, part) in products.into_iter().skip(usize::from(!with_dv)) {
        let plan = matmul::plan(a.shape(), x.shape(), &opts)?;
        let merge = Epilogue::MergeHeads {
            out: &b.dqkv,
            heads,
            parts: 3,
            part,
        };
        let variant = matmul::choose(gpu, &plan)?;
        match matmul::fused_steps_with(gpu, variant, &plan, a, x, c, merge, None)? {
            Some(steps) => out.push(steps),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// The steps of `out = op(a)·op(b)` through the matmul kernels.
fn product<'a>(
    gpu: &Gpu,
    a: &'a Tensor,
    b: &'a Tensor,
    out: &'a Tensor,
    opts: &MatmulOptions,
) -> Result<Vec<Step<'a>>> {
    let p = matmul::plan(a.shape(), b.shape(), opts)?;
    matmul::steps(gpu, &p, a, b, out)
}

/// Parameter values checked against a config, still on the host.
struct Checked<'v> {
    specs: Vec<ParamSpec>,
    host: Vec<Cow<'v, [f32]>>,
    has_lambda: bool,
}

/// Checks every tensor `get` gives against `config` (presence, length, λ in
/// range, nothing left over out of `count`).
fn check<'v>(
    config: &GptConfig,
    count: usize,
    get: impl Fn(&str) -> Result<Option<Cow<'v, [f32]>>>,
) -> Result<Checked<'v>> {
    config.validate()?;
    let has_lambda = get(&config.parameters(true)[2 + PER_LAYER].name)?.is_some();
    let specs = config.parameters(has_lambda);
    let mut host = Vec::with_capacity(specs.len());
    for spec in &specs {
        let values = get(&spec.name)?.ok_or_else(|| {
            Error::model(format!(
                "tensor `{}` is missing{}",
                spec.name,
                if has_lambda {
                    " (layer 0 has a λ, so every layer needs one)"
                } else {
                    ""
                }
            ))
        })?;
        let len: usize = spec.shape.iter().product();
        if values.len() != len {
            return Err(Error::model(format!(
                "tensor `{}` holds {} values, the config implies shape {:?}",
                spec.name,
                values.len(),
                spec.shape
            )));
        }
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return Err(Error::model(format!(
                "tensor `{}` holds {} at index {i}; parameters must be finite",
                spec.name, values[i]
            )));
        }
        if spec.name.ends_with("saobp_lambda") {
            if let Some(x) = values.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
                return Err(Error::model(format!(
                    "tensor `{}` holds λ = {x}; λ must be finite and >= 0",
                    spec.name
                )));
            }
        }
        host.push(values);
    }
    if count != specs.len() {
        let lambda_elsewhere = !has_lambda
            && (1..config.n_layer).any(|i| {
                get(&format!("transformer.h.{i}.attn.saobp_lambda")).is_ok_and(|v| v.is_some())
            });
        return Err(Error::model(if lambda_elsewhere {
            "some layers have a λ (`attn.saobp_lambda`) and layer 0 has none: all or none must"
                .to_string()
        } else {
            format!(
                "{count} tensors given, the config implies {}; the extra ones are not GPT-2 parameters",
                specs.len()
            )
        }));
    }
    Ok(Checked {
        specs,
        host,
        has_lambda,
    })
}

fn parse_safetensors(bytes: &[u8]) -> Result<SafeTensors<'_>> {
    SafeTensors::deserialize(bytes).map_err(|e| {
        Error::model(format!(
            "model.safetensors is not a valid safetensors file: {e}"
        ))
    })
}

/// Tensor `name` of a safetensors file as f32 values (stored as f32, f16 or
/// bf16: [`crate::io::tensor_f32`]), `None` when absent.
fn safetensors_values<'a>(st: &SafeTensors<'a>, name: &str) -> Result<Option<Cow<'a, [f32]>>> {
    let Ok(t) = st.tensor(name) else {
        return Ok(None);
    };
    crate::io::tensor_f32(name, &t)
        .map(Some)
        .map_err(|e| Error::model(e.to_string()))
}

/// Shapes and kernel parameters of one batch shape.
struct Shapes {
    /// `[B·T, C]` rows with T and H, for the elementwise and qkv kernels.
    block: GptParams,
    /// `[B·T, 3C]`, for c_attn's bias gradient.
    qkv: GptParams,
    /// `[B·T, 4C]`, for the MLP's bias + GELU.
    wide: GptParams,
    /// `[B·T, C]` with ε, for LayerNorm.
    ln: GptParams,
    /// Head split and merge around attention.
    dims: Dims,
    /// Causal attention over `[B, H, T, C/H]`.
    attention: AttentionShape,
    /// SAOBP over the `B·H` maps.
    saobp: saobp::Plan,
}

/// What one layer's forward keeps for its backward.
struct LayerActivations {
    ln1: Tensor,
    ln1_stats: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    /// The fused SAOBP intermediates and `m`, when the layer has λ.
    fused: Option<(FusedIntermediates, Tensor)>,
    o: Tensor,
    merged: Tensor,
    ln2: Tensor,
    ln2_stats: Tensor,
    /// `ln_2(x)·W_fc`, before the bias and GELU.
    fc: Tensor,
    gelu: Tensor,
}

/// The backward's scratch, shared by every layer (they run one after another).
struct BackwardBuffers {
    /// ∂L/∂x of the residual stream.
    dres: Tensor,
    dc: Tensor,
    dwide: Tensor,
    dfc: Tensor,
    dqkv: Tensor,
    d_o: Tensor,
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    /// ∂L/∂A, then ∂L/∂S in place.
    da: Tensor,
    saobp: Option<BackwardScratch>,
}

/// The activations, gradients and scratch of a [`Gpt`]'s forward and
/// backward over one batch shape (`B` sequences of `T` tokens), made by
/// [`Gpt::workspace`]. Reusing it for every step of that shape allocates
/// nothing.
pub struct GptWorkspace {
    batch: usize,
    n: usize,
    width: usize,
    has_lambda: bool,
    specs: Vec<ParamSpec>,
    shapes: Shapes,
    /// The residual stream: the embedding, then after each block (2L + 1).
    xs: Vec<Tensor>,
    layers: Vec<LayerActivations>,
    qkv: Tensor,
    proj: Tensor,
    lnf: Tensor,
    lnf_stats: Tensor,
    logits: Tensor,
    losses: Tensor,
    dlogits: Tensor,
    loss: Tensor,
    back: BackwardBuffers,
    grads: Vec<Tensor>,
}

impl std::fmt::Debug for GptWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GptWorkspace")
            .field("batch", &self.batch)
            .field("n", &self.n)
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

impl GptWorkspace {
    fn new(gpu: &Gpu, model: &Gpt, batch: usize, n: usize) -> Result<GptWorkspace> {
        let c = &model.config;
        if batch == 0 || n == 0 || n > c.n_positions {
            return Err(Error::invalid(format!(
                "a batch of {batch} sequences of {n} tokens: both must be >= 1, and n <= n_positions = {}",
                c.n_positions
            )));
        }
        let (width, heads, hd) = (c.n_embd, c.n_head, c.head_dim());
        let rows = batch * n;
        let head_shape = [batch, heads, n, hd];
        let block = ops::block_params(rows, n, width, heads)?;
        let attention = AttentionShape::check(&head_shape, &head_shape, &head_shape, None, None)?;
        let shapes = Shapes {
            block,
            qkv: block.with_width(3 * width)?,
            wide: block.with_width(4 * width)?,
            ln: block.with_eps(c.layer_norm_epsilon),
            dims: Dims {
                batch,
                n,
                width,
                heads,
            },
            attention,
            saobp: saobp::plan(batch * heads, heads, n, hd)?,
        };
        let t = |shape: &[usize]| Tensor::scratch(gpu, shape);
        let map = attention.map_shape();
        let layer = || -> Result<LayerActivations> {
            Ok(LayerActivations {
                ln1: t(&[rows, width])?,
                ln1_stats: t(&[rows, 2])?,
                q: t(&head_shape)?,
                k: t(&head_shape)?,
                v: t(&head_shape)?,
                a: t(&map)?,
                fused: model
                    .has_lambda
                    .then(|| {
                        Ok::<_, Error>((
                            FusedIntermediates::new(gpu, head_shape)?,
                            t(&[batch, heads, n])?,
                        ))
                    })
                    .transpose()?,
                o: t(&head_shape)?,
                merged: t(&[rows, width])?,
                ln2: t(&[rows, width])?,
                ln2_stats: t(&[rows, 2])?,
                fc: t(&[rows, 4 * width])?,
                gelu: t(&[rows, 4 * width])?,
            })
        };
        Ok(GptWorkspace {
            batch,
            n,
            width,
            has_lambda: model.has_lambda,
            specs: model.specs.clone(),
            shapes,
            xs: (0..=2 * c.n_layer)
                .map(|_| t(&[rows, width]))
                .collect::<Result<_>>()?,
            layers: (0..c.n_layer).map(|_| layer()).collect::<Result<_>>()?,
            qkv: t(&[rows, 3 * width])?,
            proj: t(&[rows, width])?,
            lnf: t(&[rows, width])?,
            lnf_stats: t(&[rows, 2])?,
            logits: t(&[rows, c.vocab_size])?,
            losses: t(&[rows])?,
            dlogits: t(&[rows, c.vocab_size])?,
            loss: t(&[1])?,
            back: BackwardBuffers {
                dres: t(&[rows, width])?,
                dc: t(&[rows, width])?,
                dwide: t(&[rows, 4 * width])?,
                dfc: t(&[rows, 4 * width])?,
                dqkv: t(&[rows, 3 * width])?,
                d_o: t(&head_shape)?,
                dq: t(&head_shape)?,
                dk: t(&head_shape)?,
                dv: t(&head_shape)?,
                da: t(&map)?,
                saobp: model
                    .has_lambda
                    .then(|| BackwardScratch::new(gpu, head_shape))
                    .transpose()?,
            },
            grads: model
                .specs
                .iter()
                .map(|s| t(&s.shape))
                .collect::<Result<_>>()?,
        })
    }

    /// Sequences per batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens per sequence.
    pub fn n(&self) -> usize {
        self.n
    }

    /// `[1]`: the mean cross-entropy of the last forward with targets.
    pub fn loss(&self) -> &Tensor {
        &self.loss
    }

    /// Reads the loss back.
    pub async fn read_loss(&self, gpu: &Gpu) -> Result<f32> {
        Ok(self.loss.to_vec(gpu).await?[0])
    }

    /// Blocking form of [`GptWorkspace::read_loss`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn loss_blocking(&self, gpu: &Gpu) -> Result<f32> {
        pollster::block_on(self.read_loss(gpu))
    }

    /// `[B·T, V]`: the logits of the last forward.
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// `[B, H, T, T]`: layer `layer`'s attention map `A` of the last forward.
    pub fn attention(&self, layer: usize) -> Option<&Tensor> {
        self.layers.get(layer).map(|l| &l.a)
    }

    /// `[B, H, T, C/H]` each: layer `layer`'s `q`, `k` and `v` of the last
    /// forward, e.g. for [`crate::attention()`] with other options.
    pub fn qkv(&self, layer: usize) -> Option<[&Tensor; 3]> {
        self.layers.get(layer).map(|l| [&l.q, &l.k, &l.v])
    }

    /// `[B, H, T]`: layer `layer`'s multi-hop mass `m` of the last forward,
    /// when the model has λ.
    pub fn multi_hop_mass(&self, layer: usize) -> Option<&Tensor> {
        self.layers.get(layer)?.fused.as_ref().map(|(_, m)| m)
    }

    /// The gradients of the last [`Gpt::forward_backward`], with their
    /// parameters' names, in [`GptConfig::parameters`] order.
    pub fn grads(&self) -> impl Iterator<Item = (&ParamSpec, &Tensor)> {
        self.specs.iter().zip(&self.grads)
    }

    /// The gradient of parameter `name`.
    pub fn grad(&self, name: &str) -> Option<&Tensor> {
        self.grads().find(|(s, _)| s.name == name).map(|(_, t)| t)
    }
}
