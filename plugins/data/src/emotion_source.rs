//! Pluggable sources of the seeker's emotion distribution per ReDial message.
//!
//! Messages are identified like the annotation ids:
//! `"<split>:<conversationId>:<message index in messages[]>"`. Sources:
//!
//! * [`EmotionTable`], from the LLM annotations (`emotion/annotations_*.jsonl`):
//!   one label becomes probability 1, two labels `primary`/`1 - primary`
//!   (default 0.6/0.4, so the most salient label ranks first);
//! * [`EmotionTable`], from a file of emotion-tagger outputs, one JSON object per
//!   line and per seeker message:
//!   `{"id": "train:395:2", "emotions": {"like": 0.8, "happy": 0.15, ...}}`
//!   (labels are the nine emotion names; missing labels are 0; probabilities
//!   must be finite and >= 0; a repeated id is an error).
//! * [`FirstOf`]: the first source that knows the message (e.g. annotations,
//!   then the tagger).

use crate::annotations::{Annotation, parse_message_id};
use crate::error::DataError;
use crate::jsonl::for_each_line;
use ecr_engine::EmotionDist;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// Gives the seeker's emotion distribution of a ReDial message.
pub trait EmotionSource: Send + Sync {
    /// The distribution for the message `id` (`"<split>:<conv>:<index>"`)
    /// whose text is `text`; `None` if this source has nothing for it.
    fn emotions(&self, id: &str, text: &str) -> Option<EmotionDist>;

    /// A short description for logs and reports.
    fn describe(&self) -> String;
}

/// Emotion distributions by message id: the one table behind both kinds of
/// source, the LLM annotations ([`EmotionTable::from_annotations`],
/// [`EmotionTable::load_annotations`]) and a file of tagger outputs
/// ([`EmotionTable::load`], written by [`EmotionTable::write`]).
#[derive(Debug, Clone, Default)]
pub struct EmotionTable {
    by_id: HashMap<String, EmotionDist>,
    /// What the table was read from, for [`EmotionSource::describe`].
    origin: String,
}

/// Default probability of the first label when a message has two.
pub const DEFAULT_PRIMARY: f32 = 0.6;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmotionLine {
    id: String,
    emotions: EmotionDist,
}

impl EmotionTable {
    /// The table of loaded annotations; with two labels the first gets
    /// `primary` and the second `1 - primary` (`primary` in `[0.5, 1]`).
    pub fn from_annotations(annotations: &[Annotation], primary: f32) -> Result<Self, DataError> {
        if !(0.5..=1.0).contains(&primary) {
            return Err(DataError::Invalid(format!(
                "primary label probability {primary}: expected a number in [0.5, 1]"
            )));
        }
        let by_id = annotations.iter().map(|a| (a.id.clone(), labels_to_dist(&a.labels, primary))).collect();
        Ok(EmotionTable { by_id, origin: "annotations".into() })
    }

    /// Load one or more annotation files with [`DEFAULT_PRIMARY`].
    pub fn load_annotations(paths: &[&Path]) -> Result<Self, DataError> {
        let mut all = Vec::new();
        for p in paths {
            all.extend(crate::annotations::load_annotations(p)?);
        }
        Self::from_annotations(&all, DEFAULT_PRIMARY)
    }

    /// Load a tagger output file (see the module docs); errors name the file and line.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let mut by_id = HashMap::new();
        for_each_line(path, |line, l: EmotionLine| {
            if parse_message_id(&l.id).is_none() {
                return Err(DataError::line(
                    path,
                    line,
                    format!("id {:?}: expected \"<split>:<conversationId>:<message index>\"", l.id),
                ));
            }
            if by_id.insert(l.id.clone(), l.emotions).is_some() {
                return Err(DataError::line(
                    path,
                    line,
                    format!("id {} appears twice: expected one line per message", l.id),
                ));
            }
            Ok(())
        })?;
        Ok(EmotionTable { by_id, origin: format!("emotion file {}", path.display()) })
    }

    /// Write distributions in the tagger output format (one line per `(id, dist)`).
    pub fn write<'a>(path: &Path, rows: impl IntoIterator<Item = (&'a str, EmotionDist)>) -> Result<(), DataError> {
        use std::io::Write;
        let f = std::fs::File::create(path).map_err(|e| DataError::io(path, e))?;
        let mut w = std::io::BufWriter::new(f);
        for (id, d) in rows {
            let line = serde_json::json!({ "id": id, "emotions": d });
            writeln!(w, "{line}").map_err(|e| DataError::io(path, e))?;
        }
        w.flush().map_err(|e| DataError::io(path, e))
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when the table has no message.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The distribution of 1-2 ordered labels: `[1]` or `[primary, 1 - primary]`.
pub fn labels_to_dist(labels: &[ecr_engine::Emotion], primary: f32) -> EmotionDist {
    let mut d = EmotionDist::default();
    match labels {
        [] => {}
        [a] => d.set(*a, 1.0),
        [a, b, ..] => {
            d.set(*b, 1.0 - primary);
            d.set(*a, primary);
        }
    }
    d
}

impl EmotionSource for EmotionTable {
    fn emotions(&self, id: &str, _text: &str) -> Option<EmotionDist> {
        self.by_id.get(id).copied()
    }
    fn describe(&self) -> String {
        format!("{} ({} messages)", self.origin, self.by_id.len())
    }
}

/// The first of several sources that knows a message.
pub struct FirstOf(pub Vec<Box<dyn EmotionSource>>);

impl EmotionSource for FirstOf {
    fn emotions(&self, id: &str, text: &str) -> Option<EmotionDist> {
        self.0.iter().find_map(|s| s.emotions(id, text))
    }
    fn describe(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|s| s.describe()).collect();
        format!("first of [{}]", parts.join(", "))
    }
}

/// No emotions at all (every message unknown).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEmotions;

impl EmotionSource for NoEmotions {
    fn emotions(&self, _id: &str, _text: &str) -> Option<EmotionDist> {
        None
    }
    fn describe(&self) -> String {
        "no emotions".into()
    }
}

/// The emotion sources for training and for test, by the project's policy.
pub struct EmotionSources {
    /// For train and valid dialogues (messages of `train.jsonl`).
    pub train: Box<dyn EmotionSource>,
    /// For test dialogues (messages of `test.jsonl`).
    pub test: Box<dyn EmotionSource>,
}

impl EmotionSources {
    /// The sources from the data directory and an
    /// optional tagger output file: with a tagger file, train/valid use the
    /// annotations first and then the tagger, and test uses the tagger alone
    /// (evaluation never sees the annotators' labels); without one, the
    /// annotations (`emotion/annotations_{train,test}.jsonl`) everywhere.
    pub fn standard(data_dir: &Path, tagger: Option<&Path>) -> Result<Self, DataError> {
        let ann = EmotionTable::load_annotations(&[
            &crate::paths::require_file(data_dir, "emotion/annotations_train.jsonl")?,
            &crate::paths::require_file(data_dir, "emotion/annotations_test.jsonl")?,
        ])?;
        Ok(match tagger {
            Some(p) => {
                let file = EmotionTable::load(p)?;
                EmotionSources {
                    train: Box::new(FirstOf(vec![Box::new(ann), Box::new(file.clone())])),
                    test: Box::new(file),
                }
            }
            None => EmotionSources { train: Box::new(ann.clone()), test: Box::new(ann) },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecr_engine::Emotion;

    #[test]
    fn two_labels_keep_their_salience_order() {
        let d = labels_to_dist(&[Emotion::Curious, Emotion::Like], 0.75);
        assert_eq!(d.above(0.1), vec![(Emotion::Curious, 0.75), (Emotion::Like, 0.25)]);
        assert_eq!(labels_to_dist(&[Emotion::Happy], 0.6).get(Emotion::Happy), 1.0);
    }

    #[test]
    fn emotion_file_round_trips_and_rejects_duplicates() {
        let p = std::env::temp_dir().join(format!("ecr-emofile-{}.jsonl", std::process::id()));
        let d = labels_to_dist(&[Emotion::Like, Emotion::Happy], 0.75);
        EmotionTable::write(&p, [("train:395:2", d)]).unwrap();
        let f = EmotionTable::load(&p).unwrap();
        assert_eq!(f.emotions("train:395:2", ""), Some(d));
        assert_eq!(f.emotions("train:395:3", ""), None);
        let chain = FirstOf(vec![Box::new(NoEmotions), Box::new(f)]);
        assert_eq!(chain.emotions("train:395:2", ""), Some(d));
        let line = r#"{"id": "train:1:1", "emotions": {"like": 1.0}}"#;
        std::fs::write(&p, format!("{line}\n{line}\n")).unwrap();
        let e = EmotionTable::load(&p).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("twice"), "{e}");
        std::fs::write(&p, "{\"id\": \"train:1:1\", \"emotions\": {\"joy\": 1.0}}\n").unwrap();
        let e = EmotionTable::load(&p).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("joy"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
}
