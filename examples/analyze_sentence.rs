//! A real model's attention on one sentence, layer by layer, with and
//! without SAOBP: all-MiniLM-L6-v2 (fetch it with `bash
//! scripts/fetch-model.sh`, or pass another BERT-family folder).
//!
//! `cargo run --release --example analyze_sentence -- [MODEL_DIR] [TEXT]`

use std::path::PathBuf;

use saobp::model::{BertModel, ForwardOptions};
use saobp::{Gpu, Lambda};

fn main() -> saobp::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or("models/all-MiniLM-L6-v2".into()));
    let text = args
        .next()
        .unwrap_or("The cat sat on the mat because it was warm.".into());

    let gpu = Gpu::from_env_blocking()?;
    let model = BertModel::load(&gpu, &dir)?;
    let encoded = model.tokenizer(&dir)?.encode(&text)?;
    println!(
        "adapter: {}\ntokens: {}",
        gpu.adapter(),
        encoded.tokens.join(" ")
    );

    let layers = model.config.num_hidden_layers;
    let opts = ForwardOptions {
        lambda: vec![Lambda::Scalar(0.5); layers],
        metrics: true,
        ..Default::default()
    };
    let out = pollster::block_on(model.forward(&gpu, std::slice::from_ref(&encoded), &opts))?;
    println!("layer  norm. entropy A → R (λ = 0.5)   GTD of R");
    for (l, layer) in out.layers.iter().enumerate() {
        let Some(m) = &layer.metrics else { continue };
        let a = m.attention.overall();
        // Every layer has λ > 0, so each is refined and measured.
        let Some(r) = m.refined.as_ref().map(|r| r.overall()) else {
            continue;
        };
        println!(
            "{l:>5}  {:.4} → {:.4}                   {:.4}",
            a.normalized_entropy, r.normalized_entropy, r.gtd
        );
    }
    Ok(())
}
