//! ECR's training instances (ECR_REFERENCE.md §1.2-1.4): turn segmentation,
//! per-turn entities and seeker emotions, emotion propagation to entities, and
//! one recommendation instance per (recommender turn, gold movie).

use crate::annotations::message_id;
use crate::emotion_source::EmotionSource;
use crate::linker::Linker;
use crate::redial::Conversation;
use ecr_engine::{Emotion, EmotionDist, EntityMention, Feedback, Role, Turn, Utterance};
use serde::Serialize;

/// ECR's threshold for keeping an emotion label (`p > 0.1`).
pub const EMOTION_THRESHOLD: f32 = 0.1;

/// One turn: consecutive messages of one sender merged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DialogueTurn {
    /// Who spoke.
    pub role: Role,
    /// The messages joined by a space, `@<id>` kept (spans of mentions refer to this text).
    pub raw_text: String,
    /// The text with movies written out as titles, HTML unescaped, whitespace collapsed.
    pub text: String,
    /// Indices of the merged messages in the conversation's `messages[]`.
    pub messages: Vec<usize>,
    /// Movies written `@<id>` in this turn, in order (duplicates kept): the
    /// gold items of a recommender turn.
    pub movies: Vec<EntityMention>,
    /// Everything else the linker found: typed titles and KG entities.
    pub entities: Vec<EntityMention>,
    /// The seeker's emotion distribution for a seeker turn: the mean over its
    /// messages that the emotion source knows; `None` if it knows none.
    pub emotions: Option<EmotionDist>,
    /// ECR's turn labels: per message, the labels with `p > 0.1` by decreasing
    /// probability, concatenated over the messages (may exceed 2).
    pub labels: Vec<(Emotion, f32)>,
    /// The labels co-occurrence counting uses (ECR's `process.py`/`co_appear.py`):
    /// as `labels`, but a seeker message with linked entities and no label
    /// above the threshold contributes its most probable label.
    pub labels_with_fallback: Vec<(Emotion, f32)>,
}

impl DialogueTurn {
    /// KG entity ids of this turn in ECR's order: movies, then other entities;
    /// mentions that do not map into the KG are dropped.
    pub fn kg_entities(&self) -> impl Iterator<Item = (u32, &EntityMention)> {
        self.movies.iter().chain(&self.entities).filter_map(|m| m.entity.map(|e| (e, m)))
    }

    /// This turn as an engine [`Utterance`] (spans cleared: they refer to `raw_text`).
    pub fn utterance(&self) -> Utterance {
        let mut entities: Vec<EntityMention> = self.movies.iter().chain(&self.entities).cloned().collect();
        entities.sort_by_key(|m| m.span.map_or(usize::MAX, |s| s.0));
        for m in &mut entities {
            m.span = None;
        }
        Utterance { role: self.role, text: self.text.clone(), entities, emotions: self.emotions }
    }
}

/// A segmented conversation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dialogue {
    /// The split it belongs to (`train`, `valid`, `test`).
    pub split: String,
    /// The file it came from (`train`, `test`): the prefix of its message ids.
    pub source: String,
    /// `conversationId`.
    pub conversation_id: String,
    /// The turns.
    pub turns: Vec<DialogueTurn>,
}

/// One context entity with the user's emotions towards it (ECR §1.2-4).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContextEntity {
    /// KG entity id.
    pub entity: u32,
    /// Display name.
    pub name: String,
    /// The turn it was mentioned in.
    pub turn: usize,
    /// The emotion labels it received (all of them; ECR keeps the last 3).
    pub emotions: Vec<(Emotion, f32)>,
}

/// One recommendation instance: a recommender turn and one of its gold movies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecInstance {
    /// Index of the dialogue in its split.
    pub dialogue: usize,
    /// `conversationId`.
    pub conversation_id: String,
    /// Index of the recommender turn.
    pub turn: usize,
    /// ReDial id of the gold movie.
    pub movie: u32,
    /// KG entity id of the gold movie (the item to rank).
    pub item: u32,
    /// The seeker's feedback on it (questionnaire; missing = not said).
    pub feedback: Feedback,
    /// Entities of the previous turns, in order (duplicates kept), with emotions.
    pub context: Vec<ContextEntity>,
    /// The next seeker turn's emotion labels (ECR's `rec_weight`), if any.
    pub next_seeker_labels: Vec<(Emotion, f32)>,
}

/// Counts of what segmentation saw, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GoldCounts {
    /// Gold movie mentions (unique per turn) in recommender turns.
    pub gold: usize,
    /// Of those, the ones that map to a KG entity (and became instances).
    pub gold_in_kg: usize,
}

/// The labels ECR keeps from one distribution: `p > threshold`, most probable first.
pub fn kept_labels(d: &EmotionDist) -> Vec<(Emotion, f32)> {
    d.above(EMOTION_THRESHOLD)
}

/// Segment a conversation into turns, link every message and attach the
/// seeker's emotions. `source` is the file split used in message ids.
pub fn segment(
    conv: &Conversation,
    split: &str,
    source: &str,
    linker: &Linker,
    emotions: &dyn EmotionSource,
) -> Dialogue {
    let mut turns: Vec<DialogueTurn> = Vec::new();
    let mut dists: Vec<Vec<EmotionDist>> = Vec::new();
    for (i, msg) in conv.messages.iter().enumerate() {
        // load_conversations rejects unknown senders; treat any other as the recommender.
        let role = conv.role_of(msg.sender).unwrap_or(Role::Recommender);
        if turns.last().is_none_or(|t| t.role != role) {
            turns.push(DialogueTurn {
                role,
                raw_text: String::new(),
                text: String::new(),
                messages: Vec::new(),
                movies: Vec::new(),
                entities: Vec::new(),
                emotions: None,
                labels: Vec::new(),
                labels_with_fallback: Vec::new(),
            });
            dists.push(Vec::new());
        }
        let (turn, turn_dists) = match (turns.last_mut(), dists.last_mut()) {
            (Some(t), Some(d)) => (t, d),
            _ => continue,
        };
        let raw = crate::text::html_unescape(&msg.text);
        let offset = if turn.raw_text.is_empty() { 0 } else { turn.raw_text.len() + 1 };
        let mentions = linker.link(&raw);
        let written = linker.write_out_movies(&raw);
        let has_entities = mentions.iter().any(|m| m.entity.is_some());
        for mut m in mentions {
            let at_mention = m.span.is_some_and(|(s, _)| raw.as_bytes().get(s) == Some(&b'@'));
            m.span = m.span.map(|(s, e)| (s + offset, e + offset));
            if at_mention { turn.movies.push(m) } else { turn.entities.push(m) }
        }
        if !turn.raw_text.is_empty() {
            turn.raw_text.push(' ');
        }
        turn.raw_text.push_str(&raw);
        if !written.is_empty() {
            if !turn.text.is_empty() {
                turn.text.push(' ');
            }
            turn.text.push_str(&written);
        }
        turn.messages.push(i);
        if role == Role::Seeker
            && let Some(d) = emotions.emotions(&message_id(source, &conv.id, i), &written)
        {
            let kept = kept_labels(&d);
            if kept.is_empty() && has_entities {
                turn.labels_with_fallback.push(d.ranked()[0]);
            }
            turn.labels_with_fallback.extend(kept.iter().copied());
            turn.labels.extend(kept);
            turn_dists.push(d);
        }
    }
    for (t, ds) in turns.iter_mut().zip(&dists) {
        if !ds.is_empty() {
            let mut mean = EmotionDist::default();
            for d in ds {
                for (k, p) in mean.0.iter_mut().zip(d.0) {
                    *k += p / ds.len() as f32;
                }
            }
            t.emotions = Some(mean);
        }
    }
    Dialogue { split: split.to_string(), source: source.to_string(), conversation_id: conv.id.clone(), turns }
}

/// The labels that turn `t`'s entities receive (ECR §1.2-4): a seeker turn's
/// own labels; a recommender turn gets the next (seeker) turn's labels, or none.
/// With `fallback`, the seeker turn's `labels_with_fallback` are used
/// (co-occurrence counting only).
pub fn entity_labels(d: &Dialogue, t: usize, fallback: bool) -> Vec<(Emotion, f32)> {
    let own = |turn: &DialogueTurn| if fallback { turn.labels_with_fallback.clone() } else { turn.labels.clone() };
    match d.turns.get(t) {
        Some(turn) if turn.role == Role::Seeker => own(turn),
        Some(_) => d.turns.get(t + 1).filter(|n| n.role == Role::Seeker).map(own).unwrap_or_default(),
        None => Vec::new(),
    }
}

/// Every KG entity occurrence of the dialogue in order, with its labels.
pub fn entity_occurrences(d: &Dialogue, fallback: bool) -> Vec<ContextEntity> {
    let mut out = Vec::new();
    for (t, turn) in d.turns.iter().enumerate() {
        let labels = entity_labels(d, t, fallback);
        for (e, m) in turn.kg_entities() {
            out.push(ContextEntity { entity: e, name: m.name.clone(), turn: t, emotions: labels.clone() });
        }
    }
    out
}

/// The recommendation instances of one dialogue: one per (recommender turn,
/// distinct gold movie that maps into the KG), with the seeker's feedback.
pub fn rec_instances(conv: &Conversation, d: &Dialogue, dialogue_index: usize) -> (Vec<RecInstance>, GoldCounts) {
    let occurrences = entity_occurrences(d, false);
    let mut out = Vec::new();
    let mut counts = GoldCounts::default();
    for (t, turn) in d.turns.iter().enumerate() {
        if turn.role != Role::Recommender {
            continue;
        }
        let mut seen = Vec::new();
        let context: Vec<ContextEntity> = occurrences.iter().filter(|c| c.turn < t).cloned().collect();
        let next = d.turns.get(t + 1).filter(|n| n.role == Role::Seeker).map(|n| n.labels.clone()).unwrap_or_default();
        for m in &turn.movies {
            let Some(movie) = m.movie else { continue };
            if seen.contains(&movie) {
                continue;
            }
            seen.push(movie);
            counts.gold += 1;
            let Some(item) = m.entity else { continue };
            counts.gold_in_kg += 1;
            out.push(RecInstance {
                dialogue: dialogue_index,
                conversation_id: d.conversation_id.clone(),
                turn: t,
                movie,
                item,
                feedback: conv.seeker_feedback(movie),
                context: context.clone(),
                next_seeker_labels: next.clone(),
            });
        }
    }
    (out, counts)
}

impl Dialogue {
    /// The engine [`Turn`] the recommender sees for turn `t`: the earlier
    /// turns as history; the last of them, if it is the seeker's, as the
    /// current user utterance.
    pub fn turn_before(&self, t: usize) -> Turn {
        let mut history: Vec<Utterance> =
            self.turns[..t.min(self.turns.len())].iter().map(DialogueTurn::utterance).collect();
        let user = match history.last() {
            Some(u) if u.role == Role::Seeker => history.pop().unwrap_or_default(),
            _ => Utterance::new(Role::Seeker, ""),
        };
        Turn { history, user, ..Default::default() }
    }
}
