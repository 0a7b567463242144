//! From an engine [`Turn`] to the recommender's inputs: one function,
//! [`features_of`], for inference (`Stage::run`) and training.

use ecr_data::keys::MovieTitles;
use ecr_data::local_emotion::{propagate, view_of};
use ecr_engine::{Emotion, Role, Turn};
use std::collections::HashMap;

/// Index of the padding emotion in the emotion table (after the nine labels).
pub const PAD_EMOTION: usize = Emotion::COUNT;

/// One context entity occurrence as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// KG entity id.
    pub entity: u32,
    /// Up to three `(emotion index, probability)` (empty without emotions).
    pub emotions: Vec<(usize, f32)>,
    /// Related entities `(entity, weight)` from the global stage (empty without it).
    pub related: Vec<(u32, f32)>,
}

/// The model inputs of one turn.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Features {
    /// The last context entity occurrences, oldest first.
    pub slots: Vec<Slot>,
    /// The last context utterances (texts and roles), oldest first.
    pub utterances: Vec<(String, Role)>,
    /// KG ids of the movies mentioned anywhere in the context (for the new-items protocol).
    pub mentioned: Vec<u32>,
}

/// The features of `turn`: context entities from `turn.local_emotions` when a
/// local emotion stage wrote them (with their emotions if `emotions`), else
/// from the utterances' entities by the same ordering rule; related entities
/// from `turn.global_entities` if `global`; the last `max_utterances`
/// non-empty utterances (history, then the user utterance).
/// Utterance texts have `@<id>` written out as titles (`titles`), as people read them.
pub fn features_of(
    turn: &Turn,
    emotions: bool,
    global: bool,
    max_entities: usize,
    max_utterances: usize,
    titles: &MovieTitles,
) -> Features {
    let all: Vec<&ecr_engine::Utterance> =
        turn.history.iter().chain(std::iter::once(&turn.user)).filter(|u| !u.text.trim().is_empty()).collect();
    let views: Vec<_> = all.iter().map(|u| view_of(u, 2.0)).collect();
    let occ = propagate(&views);
    let mentioned: Vec<u32> = {
        let mut m: Vec<u32> = views.iter().flat_map(|v| v.entities.iter().filter(|e| e.2).map(|e| e.0)).collect();
        m.sort_unstable();
        m.dedup();
        m
    };
    let by_source: HashMap<u32, Vec<(u32, f32)>> = if global {
        let mut m: HashMap<u32, Vec<(u32, f32)>> = HashMap::new();
        for g in &turn.global_entities {
            m.entry(g.source).or_default().push((g.entity, g.weight));
        }
        m
    } else {
        HashMap::new()
    };
    let mut slots: Vec<Slot> = if !turn.local_emotions.is_empty() {
        turn.local_emotions
            .iter()
            .map(|e| Slot {
                entity: e.entity,
                emotions: if emotions {
                    e.emotions.iter().rev().take(3).rev().map(|(l, p)| (l.index(), *p)).collect()
                } else {
                    vec![]
                },
                related: vec![],
            })
            .collect()
    } else {
        occ.iter().map(|c| Slot { entity: c.entity, emotions: vec![], related: vec![] }).collect()
    };
    let skip = slots.len().saturating_sub(max_entities);
    slots.drain(..skip);
    for s in &mut slots {
        if let Some(r) = by_source.get(&s.entity) {
            s.related = r.clone();
        }
    }
    let skip = all.len().saturating_sub(max_utterances);
    let utterances = all[skip..].iter().map(|u| (titles.write_out(&u.text), u.role)).collect();
    Features { slots, utterances, mentioned }
}
