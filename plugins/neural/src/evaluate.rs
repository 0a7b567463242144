//! Evaluating the emotion tagger on an annotation file, next to the two
//! baselines (majority label, nearest prototype), all scored by
//! [`crate::metrics::evaluate`].

use crate::baselines::{Prototypes, majority};
use crate::cache::{EmbeddingCache, embed_cached};
use crate::error::Result;
use crate::metrics::{EmotionMetrics, evaluate, report};
use crate::tagger::EmotionTagger;
use crate::text::TextEncoder;
use crate::train::input_of;
use ecr_data::Annotation;
use ecr_engine::Emotion;
use serde::Serialize;
use std::path::Path;

/// The tagger's metrics on one file, with the baselines'.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The evaluated file (set by the caller).
    pub file: String,
    /// The tagger's metrics (flattened: `recall@1`, `recall@2`, ... at the top level).
    #[serde(flatten)]
    pub tagger: EmotionMetrics,
    /// The baselines' metrics: `majority` and `prototype`.
    pub baselines: std::collections::BTreeMap<String, EmotionMetrics>,
}

impl EvalReport {
    /// The plain-text table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, &EmotionMetrics)> = vec![("emotion tagger", &self.tagger)];
        if let Some(m) = self.baselines.get("prototype") {
            rows.push(("nearest prototype (MiniLM)", m));
        }
        if let Some(m) = self.baselines.get("majority") {
            rows.push(("majority label", m));
        }
        format!(
            "{} ({} utterances, {} gold labels)\n{}",
            self.file,
            self.tagger.n,
            self.tagger.gold_labels,
            report(&rows)
        )
    }
}

/// Evaluate `tagger` on `test` (embeddings cached under `cache_dir`); the baselines are fitted on `train` (label
/// counts and utterance-embedding prototypes; nothing is trained).
pub fn evaluate_file(
    tagger: &EmotionTagger,
    base: &TextEncoder,
    cache_dir: Option<&Path>,
    train: &[Annotation],
    test: &[Annotation],
    threshold: f32,
    progress: bool,
) -> Result<EvalReport> {
    let _span = tracing::info_span!("evaluate_emotion_tagger", n = test.len()).entered();
    let gold: Vec<Vec<Emotion>> = test.iter().map(|a| a.labels.clone()).collect();
    let inputs: Vec<_> = test.iter().map(input_of).collect();
    let mut cache = cache_dir.map(|d| EmbeddingCache::for_encoder(d, tagger.encoder())).transpose()?;
    let probs = tagger.predict_probs(&inputs, cache.as_mut(), progress)?;
    let tagger_metrics = evaluate(&probs, &gold, threshold);

    let train_gold: Vec<Vec<Emotion>> = train.iter().map(|a| a.labels.clone()).collect();
    let prior = majority(&train_gold);
    let majority_metrics = evaluate(&vec![prior; test.len()], &gold, threshold);

    // The prototype baseline uses the base MiniLM, untouched by training.
    let enc = base;
    let mut cache = cache_dir.map(|d| EmbeddingCache::for_encoder(d, base)).transpose()?;
    let train_texts: Vec<&str> = train.iter().map(|a| a.utterance.as_str()).collect();
    let test_texts: Vec<&str> = test.iter().map(|a| a.utterance.as_str()).collect();
    let train_vecs = embed_cached(enc, cache.as_mut(), &train_texts, progress)?;
    let test_vecs = embed_cached(enc, cache.as_mut(), &test_texts, progress)?;
    let protos = Prototypes::fit(&train_vecs, &train_gold);
    let proto_probs: Vec<_> = test_vecs.iter().map(|v| protos.predict(v)).collect();
    let proto_metrics = evaluate(&proto_probs, &gold, threshold);

    Ok(EvalReport {
        file: String::new(),
        tagger: tagger_metrics,
        baselines: [("majority".to_string(), majority_metrics), ("prototype".to_string(), proto_metrics)]
            .into_iter()
            .collect(),
    })
}
