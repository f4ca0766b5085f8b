//! Walks `docs/ERRORS.md`: every documented bad input is triggered here and
//! must give the documented variant and message.

mod common;

use std::collections::BTreeMap;

use saobp::io::parse_refine_input;
use saobp::model::{check_weights, BertConfig, TextTokenizer};
use saobp::{
    attention_blocking, matmul_blocking, AttentionOptions, Error, Gpu, GpuOptions, Lambda,
    MatmulOptions, Mode, Tensor,
};

const SEED_INPUT: &[u8] = include_bytes!("../fuzz/seeds/refine_input/valid.safetensors");
const SEED_MODEL: &[u8] = include_bytes!("../fuzz/seeds/model_loader/valid.bin");

/// The seed model: (config.json text, safetensors bytes).
fn seed_model() -> (String, Vec<u8>) {
    let len = u16::from_le_bytes([SEED_MODEL[0], SEED_MODEL[1]]) as usize;
    (
        String::from_utf8(SEED_MODEL[2..2 + len].to_vec()).unwrap(),
        SEED_MODEL[2 + len..].to_vec(),
    )
}

/// A safetensors file from (name, dtype, shape, raw bytes).
fn safetensors_file(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, raw) in tensors {
        header.insert(name.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + raw.len()]}));
        data.extend_from_slice(raw);
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// Removes tensor `name` from a safetensors file (re-encoding the rest).
fn without(file: &[u8], name: &str) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(file).unwrap();
    let dtype = |d: safetensors::Dtype| format!("{d:?}");
    let kept: Vec<(String, String, Vec<usize>, Vec<u8>)> = st
        .iter()
        .filter(|(n, _)| *n != name)
        .map(|(n, t)| {
            (
                n.to_string(),
                dtype(t.dtype()),
                t.shape().to_vec(),
                t.data().to_vec(),
            )
        })
        .collect();
    let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = kept
        .iter()
        .map(|(n, d, s, r)| (n.as_str(), d.as_str(), s.clone(), r.clone()))
        .collect();
    safetensors_file(&refs)
}

fn attention_err(
    gpu: &Gpu,
    q: &[usize],
    k: &[usize],
    v: &[usize],
    opts: AttentionOptions,
) -> Error {
    let t = |s: &[usize]| Tensor::zeros(gpu, s).unwrap();
    attention_blocking(gpu, &t(q), &t(k), &t(v), &opts).unwrap_err()
}

type Trigger = Box<dyn Fn(&Gpu) -> Error>;

fn triggers() -> BTreeMap<&'static str, Trigger> {
    let qs = [1, 2, 4, 8];
    let mut t: BTreeMap<&'static str, Trigger> = BTreeMap::new();
    t.insert(
        "shape-mismatch",
        Box::new(move |g| attention_err(g, &qs, &[1, 2, 5, 8], &qs, Default::default())),
    );
    t.insert(
        "wrong-rank",
        Box::new(move |g| attention_err(g, &[2, 4, 8], &[2, 4, 8], &[2, 4, 8], Default::default())),
    );
    t.insert(
        "value-shape",
        Box::new(move |g| attention_err(g, &qs, &qs, &[1, 2, 5, 8], Default::default())),
    );
    t.insert(
        "empty-dimension",
        Box::new(|g| {
            attention_err(
                g,
                &[1, 2, 0, 8],
                &[1, 2, 0, 8],
                &[1, 2, 0, 8],
                Default::default(),
            )
        }),
    );
    let with = |opts: fn() -> AttentionOptions<'static>| -> Trigger {
        Box::new(move |g| attention_err(g, &[1, 2, 4, 8], &[1, 2, 4, 8], &[1, 2, 4, 8], opts()))
    };
    t.insert(
        "lambda-negative",
        with(|| AttentionOptions {
            lambda: Lambda::Scalar(-0.5),
            ..Default::default()
        }),
    );
    t.insert(
        "lambda-nan",
        with(|| AttentionOptions {
            lambda: Lambda::Scalar(f32::NAN),
            ..Default::default()
        }),
    );
    t.insert(
        "lambda-length",
        with(|| AttentionOptions {
            lambda: Lambda::PerHead(vec![1.0; 3]),
            ..Default::default()
        }),
    );
    t.insert(
        "scale-nonpositive",
        with(|| AttentionOptions {
            scale: Some(0.0),
            ..Default::default()
        }),
    );
    t.insert(
        "scale-nan",
        with(|| AttentionOptions {
            scale: Some(f32::INFINITY),
            ..Default::default()
        }),
    );
    t.insert(
        "streaming-map",
        with(|| AttentionOptions {
            mode: Mode::Streaming,
            metrics: true,
            ..Default::default()
        }),
    );
    t.insert(
        "streaming-width",
        Box::new(|g| {
            let wide = [1, 1, 4, saobp::kernels::flash::MAX_HEAD_DIM + 1];
            let opts = AttentionOptions {
                mode: Mode::Flash,
                ..Default::default()
            };
            attention_err(g, &wide, &wide, &wide, opts)
        }),
    );
    t.insert(
        "mask-length",
        Box::new(|g| {
            let m = Tensor::zeros(g, &[1, 5]).unwrap();
            let q = Tensor::zeros(g, &[1, 2, 4, 8]).unwrap();
            attention_blocking(
                g,
                &q,
                &q,
                &q,
                &AttentionOptions {
                    key_mask: Some(&m),
                    ..Default::default()
                },
            )
            .unwrap_err()
        }),
    );
    t.insert(
        "non-finite-input",
        Box::new(|g| {
            let q = Tensor::from_slice(g, &[1, 1, 2, 1], &[0.0, f32::NAN]).unwrap();
            let k = Tensor::zeros(g, &[1, 1, 2, 1]).unwrap();
            attention_blocking(g, &q, &k, &k, &Default::default()).unwrap_err()
        }),
    );
    t.insert(
        "matmul-inner",
        Box::new(|g| {
            matmul_blocking(
                g,
                &Tensor::zeros(g, &[2, 3]).unwrap(),
                &Tensor::zeros(g, &[4, 2]).unwrap(),
                &MatmulOptions::default(),
            )
            .unwrap_err()
        }),
    );
    t.insert(
        "data-length",
        Box::new(|g| Tensor::from_slice(g, &[2, 2], &[1.0; 3]).unwrap_err()),
    );
    t.insert(
        "over-limit",
        Box::new(|g| {
            let max = g.limits().max_storage_buffer_binding_size;
            Tensor::zeros(g, &[(max / 4 + 1) as usize]).unwrap_err()
        }),
    );
    t.insert(
        "kernel-over-limit",
        Box::new(|g| {
            // The same adapter with four storage buffers per shader stage:
            // the fused output binds six.
            let small = Gpu::new_blocking(&GpuOptions {
                limits: Some(wgpu::Limits::downlevel_defaults()),
                ..common::same_adapter(g)
            })
            .unwrap();
            let x = Tensor::from_slice(&small, &[1, 1, 4, 2], &[0.5; 8]).unwrap();
            let opts = AttentionOptions {
                mode: Mode::Fused,
                lambda: Lambda::Scalar(1.0),
                ..Default::default()
            };
            attention_blocking(&small, &x, &x, &x, &opts).unwrap_err()
        }),
    );
    t.insert(
        "not-safetensors",
        Box::new(|_| parse_refine_input(b"this is not a tensor file").unwrap_err()),
    );
    t.insert(
        "truncated-safetensors",
        Box::new(|_| parse_refine_input(&SEED_INPUT[..SEED_INPUT.len() - 5]).unwrap_err()),
    );
    t.insert(
        "header-overclaims",
        Box::new(|_| {
            // The header claims 4 GiB of data; the file holds 16 bytes.
            let h =
                br#"{"q":{"dtype":"F32","shape":[1,1,32768,32768],"data_offsets":[0,4294967296]}}"#;
            let mut f = (h.len() as u64).to_le_bytes().to_vec();
            f.extend_from_slice(h);
            f.extend([0u8; 16]);
            parse_refine_input(&f).unwrap_err()
        }),
    );
    t.insert(
        "input-missing-tensor",
        Box::new(|_| parse_refine_input(&without(SEED_INPUT, "v")).unwrap_err()),
    );
    t.insert(
        "input-wrong-dtype",
        Box::new(|_| {
            let z = vec![0u8; 32];
            let f = safetensors_file(&[
                ("q", "F64", vec![1, 1, 2, 2], z.clone()),
                ("k", "F32", vec![1, 1, 2, 2], z[..16].to_vec()),
                ("v", "F32", vec![1, 1, 2, 2], z[..16].to_vec()),
            ]);
            parse_refine_input(&f).unwrap_err()
        }),
    );
    t.insert(
        "input-mask-values",
        Box::new(|_| {
            let z = vec![0u8; 16];
            let f = safetensors_file(&[
                ("q", "F32", vec![1, 1, 2, 2], z.clone()),
                ("k", "F32", vec![1, 1, 2, 2], z.clone()),
                ("v", "F32", vec![1, 1, 2, 2], z),
                ("key_mask", "U8", vec![1, 2], vec![1, 2]),
            ]);
            parse_refine_input(&f).unwrap_err()
        }),
    );
    t.insert(
        "config-not-json",
        Box::new(|_| BertConfig::from_json("{ hidden_size: 4").unwrap_err()),
    );
    t.insert(
        "config-missing-key",
        Box::new(|_| BertConfig::from_json(r#"{"num_hidden_layers": 1}"#).unwrap_err()),
    );
    t.insert(
        "model-missing-tensor",
        Box::new(|_| {
            let (config, weights) = seed_model();
            check_weights(
                &BertConfig::from_json(&config).unwrap(),
                &without(&weights, "encoder.layer.0.output.dense.bias"),
            )
            .unwrap_err()
        }),
    );
    t.insert(
        "model-wrong-shape",
        Box::new(|_| {
            let (config, weights) = seed_model();
            let config = config.replace("\"intermediate_size\": 8", "\"intermediate_size\": 6");
            check_weights(&BertConfig::from_json(&config).unwrap(), &weights).unwrap_err()
        }),
    );
    t.insert(
        "model-truncated",
        Box::new(|_| {
            let (config, weights) = seed_model();
            check_weights(
                &BertConfig::from_json(&config).unwrap(),
                &weights[..weights.len() / 2],
            )
            .unwrap_err()
        }),
    );
    t.insert(
        "tokenizer-malformed",
        Box::new(|_| {
            let dir = common::TempDir::new("errors-tokenizer");
            let path = dir.join("tokenizer.json");
            std::fs::write(&path, r#"{"model": {"type": "WordPiece""#).unwrap();
            TextTokenizer::from_file(&path, 16).err().unwrap()
        }),
    );
    t.insert(
        "unknown-backend",
        Box::new(|_| "cuda".parse::<saobp::BackendChoice>().unwrap_err()),
    );
    t.insert(
        "device-lost",
        Box::new(|g| {
            let a = g.adapter();
            let opts = GpuOptions {
                backend: format!("{:?}", a.backend).to_lowercase().parse().unwrap(),
                adapter: Some(a.name.clone()),
                ..Default::default()
            };
            let doomed = Gpu::new_blocking(&opts).unwrap();
            doomed.destroy();
            Tensor::zeros(&doomed, &[4]).unwrap_err()
        }),
    );
    t
}

fn variant(e: &Error) -> &'static str {
    match e {
        Error::Shape(_) => "Shape",
        Error::InvalidArgument(_) => "InvalidArgument",
        Error::NonFinite { .. } => "NonFinite",
        Error::Limit { .. } => "Limit",
        Error::Input(_) => "Input",
        Error::Model(_) => "Model",
        Error::UnknownBackend(_) => "UnknownBackend",
        Error::DeviceLost(_) => "DeviceLost",
        _ => "other",
    }
}

#[test]
fn every_documented_error_is_returned_as_documented() {
    // The library's table: the CLI's tables below it have their own tests.
    let rows = common::documented_errors(None);
    assert!(rows.len() >= 20, "the table has {} rows", rows.len());
    let mut triggers = triggers();
    let gpu = &common::gpus()[0];
    for row in &rows {
        let [id, case, want_variant, needle] = &row[..] else {
            panic!("malformed row {row:?}")
        };
        let trigger = triggers
            .remove(id.as_str())
            .unwrap_or_else(|| panic!("row `{id}` has no test"));
        let e = trigger(gpu);
        let msg = e.to_string();
        assert_eq!(variant(&e), want_variant, "{id} ({case}): {msg}");
        assert!(
            msg.contains(needle.as_str()),
            "{id} ({case}): `{msg}` lacks `{needle}`"
        );
        assert!(!msg.contains('\n'), "{id}: one line");
        eprintln!("{id}: {msg}");
    }
    assert!(
        triggers.is_empty(),
        "tests without a row in docs/ERRORS.md: {:?}",
        triggers.keys().collect::<Vec<_>>()
    );
}

#[test]
fn the_fuzz_seeds_are_valid_inputs() {
    let input = parse_refine_input(SEED_INPUT).unwrap();
    assert_eq!(input.q_shape, [1, 2, 3, 2]);
    assert_eq!(input.key_mask.as_deref(), Some(&[1.0, 1.0, 0.0][..]));
    let (config, weights) = seed_model();
    check_weights(&BertConfig::from_json(&config).unwrap(), &weights).unwrap();
}
