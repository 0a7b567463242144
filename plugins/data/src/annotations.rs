//! The LLM emotion annotations of seeker messages (`emotion/annotations_*.jsonl`).
//!
//! Each line: `id` = `"<split>:<conversationId>:<message index in messages[]>"`,
//! `context` (up to two previous messages), `utterance`, and `labels` (1-2 of
//! the nine emotions, most salient first).

use crate::error::DataError;
use crate::jsonl::for_each_line;
use ecr_engine::Emotion;
use serde::Deserialize;
use std::path::Path;

/// One annotated seeker message.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// The full id, `"<split>:<conversationId>:<message index>"`.
    pub id: String,
    /// The split part of the id (`train` or `test`).
    pub split: String,
    /// The ReDial `conversationId`.
    pub conversation_id: String,
    /// Index of the message in the conversation's `messages[]`.
    pub message_index: usize,
    /// Up to two previous messages, prefixed `SEEKER: ` / `RECOMMENDER: `.
    pub context: Vec<String>,
    /// The annotated message text (movies written out).
    pub utterance: String,
    /// One or two labels, most salient first.
    pub labels: Vec<Emotion>,
}

#[derive(Deserialize)]
struct RawAnnotation {
    id: String,
    #[serde(default)]
    context: Vec<String>,
    utterance: String,
    labels: Vec<String>,
}

/// Split an id `"<split>:<conversationId>:<message index>"` into its parts.
pub fn parse_message_id(id: &str) -> Option<(&str, &str, usize)> {
    let mut it = id.splitn(3, ':');
    let split = it.next().filter(|s| !s.is_empty())?;
    let conv = it.next().filter(|s| !s.is_empty())?;
    let idx = it.next()?.parse().ok()?;
    Some((split, conv, idx))
}

/// The id of a ReDial message as used by annotations and emotion files.
pub fn message_id(split: &str, conversation_id: &str, message_index: usize) -> String {
    format!("{split}:{conversation_id}:{message_index}")
}

/// Load an annotation file. Errors name the file and the line: malformed
/// JSON, a malformed id, an unknown label, or a label count other than 1-2.
pub fn load_annotations(path: &Path) -> Result<Vec<Annotation>, DataError> {
    let mut out = Vec::new();
    for_each_line(path, |line, raw: RawAnnotation| {
        let (split, conv, idx) = parse_message_id(&raw.id).ok_or_else(|| {
            DataError::line(
                path,
                line,
                format!("id {:?}: expected \"<split>:<conversationId>:<message index>\"", raw.id),
            )
        })?;
        if raw.labels.is_empty() || raw.labels.len() > 2 {
            return Err(DataError::line(
                path,
                line,
                format!("id {}: {} labels {:?}: expected 1 or 2", raw.id, raw.labels.len(), raw.labels),
            ));
        }
        let labels = raw
            .labels
            .iter()
            .map(|l| l.parse::<Emotion>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DataError::line(path, line, format!("id {}: {e}", raw.id)))?;
        out.push(Annotation {
            split: split.to_string(),
            conversation_id: conv.to_string(),
            message_index: idx,
            id: raw.id,
            context: raw.context,
            utterance: raw.utterance,
            labels,
        });
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("ecr-ann-{}-{name}.jsonl", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn loads_labels_in_order_and_splits_the_id() {
        let p = write(
            "ok",
            "{\"id\": \"train:395:2\", \"context\": [\"SEEKER: hi\"], \"utterance\": \"x\", \"labels\": [\"like\", \"happy\"]}\n\n",
        );
        let a = load_annotations(&p).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].split.as_str(), a[0].conversation_id.as_str(), a[0].message_index), ("train", "395", 2));
        assert_eq!(a[0].labels, vec![Emotion::Like, Emotion::Happy]);
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let good = "{\"id\": \"train:1:0\", \"utterance\": \"x\", \"labels\": [\"like\"]}\n";
        for (name, bad, needle) in [
            ("label", "{\"id\": \"train:1:1\", \"utterance\": \"x\", \"labels\": [\"joy\"]}", "joy"),
            ("count", "{\"id\": \"train:1:1\", \"utterance\": \"x\", \"labels\": []}", "expected 1 or 2"),
            (
                "three",
                "{\"id\": \"t:1:1\", \"utterance\": \"x\", \"labels\": [\"like\",\"happy\",\"curious\"]}",
                "3 labels",
            ),
            ("id", "{\"id\": \"train-1\", \"utterance\": \"x\", \"labels\": [\"like\"]}", "expected \"<split>"),
            ("json", "{\"id\": \"train:1:1\", \"utterance\": 3, \"labels\": [\"like\"]}", "utterance"),
        ] {
            let p = write(name, &format!("{good}{bad}\n"));
            let e = load_annotations(&p).unwrap_err().to_string();
            assert!(e.contains(&format!("{}:2:", p.display())), "{e}");
            assert!(e.contains(needle), "{name}: {e}");
        }
    }
}
