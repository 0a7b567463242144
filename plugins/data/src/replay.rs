//! ReDial conversations as the utterances a session sees, for replaying a
//! recipe's stages over the data ([`ecr_engine::Engine::replay`],
//! [`ecr_engine::TrainContext::replay`]).

use crate::redial::Conversation;
use crate::text::html_unescape;
use ecr_engine::{Fingerprint, Role, Utterance};
use std::path::Path;

/// The turns of `conv` as a session would see them: consecutive messages of
/// one speaker merged into one utterance (joined by a space, HTML unescaped,
/// movies kept as `@<id>` for the linker), with nothing linked or tagged yet.
/// Also returns, per utterance, the indices of its messages in `messages[]`.
pub fn script(conv: &Conversation) -> (Vec<Utterance>, Vec<Vec<usize>>) {
    let mut out: Vec<Utterance> = Vec::new();
    let mut messages: Vec<Vec<usize>> = Vec::new();
    for (i, m) in conv.messages.iter().enumerate() {
        // load_conversations rejects unknown senders; treat any other as the recommender.
        let role = conv.role_of(m.sender).unwrap_or(Role::Recommender);
        let text = html_unescape(&m.text);
        match (out.last_mut(), messages.last_mut()) {
            (Some(u), Some(ids)) if u.role == role => {
                u.text.push(' ');
                u.text.push_str(&text);
                ids.push(i);
            }
            _ => {
                out.push(Utterance::new(role, text));
                messages.push(vec![i]);
            }
        }
    }
    (out, messages)
}

/// ReDial's three splits as every trainer uses them: `train.jsonl` minus the
/// validation conversations ([`crate::splits::validation_ids`] with the data
/// layer's defaults: 10%, seed 42), the validation conversations, and
/// `test.jsonl`; with a fingerprint of the two files.
pub struct RedialSplits {
    /// Training conversations.
    pub train: Vec<Conversation>,
    /// Validation conversations (model selection).
    pub valid: Vec<Conversation>,
    /// Test conversations (evaluation only).
    pub test: Vec<Conversation>,
    /// Fingerprint of `train.jsonl` and `test.jsonl`.
    pub fingerprint: String,
}

impl RedialSplits {
    /// Load the splits from the data directory, keeping the `sample` fraction
    /// of each one's conversations (`recipe.data_sample`, [`crate::splits::in_sample`];
    /// 1 keeps all). The fingerprint covers the files and the sample.
    pub fn load(dir: &Path, sample: f64) -> Result<Self, crate::DataError> {
        let train_path = crate::paths::require_file(dir, "redial/train.jsonl")?;
        let test_path = crate::paths::require_file(dir, "redial/test.jsonl")?;
        let all = crate::redial::load_conversations(&train_path)?;
        let opts = crate::PrepareOptions::default();
        let valid_ids: std::collections::HashSet<String> =
            crate::splits::validation_ids(all.iter().map(|c| c.id.as_str()), opts.valid_fraction, opts.seed)
                .into_iter()
                .map(String::from)
                .collect();
        let keep = |c: &Conversation| crate::splits::in_sample(&c.id, sample);
        let (valid, train): (Vec<_>, Vec<_>) = all.into_iter().filter(keep).partition(|c| valid_ids.contains(&c.id));
        let test = crate::redial::load_conversations(&test_path)?.into_iter().filter(keep).collect();
        Ok(RedialSplits { train, valid, test, fingerprint: Self::fingerprint(dir, sample)? })
    }

    /// The fingerprint [`RedialSplits::load`] gives, without loading the
    /// conversations (for "is it up to date?" checks).
    pub fn fingerprint(dir: &Path, sample: f64) -> Result<String, crate::DataError> {
        let train_path = crate::paths::require_file(dir, "redial/train.jsonl")?;
        let test_path = crate::paths::require_file(dir, "redial/test.jsonl")?;
        let files = files_fingerprint(&[&train_path, &test_path])?;
        Ok(if sample < 1.0 { Fingerprint::new().str(&files).str(&format!("sample {sample}")).hex() } else { files })
    }
}

/// A fingerprint of data files, to key what was computed from them.
pub fn files_fingerprint(files: &[&Path]) -> Result<String, crate::DataError> {
    let mut fp = Fingerprint::new();
    for f in files {
        fp = fp.str(&f.display().to_string()).file(f).map_err(crate::DataError::NoDataDir)?;
    }
    Ok(fp.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_messages_of_one_speaker_merge() {
        let conv: Conversation = serde_json::from_value(serde_json::json!({
            "conversationId": "1", "initiatorWorkerId": 1, "respondentWorkerId": 2, "movieMentions": {},
            "messages": [
                {"senderWorkerId": 1, "text": "hi"}, {"senderWorkerId": 1, "text": "I &amp; you"},
                {"senderWorkerId": 2, "text": "try @123"}, {"senderWorkerId": 1, "text": "ok"}
            ],
            "initiatorQuestions": {}, "respondentQuestions": {}
        }))
        .unwrap();
        let (s, ids) = script(&conv);
        let got: Vec<(Role, &str)> = s.iter().map(|u| (u.role, u.text.as_str())).collect();
        assert_eq!(got, [(Role::Seeker, "hi I & you"), (Role::Recommender, "try @123"), (Role::Seeker, "ok")]);
        assert_eq!(ids, [vec![0, 1], vec![2], vec![3]]);
    }
}
