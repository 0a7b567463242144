//! ECR's training instances (ECR_REFERENCE.md §1.2-1.4): turn segmentation,
//! per-turn entities and seeker emotions, emotion propagation to entities, and
//! one recommendation instance per (recommender turn, gold movie).

use crate::annotations::message_id;
use crate::emotion_source::EmotionSource;
use crate::linker::Linker;
use crate::redial::Conversation;
use ecr_engine::{Emotion, EmotionDist, EntityKind, EntityMention, Feedback, Role, Turn, Utterance};
use serde::Serialize;

/// ECR's default threshold for keeping an emotion label (`p > 0.1`); see
/// [`PrepareOptions::emotion_threshold`](crate::PrepareOptions::emotion_threshold).
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
pub fn kept_labels(d: &EmotionDist, threshold: f32) -> Vec<(Emotion, f32)> {
    d.above(threshold)
}

/// Segment a conversation into turns, link every message and attach the
/// seeker's emotions, keeping labels with `p > threshold` (ECR: 0.1). `source`
/// is the file split used in message ids.
pub fn segment(
    conv: &Conversation,
    split: &str,
    source: &str,
    linker: &Linker,
    emotions: &dyn EmotionSource,
    threshold: f32,
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
            let kept = kept_labels(&d, threshold);
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
    // The rule lives in `propagate`: read it off for turn `t` given one placeholder entity.
    let mut probe = views(d, fallback);
    match probe.get_mut(t) {
        Some(v) => v.entities = vec![(0, "", false)],
        None => return Vec::new(),
    }
    crate::local_emotion::propagate(&probe).into_iter().find(|c| c.turn == t).map(|c| c.emotions).unwrap_or_default()
}

/// The local-emotion rule's view of a segmented dialogue.
fn views(d: &Dialogue, fallback: bool) -> Vec<crate::local_emotion::TurnView<'_>> {
    d.turns
        .iter()
        .map(|turn| crate::local_emotion::TurnView {
            role: turn.role,
            entities: turn.kg_entities().map(|(e, m)| (e, m.name.as_str(), m.kind == EntityKind::Movie)).collect(),
            labels: if turn.role != Role::Seeker {
                Vec::new()
            } else if fallback {
                turn.labels_with_fallback.clone()
            } else {
                turn.labels.clone()
            },
        })
        .collect()
}

/// Every KG entity occurrence of the dialogue in order, with its labels
/// (ECR's rule, [`crate::local_emotion::propagate`]).
pub fn entity_occurrences(d: &Dialogue, fallback: bool) -> Vec<ContextEntity> {
    crate::local_emotion::propagate(&views(d, fallback))
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

#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) use super::tests::{conversation, emotions};
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::emotion_source::EmotionSource;
    use crate::linker::{LinkerOptions, tests::world};
    use std::collections::HashMap;

    /// Emotions by message id, for hand-written dialogues.
    pub(crate) struct Fixed(pub HashMap<String, EmotionDist>);
    impl EmotionSource for Fixed {
        fn emotions(&self, id: &str, _text: &str) -> Option<EmotionDist> {
            self.0.get(id).copied()
        }
        fn describe(&self) -> String {
            "fixed".into()
        }
    }

    pub(crate) fn dist(pairs: &[(Emotion, f32)]) -> EmotionDist {
        let mut d = EmotionDist::default();
        for &(e, p) in pairs {
            d.set(e, p);
        }
        d
    }

    /// Seeker = 1, recommender = 2. Messages: 0 S, 1 S (merged), 2 R, 3 R, 4 S, 5 R, 6 S.
    pub(crate) fn conversation() -> Conversation {
        serde_json::from_value(serde_json::json!({
            "conversationId": "9", "initiatorWorkerId": 1, "respondentWorkerId": 2,
            "movieMentions": {"1": "The Matrix (1999)", "2": "The Matrix Reloaded (2003)", "5": "Up (2009)"},
            "messages": [
                {"senderWorkerId": 1, "text": "Hi! I love sci-fi"},
                {"senderWorkerId": 1, "text": "like @1"},
                {"senderWorkerId": 2, "text": "Try @2 with Keanu Reeves"},
                {"senderWorkerId": 2, "text": "or @5 and @2 &amp; more"},
                {"senderWorkerId": 1, "text": "ugh, I hated the matrix reloaded"},
                {"senderWorkerId": 2, "text": "Then @5"},
                {"senderWorkerId": 1, "text": "thanks"}
            ],
            "initiatorQuestions": {"2": {"suggested": 1, "seen": 1, "liked": 0}, "5": {"suggested": 1, "seen": 0, "liked": 1}},
            "respondentQuestions": []
        }))
        .unwrap()
    }

    pub(crate) fn emotions() -> Fixed {
        use Emotion::*;
        Fixed(HashMap::from([
            ("train:9:0".to_string(), dist(&[(Like, 0.7), (Happy, 0.25), (Neutral, 0.05)])),
            ("train:9:1".to_string(), dist(&[(Like, 0.95), (Curious, 0.05)])),
            ("train:9:4".to_string(), dist(&[(Negative, 0.9), (Like, 0.1)])),
            ("train:9:6".to_string(), dist(&[(Grateful, 1.0)])),
        ]))
    }

    #[test]
    fn consecutive_messages_of_one_sender_merge_into_one_turn() {
        let (cat, kg) = world();
        let l = Linker::new(&cat, &kg, &LinkerOptions::default());
        let d = segment(&conversation(), "train", "train", &l, &emotions(), EMOTION_THRESHOLD);
        let roles: Vec<Role> = d.turns.iter().map(|t| t.role).collect();
        use Role::*;
        assert_eq!(roles, vec![Seeker, Recommender, Seeker, Recommender, Seeker]);
        assert_eq!(d.turns[0].messages, vec![0, 1]);
        assert_eq!(d.turns[0].raw_text, "Hi! I love sci-fi like @1");
        assert_eq!(d.turns[0].text, "Hi! I love sci-fi like The Matrix (1999)");
        assert_eq!(
            d.turns[1].text,
            "Try The Matrix Reloaded (2003) with Keanu Reeves or Up (2009) and The Matrix Reloaded (2003) & more"
        );
        // @-mentions are the turn's movies (duplicates kept), the rest are entities; spans point into raw_text.
        let movies: Vec<Option<u32>> = d.turns[1].movies.iter().map(|m| m.movie).collect();
        assert_eq!(movies, vec![Some(2), Some(5), Some(2)]);
        let (s, e) = d.turns[1].movies[1].span.unwrap();
        assert_eq!(&d.turns[1].raw_text[s..e], "@5");
        assert_eq!(d.turns[1].entities[0].name, "Keanu Reeves");
        assert_eq!(d.turns[0].entities[0].name, "Science fiction");
        // Typed title in a seeker turn is an entity mention of the movie, not a gold @-mention.
        assert_eq!(d.turns[2].entities[0].movie, Some(2));
        assert!(d.turns[2].movies.is_empty());
    }

    #[test]
    fn seeker_labels_threshold_and_concatenate_over_messages() {
        let (cat, kg) = world();
        let l = Linker::new(&cat, &kg, &LinkerOptions::default());
        let d = segment(&conversation(), "train", "train", &l, &emotions(), EMOTION_THRESHOLD);
        use Emotion::*;
        // p > 0.1 only (0.05 and 0.1 dropped), most probable first, messages concatenated.
        assert_eq!(d.turns[0].labels, vec![(Like, 0.7), (Happy, 0.25), (Like, 0.95)]);
        assert_eq!(d.turns[2].labels, vec![(Negative, 0.9)]);
        assert!(d.turns[1].labels.is_empty() && d.turns[1].emotions.is_none(), "recommender turns carry no emotions");
        let mean = d.turns[0].emotions.unwrap();
        assert!((mean.get(Like) - 0.825).abs() < 1e-6);
        // The threshold is a parameter (the tagger stage's `threshold`), not fixed at 0.1.
        let strict = segment(&conversation(), "train", "train", &l, &emotions(), 0.5);
        assert_eq!(strict.turns[0].labels, vec![(Like, 0.7), (Like, 0.95)]);
    }

    #[test]
    fn emotions_propagate_to_entities_by_the_ecr_rule() {
        let (cat, kg) = world();
        let l = Linker::new(&cat, &kg, &LinkerOptions::default());
        let d = segment(&conversation(), "train", "train", &l, &emotions(), EMOTION_THRESHOLD);
        use Emotion::*;
        // Seeker turn: its own labels. Recommender turn: the next seeker turn's labels.
        assert_eq!(entity_labels(&d, 0, false), d.turns[0].labels);
        assert_eq!(entity_labels(&d, 1, false), vec![(Negative, 0.9)]);
        assert_eq!(entity_labels(&d, 3, false), vec![(Grateful, 1.0)]);
        let occ = entity_occurrences(&d, false);
        let got: Vec<(u32, usize)> = occ.iter().map(|c| (c.entity, c.turn)).collect();
        // Turn 0: movie The Matrix (0) then Science fiction (7); turn 1: movies first (Reloaded twice; Up has no
        // KG entity), then Keanu Reeves (3); turn 2: the typed Reloaded.
        assert_eq!(got, vec![(0, 0), (7, 0), (1, 1), (1, 1), (3, 1), (1, 2)]);
        assert!(occ.iter().filter(|c| c.turn == 1).all(|c| c.emotions == vec![(Negative, 0.9)]));
        // A last recommender turn with no seeker reply gives nothing.
        let mut short = d.clone();
        short.turns.truncate(4);
        assert!(entity_labels(&short, 3, false).is_empty());
    }

    #[test]
    fn seeker_fallback_label_only_for_messages_with_entities() {
        let (cat, kg) = world();
        let l = Linker::new(&cat, &kg, &LinkerOptions::default());
        use Emotion::*;
        let mut emo = emotions();
        // Message 1 ("like @1") has an entity but no label above 0.1: its top label is kept for co-occurrence.
        emo.0.insert("train:9:1".into(), dist(&[(Curious, 0.1), (Like, 0.09)]));
        // Message 6 ("thanks") has no entity: no fallback.
        emo.0.insert("train:9:6".into(), dist(&[(Grateful, 0.05)]));
        let d = segment(&conversation(), "train", "train", &l, &emo, EMOTION_THRESHOLD);
        assert_eq!(d.turns[0].labels, vec![(Like, 0.7), (Happy, 0.25)]);
        assert_eq!(d.turns[0].labels_with_fallback, vec![(Like, 0.7), (Happy, 0.25), (Curious, 0.1)]);
        assert!(d.turns[4].labels_with_fallback.is_empty());
        assert_eq!(entity_labels(&d, 0, true).len(), 3);
    }

    #[test]
    fn one_instance_per_recommender_turn_and_distinct_gold_movie_with_feedback() {
        let (cat, kg) = world();
        let l = Linker::new(&cat, &kg, &LinkerOptions::default());
        let conv = conversation();
        let d = segment(&conv, "train", "train", &l, &emotions(), EMOTION_THRESHOLD);
        let (inst, counts) = rec_instances(&conv, &d, 0);
        // Turn 1: Reloaded (twice → once) and Up (no KG entity → counted, not emitted); turn 3: Up again.
        assert_eq!(counts, GoldCounts { gold: 3, gold_in_kg: 1 });
        assert_eq!(inst.len(), 1);
        let i = &inst[0];
        assert_eq!((i.turn, i.movie, i.item, i.feedback), (1, 2, 1, Feedback::Disliked));
        assert_eq!(i.context.iter().map(|c| c.entity).collect::<Vec<_>>(), vec![0, 7], "only earlier turns");
        assert_eq!(i.next_seeker_labels, vec![(Emotion::Negative, 0.9)]);
        // The engine view: history = earlier turns, user = the last seeker turn.
        let t = d.turn_before(3);
        assert_eq!(t.history.len(), 2);
        assert_eq!(t.user.text, "ugh, I hated the matrix reloaded");
        assert_eq!(t.user.entities[0].movie, Some(2));
        assert_eq!(d.turn_before(0).user.text, "");
    }

    #[test]
    fn feedback_comes_from_the_seeker_questionnaire_missing_is_not_said() {
        let (mut cat_world, kg) = (world().0, world().1);
        // Give Up a KG entity through its URI so that it yields instances.
        let mut movies = cat_world.movies().to_vec();
        movies
            .iter_mut()
            .filter(|m| m.id == 5)
            .for_each(|m| m.dbpedia = Some("<http://dbpedia.org/resource/Comedy>".into()));
        cat_world = Catalogue::from_movies(movies);
        let l = Linker::new(&cat_world, &kg, &LinkerOptions::default());
        let mut conv = conversation();
        let d = segment(&conv, "train", "train", &l, &emotions(), EMOTION_THRESHOLD);
        let fb = |conv: &Conversation| -> Vec<(usize, u32, Feedback)> {
            rec_instances(conv, &d, 0).0.iter().map(|i| (i.turn, i.movie, i.feedback)).collect()
        };
        assert_eq!(fb(&conv), vec![(1, 2, Feedback::Disliked), (1, 5, Feedback::Liked), (3, 5, Feedback::Liked)]);
        conv.initiator_questions.remove(&5);
        conv.initiator_questions.get_mut(&2).unwrap().liked = 2;
        assert_eq!(fb(&conv), vec![(1, 2, Feedback::NotSaid), (1, 5, Feedback::NotSaid), (3, 5, Feedback::NotSaid)]);
    }

    use crate::catalogue::Catalogue;
}
