//! Labelling everything: the trained tagger's emotions for every seeker
//! message of `redial/train.jsonl` and `redial/test.jsonl`, written once as a
//! JSON Lines file that the data layer reads as an emotion source
//! ([`ecr_data::EmotionFile`]), so recommendation training never re-runs the tagger.

use crate::cache::EmbeddingCache;
use crate::error::Result;
use crate::stage::apply_threshold;
use crate::tagger::{EmotionTagger, TaggerInput};
use ecr_data::annotations::message_id;
use ecr_data::catalogue::Catalogue;
use ecr_data::kg::Kg;
use ecr_data::linker::{Linker, LinkerOptions};
use ecr_data::redial::load_conversations;
use ecr_data::{EmotionFile, paths::require_file};
use ecr_engine::{EmotionDist, Role};
use std::path::Path;
use std::time::Instant;

/// One seeker message to label.
#[derive(Debug, Clone, PartialEq)]
pub struct SeekerMessage {
    /// `"<split>:<conversationId>:<message index>"`.
    pub id: String,
    /// The message and its context, movies written out.
    pub input: TaggerInput,
}

/// Every seeker message of the ReDial file `file` (split name `split`), movies
/// written out, with the two previous messages as context (the annotation format).
pub fn seeker_messages(data_dir: &Path, split: &str, file: &str) -> Result<Vec<SeekerMessage>> {
    let redial = data_dir.join("redial");
    let catalogue = Catalogue::load(&redial)?;
    let kg = Kg::load(&data_dir.join("kg"))?;
    let opts = LinkerOptions { titles: false, entities: false, aliases: false, ..Default::default() };
    let linker = Linker::new(&catalogue, &kg, &opts);
    let path = require_file(data_dir, &format!("redial/{file}"))?;
    let mut out = Vec::new();
    for conv in load_conversations(&path)? {
        let written: Vec<(Option<Role>, String)> =
            conv.messages.iter().map(|m| (conv.role_of(m.sender), linker.write_out_movies(&m.text))).collect();
        for (i, (role, text)) in written.iter().enumerate() {
            if *role != Some(Role::Seeker) {
                continue;
            }
            let context = written[i.saturating_sub(2)..i]
                .iter()
                .map(|(r, t)| format!("{}: {t}", if *r == Some(Role::Seeker) { "SEEKER" } else { "RECOMMENDER" }))
                .collect();
            out.push(SeekerMessage {
                id: message_id(split, &conv.id, i),
                input: TaggerInput { utterance: text.clone(), context },
            });
        }
    }
    Ok(out)
}

/// What labelling did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LabelSummary {
    /// Messages labelled.
    pub messages: usize,
    /// Wall time in seconds (reading, embedding, predicting, writing).
    pub seconds: f64,
}

/// Label every seeker message of ReDial's train and test files with `tagger`
/// and write them to `out` (labels at or below `threshold` set to 0).
pub fn label_redial(
    tagger: &EmotionTagger,
    cache_dir: Option<&Path>,
    data_dir: &Path,
    out: &Path,
    threshold: f32,
    progress: bool,
) -> Result<LabelSummary> {
    let t0 = Instant::now();
    let _span = tracing::info_span!("label_redial").entered();
    let mut messages = seeker_messages(data_dir, "train", "train.jsonl")?;
    messages.extend(seeker_messages(data_dir, "test", "test.jsonl")?);
    let inputs: Vec<TaggerInput> = messages.iter().map(|m| m.input.clone()).collect();
    let mut cache = cache_dir.map(|d| EmbeddingCache::for_encoder(d, tagger.encoder())).transpose()?;
    let probs = tagger.predict_probs(&inputs, cache.as_mut(), progress)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| crate::NeuralError::io(dir, e))?;
    }
    let rows = messages.iter().zip(probs).map(|(m, p)| (m.id.as_str(), apply_threshold(EmotionDist(p), threshold)));
    EmotionFile::write(out, rows)?;
    Ok(LabelSummary { messages: messages.len(), seconds: t0.elapsed().as_secs_f64() })
}
