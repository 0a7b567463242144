//! ReDial conversations (`redial/train.jsonl`, `redial/test.jsonl`).
//!
//! Oddities handled: questionnaires written as an empty list `[]` instead of
//! an object, questionnaires that miss movies (→ "did not say"), `movieMentions`
//! titles that are `null`, messages without `messageId`/`timeOffset`, ids
//! written as strings or numbers, and the extra `_source` key of the training
//! file.

use crate::error::DataError;
use crate::jsonl::for_each_line;
use ecr_engine::{Feedback, Role};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::Path;

/// One message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Message {
    /// Worker id of the sender.
    #[serde(rename = "senderWorkerId", deserialize_with = "de_u64")]
    pub sender: u64,
    /// The text, movies written `@<id>`.
    pub text: String,
    /// ReDial message id, when present.
    #[serde(rename = "messageId", default)]
    pub message_id: Option<u64>,
}

/// One questionnaire answer about a movie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Answer {
    /// 1 if the movie was suggested by the recommender.
    #[serde(default)]
    pub suggested: u8,
    /// 0 not seen, 1 seen, 2 did not say.
    #[serde(default = "two")]
    pub seen: u8,
    /// 0 disliked, 1 liked, 2 did not say.
    #[serde(default = "two")]
    pub liked: u8,
}

fn two() -> u8 {
    2
}

impl Answer {
    /// The `liked` answer as feedback: 1 → liked, 0 → disliked, anything else → not said.
    pub fn feedback(&self) -> Feedback {
        match self.liked {
            1 => Feedback::Liked,
            0 => Feedback::Disliked,
            _ => Feedback::NotSaid,
        }
    }
}

/// One ReDial conversation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Conversation {
    /// `conversationId`.
    #[serde(rename = "conversationId", deserialize_with = "de_string")]
    pub id: String,
    /// The seeker's worker id.
    #[serde(rename = "initiatorWorkerId", deserialize_with = "de_u64")]
    pub initiator: u64,
    /// The recommender's worker id.
    #[serde(rename = "respondentWorkerId", deserialize_with = "de_u64")]
    pub respondent: u64,
    /// Movie id → title (null titles kept as `None`).
    #[serde(rename = "movieMentions", default, deserialize_with = "de_mentions")]
    pub movie_mentions: BTreeMap<u32, Option<String>>,
    /// The messages in order.
    pub messages: Vec<Message>,
    /// The seeker's questionnaire: movie id → answer (empty when missing).
    #[serde(rename = "initiatorQuestions", default, deserialize_with = "de_questions")]
    pub initiator_questions: BTreeMap<u32, Answer>,
    /// The recommender's questionnaire.
    #[serde(rename = "respondentQuestions", default, deserialize_with = "de_questions")]
    pub respondent_questions: BTreeMap<u32, Answer>,
}

impl Conversation {
    /// The role of a sender; `None` for a sender that is neither worker.
    pub fn role_of(&self, sender: u64) -> Option<Role> {
        if sender == self.initiator {
            Some(Role::Seeker)
        } else if sender == self.respondent {
            Some(Role::Recommender)
        } else {
            None
        }
    }

    /// The seeker's feedback on a movie; a missing answer is "not said".
    pub fn seeker_feedback(&self, movie: u32) -> Feedback {
        self.initiator_questions.get(&movie).map_or(Feedback::NotSaid, Answer::feedback)
    }
}

/// Load a ReDial split. Errors name the file and line: malformed JSON, a
/// message from a sender that is neither the seeker nor the recommender.
pub fn load_conversations(path: &Path) -> Result<Vec<Conversation>, DataError> {
    let mut out = Vec::new();
    for_each_line(path, |line, c: Conversation| {
        if let Some((i, m)) = c.messages.iter().enumerate().find(|(_, m)| c.role_of(m.sender).is_none()) {
            return Err(DataError::line(
                path,
                line,
                format!(
                    "conversation {}: message {i} is from worker {} who is neither the initiator ({}) nor the respondent ({})",
                    c.id, m.sender, c.initiator, c.respondent
                ),
            ));
        }
        out.push(c);
        Ok(())
    })?;
    Ok(out)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(n),
        NumOrStr::Str(s) => {
            s.trim().parse().map_err(|_| serde::de::Error::custom(format!("{s:?}: expected a numeric worker id")))
        }
    }
}

fn de_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => n.to_string(),
        NumOrStr::Str(s) => s,
    })
}

fn parse_key<E: serde::de::Error>(k: &str) -> Result<u32, E> {
    k.trim().parse().map_err(|_| E::custom(format!("movie id {k:?}: expected a number")))
}

fn de_mentions<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, Option<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum M {
        Map(BTreeMap<String, Option<String>>),
        List(Vec<serde_json::Value>),
    }
    match Option::<M>::deserialize(d)? {
        None => Ok(BTreeMap::new()),
        Some(M::Map(m)) => m.into_iter().map(|(k, v)| Ok((parse_key(&k)?, v))).collect(),
        Some(M::List(l)) if l.is_empty() => Ok(BTreeMap::new()),
        Some(M::List(_)) => Err(serde::de::Error::custom("movieMentions: expected an object movie id → title")),
    }
}

fn de_questions<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, Answer>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Q {
        Map(BTreeMap<String, Answer>),
        List(Vec<serde_json::Value>),
    }
    match Option::<Q>::deserialize(d)? {
        None => Ok(BTreeMap::new()),
        Some(Q::Map(m)) => m.into_iter().map(|(k, v)| Ok((parse_key(&k)?, v))).collect(),
        Some(Q::List(l)) if l.is_empty() => Ok(BTreeMap::new()),
        Some(Q::List(_)) => Err(serde::de::Error::custom(
            "questionnaire: expected an object movie id → {suggested, seen, liked} (or an empty list)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questionnaire_oddities_and_feedback_mapping() {
        let line = r#"{"conversationId": 7, "initiatorWorkerId": "1", "respondentWorkerId": 2,
            "movieMentions": {"10": "A (2000)", "11": null},
            "messages": [{"senderWorkerId": 1, "text": "hi @10"}],
            "initiatorQuestions": {"10": {"suggested": 1, "seen": 0, "liked": 1}, "11": {"suggested": 1, "seen": 0, "liked": 0}, "12": {"suggested": 0, "seen": 2, "liked": 2}},
            "respondentQuestions": [], "_source": "x"}"#;
        let c: Conversation = serde_json::from_str(line).unwrap();
        assert_eq!(c.id, "7");
        assert_eq!(c.movie_mentions.get(&11), Some(&None));
        assert!(c.respondent_questions.is_empty());
        assert_eq!(c.seeker_feedback(10), Feedback::Liked);
        assert_eq!(c.seeker_feedback(11), Feedback::Disliked);
        assert_eq!(c.seeker_feedback(12), Feedback::NotSaid);
        assert_eq!(c.seeker_feedback(99), Feedback::NotSaid, "missing answers are not said");
        let empty: Conversation =
            serde_json::from_str(&line.replace(r#""initiatorQuestions": {"10""#, r#""x": {"10""#)).unwrap();
        assert_eq!(empty.seeker_feedback(10), Feedback::NotSaid);
    }

    #[test]
    fn unknown_sender_is_an_error_naming_the_line() {
        let p = std::env::temp_dir().join(format!("ecr-redial-{}.jsonl", std::process::id()));
        std::fs::write(
            &p,
            "{\"conversationId\": \"1\", \"initiatorWorkerId\": 1, \"respondentWorkerId\": 2, \"messages\": [{\"senderWorkerId\": 3, \"text\": \"x\"}]}\n",
        )
        .unwrap();
        let e = load_conversations(&p).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("worker 3"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
}
