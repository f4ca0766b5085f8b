//! The model loader: `config.json` and the weight file's header, shapes and
//! dtypes. The input is a config (its length in the first two bytes, little
//! endian) followed by a safetensors file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use saobp::model::{check_weights, BertConfig};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let len = u16::from_le_bytes([data[0], data[1]]) as usize;
    let Some(config) = data.get(2..2 + len) else {
        return;
    };
    let weights = &data[2 + len..];
    let Ok(text) = std::str::from_utf8(config) else {
        return;
    };
    if let Ok(config) = BertConfig::from_json(text) {
        let _ = check_weights(&config, weights);
    }
});
