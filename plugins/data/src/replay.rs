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
