//! Helpers shared by the integration tests: where the fetched weights are.
#![allow(dead_code)]

use std::path::PathBuf;

/// The project's `models/` directory (`$ECR_MODELS_DIR` overrides it).
pub fn models_dir() -> PathBuf {
    std::env::var_os("ECR_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

/// The MiniLM directory; panics with what to do when the weights were not fetched.
pub fn minilm_dir() -> PathBuf {
    let d = models_dir().join(ecr_neural::text::MINILM_DIR);
    assert!(
        d.join("model.safetensors").is_file() && d.join("tokenizer.json").is_file(),
        "MiniLM weights not found in {}: run models/fetch.sh first (CI runs it before the tests)",
        d.display()
    );
    d
}

/// A fresh temporary directory for one test.
pub fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ecr-neural-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a temporary directory");
    d
}
