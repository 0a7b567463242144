//! The `Turn` record: everything ECR's stages exchange during one user turn.
//!
//! Stages communicate only through this record. Each field is typed and
//! documented; a stage declares which fields it reads and writes
//! ([`Field`]), so that a recipe can be checked before anything runs.
//! Plugin-defined values that have no field of their own go into
//! [`Turn::ext`], keyed by name.

use crate::emotion::{Emotion, EmotionDist};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Who said an utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The user looking for a movie (ReDial's "initiator").
    Seeker,
    /// The system (ReDial's "respondent").
    Recommender,
}

/// What kind of thing an entity mention refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityKind {
    /// A movie of the catalogue.
    Movie,
    /// Any other KG entity: a person, genre, company, ...
    Entity,
}

/// One entity found in an utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityMention {
    /// Display name (a movie's title with year, or the KG entity's name).
    pub name: String,
    /// Movie or other entity.
    pub kind: EntityKind,
    /// KG entity id (`kg/entity2id.json`), if the mention maps into the KG.
    #[serde(default)]
    pub entity: Option<u32>,
    /// ReDial movie id, for movies.
    #[serde(default)]
    pub movie: Option<u32>,
    /// Byte range of the mention in the utterance text, if known.
    #[serde(default)]
    pub span: Option<(usize, usize)>,
}

/// One utterance of the dialogue (a whole turn: consecutive messages of one
/// speaker are merged into one utterance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Utterance {
    /// Who said it.
    pub role: Role,
    /// The text as said (movies may be written `@<id>` in ReDial data).
    pub text: String,
    /// Entities linked in the text, in order of appearance.
    #[serde(default)]
    pub entities: Vec<EntityMention>,
    /// The speaker's emotions, if tagged (seeker utterances).
    #[serde(default)]
    pub emotions: Option<EmotionDist>,
}

impl Utterance {
    /// A new utterance with no entities or emotions yet.
    pub fn new(role: Role, text: impl Into<String>) -> Self {
        Utterance { role, text: text.into(), entities: Vec::new(), emotions: None }
    }
}

/// The user's emotions towards one context entity (ECR's *local* emotion).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityEmotion {
    /// KG entity id.
    pub entity: u32,
    /// Display name.
    pub name: String,
    /// The emotion labels attached to it with their probabilities, in the
    /// order they were attached (ECR keeps the last three).
    pub emotions: Vec<(Emotion, f32)>,
}

/// An entity related to the context through the global emotion
/// co-occurrence statistics (ECR's *global* emotion).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalEntity {
    /// KG entity id of the related entity.
    pub entity: u32,
    /// The context entity it is related to.
    pub source: u32,
    /// Row-normalised co-occurrence weight.
    pub weight: f32,
}

/// The user's feedback on an item, from the dialogue or a questionnaire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feedback {
    /// The user liked it.
    Liked,
    /// The user disliked it.
    Disliked,
    /// The user did not say.
    NotSaid,
}

/// An item with the user's feedback and the weight m(f) a feedback mapping gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemFeedback {
    /// KG entity id of the item.
    pub item: u32,
    /// The user's feedback.
    pub feedback: Feedback,
    /// The weight given by the feedback mapping; `None` until one ran.
    #[serde(default)]
    pub weight: Option<f32>,
}

/// A ranked recommendation candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// KG entity id of the item.
    pub item: u32,
    /// Display name.
    pub name: String,
    /// Model score (higher is better).
    pub score: f32,
}

/// A retrieved passage (e.g. a sentence from an emotional review).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    /// The item the passage is about.
    pub item: u32,
    /// The text.
    pub text: String,
    /// Retrieval score.
    pub score: f32,
    /// Where it came from (e.g. a review id).
    pub source: String,
}

/// A KG fact `(head, relation, tail)` with display names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    /// Head entity name.
    pub head: String,
    /// Relation name (e.g. `starring`).
    pub relation: String,
    /// Tail entity name.
    pub tail: String,
}

/// Everything ECR's stages exchange during one user turn.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Turn {
    /// Earlier utterances of this dialogue, oldest first, as the session
    /// recorded them (with their entities and emotions).
    #[serde(default)]
    pub history: Vec<Utterance>,
    /// The current user utterance; stages add its entities and emotions.
    pub user: Utterance,
    /// Per context entity: the user's emotions towards it (local emotion).
    #[serde(default)]
    pub local_emotions: Vec<EntityEmotion>,
    /// Emotion-related entities from the global co-occurrence statistics.
    #[serde(default)]
    pub global_entities: Vec<GlobalEntity>,
    /// Items with the user's feedback and their weights m(f).
    #[serde(default)]
    pub feedback: Vec<ItemFeedback>,
    /// Ranked recommendation candidates, best first.
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    /// Retrieved passages about the top candidates.
    #[serde(default)]
    pub passages: Vec<Passage>,
    /// KG facts about the top candidates.
    #[serde(default)]
    pub facts: Vec<Fact>,
    /// The generator prompt.
    #[serde(default)]
    pub prompt: Option<String>,
    /// The system's response.
    #[serde(default)]
    pub response: Option<String>,
    /// Plugin-defined values, keyed by name (declared as `ext.<name>`).
    #[serde(default)]
    pub ext: BTreeMap<String, serde_json::Value>,
}

impl Default for Utterance {
    fn default() -> Self {
        Utterance::new(Role::Seeker, "")
    }
}

impl Turn {
    /// A turn for `text` said by the seeker after `history`.
    pub fn new(history: Vec<Utterance>, text: impl Into<String>) -> Self {
        Turn { history, user: Utterance::new(Role::Seeker, text), ..Default::default() }
    }
}

/// Declares the [`Field`] enum and everything that must list the Turn's fields
/// (names, JSON access, comparison, moving a value between turns) from one
/// table, so that adding a field is one edit the compiler checks.
macro_rules! turn_fields {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal => $($path:ident).+ ; )*) => {
        /// A field of the [`Turn`] that a stage reads or writes.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Field {
            $( $(#[$doc])* $variant, )*
            /// `ext.<name>`: a plugin-defined value.
            Ext(String),
        }

        impl Field {
            /// Every fixed field, in record order (extension fields are open-ended).
            pub const FIXED: &'static [Field] = &[$(Field::$variant),*];

            /// The field's name as written in recipes and messages (`user.entities`, `ext.score`).
            pub fn name(&self) -> String {
                match self {
                    $(Field::$variant => $name.into(),)*
                    Field::Ext(n) => format!("ext.{n}"),
                }
            }

            /// The JSON value of this field in `turn` (for plugins that see JSON).
            pub fn get_json(&self, turn: &Turn) -> serde_json::Value {
                let v = match self {
                    $(Field::$variant => serde_json::to_value(&turn.$($path).+),)*
                    Field::Ext(n) => Ok(turn.ext.get(n).cloned().unwrap_or(serde_json::Value::Null)),
                };
                v.unwrap_or(serde_json::Value::Null)
            }

            /// Set this field of `turn` from a JSON value; the error says what the
            /// field expected.
            pub fn set_json(&self, turn: &mut Turn, value: serde_json::Value) -> Result<(), String> {
                fn put<T: serde::de::DeserializeOwned>(slot: &mut T, v: serde_json::Value, f: &Field) -> Result<(), String> {
                    *slot = serde_json::from_value(v).map_err(|e| format!("field {}: {e}", f.name()))?;
                    Ok(())
                }
                match self {
                    $(Field::$variant => put(&mut turn.$($path).+, value, self),)*
                    Field::Ext(n) => {
                        turn.ext.insert(n.clone(), value);
                        Ok(())
                    }
                }
            }

            /// Whether this field has the same value in `a` and `b`.
            pub fn same_in(&self, a: &Turn, b: &Turn) -> bool {
                match self {
                    $(Field::$variant => a.$($path).+ == b.$($path).+,)*
                    Field::Ext(n) => a.ext.get(n) == b.ext.get(n),
                }
            }

            /// Move this field's value from `from` into `to` (an absent
            /// extension value is removed from `to`).
            pub fn move_value(&self, from: &mut Turn, to: &mut Turn) {
                match self {
                    $(Field::$variant => to.$($path).+ = std::mem::take(&mut from.$($path).+),)*
                    Field::Ext(n) => match from.ext.remove(n) {
                        Some(v) => {
                            to.ext.insert(n.clone(), v);
                        }
                        None => {
                            to.ext.remove(n);
                        }
                    },
                }
            }
        }
    };
}

turn_fields! {
    /// [`Turn::history`].
    History = "history" => history;
    /// `user.text`.
    UserText = "user.text" => user.text;
    /// `user.entities`.
    UserEntities = "user.entities" => user.entities;
    /// `user.emotions`.
    UserEmotions = "user.emotions" => user.emotions;
    /// [`Turn::local_emotions`].
    LocalEmotions = "local_emotions" => local_emotions;
    /// [`Turn::global_entities`].
    GlobalEntities = "global_entities" => global_entities;
    /// [`Turn::feedback`].
    Feedback = "feedback" => feedback;
    /// [`Turn::candidates`].
    Candidates = "candidates" => candidates;
    /// [`Turn::passages`].
    Passages = "passages" => passages;
    /// [`Turn::facts`].
    Facts = "facts" => facts;
    /// [`Turn::prompt`].
    Prompt = "prompt" => prompt;
    /// [`Turn::response`].
    Response = "response" => response;
}

impl Field {
    /// The fields that exist before any stage runs (the session fills them).
    pub const GIVEN: [Field; 2] = [Field::History, Field::UserText];

    /// Parse a field name as written in recipes (`user.entities`, `ext.score`, ...).
    pub fn parse(s: &str) -> Result<Field, String> {
        if let Some(n) = s.strip_prefix("ext.") {
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(format!("bad extension field name {s:?}: use ext.<letters, digits, _ or ->"));
            }
            return Ok(Field::Ext(n.to_string()));
        }
        Field::FIXED.iter().find(|f| f.name() == s).cloned().ok_or_else(|| {
            let names: Vec<String> = Field::FIXED.iter().map(Field::name).collect();
            format!("unknown turn field {s:?}: expected one of {}, or ext.<name>", names.join(", "))
        })
    }

    /// The keys a turn table may have at its top level (as plugins that see the
    /// whole turn write it): the first segment of every field name, and `ext`.
    pub fn top_level_keys() -> &'static [String] {
        static KEYS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
            let mut keys: Vec<String> = Vec::new();
            for f in Field::FIXED.iter().chain([&Field::Ext(String::new())]) {
                let name = f.name();
                let top = name.split('.').next().unwrap_or_default().to_string();
                if !keys.contains(&top) {
                    keys.push(top);
                }
            }
            keys
        });
        &KEYS
    }

    /// The keys of `user` that fields name (`text`, `entities`, ...).
    pub fn user_keys() -> &'static [String] {
        static KEYS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
            Field::FIXED.iter().filter_map(|f| f.name().strip_prefix("user.").map(str::to_string)).collect()
        });
        &KEYS
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl Serialize for Field {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Field::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_round_trip() {
        for f in Field::FIXED {
            assert_eq!(&Field::parse(&f.name()).unwrap(), f);
        }
        assert_eq!(Field::parse("ext.score").unwrap(), Field::Ext("score".into()));
        assert!(Field::parse("user.mood").unwrap_err().contains("user.entities"));
        assert!(Field::parse("ext.").is_err());
    }

    #[test]
    fn key_lists_derive_from_the_field_table() {
        let top: Vec<&str> = Field::top_level_keys().iter().map(String::as_str).collect();
        assert_eq!(
            top,
            [
                "history",
                "user",
                "local_emotions",
                "global_entities",
                "feedback",
                "candidates",
                "passages",
                "facts",
                "prompt",
                "response",
                "ext"
            ]
        );
        let user: Vec<&str> = Field::user_keys().iter().map(String::as_str).collect();
        assert_eq!(user, ["text", "entities", "emotions"]);
    }

    #[test]
    fn move_and_compare_cover_every_field() {
        let mut a = Turn::new(vec![Utterance::new(Role::Recommender, "hi")], "x");
        a.prompt = Some("p".into());
        a.candidates.push(Candidate { item: 1, name: "A".into(), score: 0.5 });
        let mut b = Turn::default();
        for f in Field::FIXED {
            let before = f.same_in(&a, &b);
            let mut from = a.clone();
            f.move_value(&mut from, &mut b);
            assert!(f.same_in(&a, &b), "{f} moved");
            assert!(before || !f.same_in(&from, &a), "{f} taken out of the source");
        }
        assert_eq!(a, b);
    }

    #[test]
    fn json_get_set_round_trip_and_type_errors_name_the_field() {
        let mut t = Turn::new(vec![], "hi");
        Field::Prompt.set_json(&mut t, serde_json::json!("p")).unwrap();
        assert_eq!(t.prompt.as_deref(), Some("p"));
        assert_eq!(Field::UserText.get_json(&t), serde_json::json!("hi"));
        let e = Field::Candidates.set_json(&mut t, serde_json::json!(3)).unwrap_err();
        assert!(e.starts_with("field candidates:"), "{e}");
    }
}
