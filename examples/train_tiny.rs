//! Gradients on the GPU: a tiny GPT with a learned λ per head memorizes one
//! line of text with AdamW. Every step (forward, backward, optimizer) stays on
//! the GPU; only the loss and λ are read back to print.
//!
//! `cargo run --release --example train_tiny`

use saobp::kernels::gpt::TokenIds;
use saobp::kernels::optim::{lr_at, AdamW, AdamWOptions};
use saobp::model::{Gpt, GptConfig};
use saobp::Gpu;

fn main() -> saobp::Result<()> {
    let gpu = Gpu::from_env_blocking()?;
    println!("adapter: {}", gpu.adapter());
    let text = "to be, or not to be, that is the question: whether 'tis nobler in the mind";
    // Characters are the vocabulary, ids their rank.
    let mut vocab: Vec<char> = text.chars().collect();
    vocab.sort_unstable();
    vocab.dedup();
    let ids: Vec<u32> = text
        .chars()
        .map(|c| vocab.binary_search(&c).unwrap_or(0) as u32)
        .collect();
    let n = ids.len() - 1;
    let config = GptConfig {
        vocab_size: vocab.len(),
        n_positions: n,
        n_embd: 32,
        n_layer: 2,
        n_head: 2,
        layer_norm_epsilon: 1e-5,
    };
    // λ starts at 0.1 in every head and is learned with the rest.
    let model = Gpt::init(&gpu, config.clone(), 7, Some(&[vec![0.1; 2], vec![0.1; 2]]))?;
    let inputs = TokenIds::new(&gpu, &ids[..n], 1, n, vocab.len())?;
    let targets = TokenIds::new(&gpu, &ids[1..], 1, n, vocab.len())?;
    let ws = model.workspace(&gpu, 1, n)?;

    let shapes: Vec<_> = model
        .parameters()
        .map(|(spec, _)| (spec.shape.as_slice(), spec.group))
        .collect();
    let mut adamw = AdamW::new(&gpu, &shapes, AdamWOptions::default())?;
    let params: Vec<_> = model.parameters().map(|(_, p)| p).collect();
    let grads: Vec<_> = ws.grads().map(|(_, g)| g).collect();
    let steps = 300;
    for step in 0..steps {
        model.forward_backward_blocking(&gpu, &ws, &inputs, &targets)?;
        if step % 50 == 0 || step == steps - 1 {
            let loss = ws.loss_blocking(&gpu)?;
            let lambda = model
                .parameter("transformer.h.1.attn.saobp_lambda")
                .map(|l| l.to_vec_blocking(&gpu))
                .transpose()?
                .unwrap_or_default();
            println!("step {step:>3}  loss {loss:.4}  λ of layer 1 {lambda:.3?}");
        }
        adamw.step_blocking(&gpu, &params, &grads, lr_at(step, steps, 3e-3))?;
    }
    Ok(())
}
