//! The nine user emotions of ECR and distributions over them.
//!
//! The label order is the one the reference implementation uses everywhere
//! (ECR_REFERENCE.md §2): like, curious, happy, grateful, negative, neutral,
//! nostalgia, agreement, surprise.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One of ECR's nine user emotions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Emotion {
    /// The user likes something.
    Like,
    /// The user asks or wonders about something.
    Curious,
    /// The user is happy.
    Happy,
    /// The user thanks the recommender.
    Grateful,
    /// The user dislikes something or is upset.
    Negative,
    /// No particular emotion.
    Neutral,
    /// The user remembers something fondly.
    Nostalgia,
    /// The user agrees with the recommender.
    Agreement,
    /// The user is surprised.
    Surprise,
}

impl Emotion {
    /// All labels in the reference index order.
    pub const ALL: [Emotion; 9] = [
        Emotion::Like,
        Emotion::Curious,
        Emotion::Happy,
        Emotion::Grateful,
        Emotion::Negative,
        Emotion::Neutral,
        Emotion::Nostalgia,
        Emotion::Agreement,
        Emotion::Surprise,
    ];

    /// Number of labels.
    pub const COUNT: usize = 9;

    /// Index of the label in [`Emotion::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label with index `i`, if `i < 9`.
    pub fn from_index(i: usize) -> Option<Emotion> {
        Self::ALL.get(i).copied()
    }

    /// The lowercase label name, as written in the data and in recipes.
    pub fn name(self) -> &'static str {
        match self {
            Emotion::Like => "like",
            Emotion::Curious => "curious",
            Emotion::Happy => "happy",
            Emotion::Grateful => "grateful",
            Emotion::Negative => "negative",
            Emotion::Neutral => "neutral",
            Emotion::Nostalgia => "nostalgia",
            Emotion::Agreement => "agreement",
            Emotion::Surprise => "surprise",
        }
    }
}

impl fmt::Display for Emotion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a string that names no emotion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown emotion {0:?}: expected one of like, curious, happy, grateful, negative, neutral, nostalgia, agreement, surprise"
)]
pub struct UnknownEmotion(pub String);

impl FromStr for Emotion {
    type Err = UnknownEmotion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Emotion::ALL
            .iter()
            .copied()
            .find(|e| e.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownEmotion(s.to_string()))
    }
}

/// A probability for each of the nine emotions (index order of [`Emotion::ALL`]).
///
/// Serialized as a map `{label: probability}` so that Lua scripts, dynamic
/// plugins and JSON readers see names, not indices.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EmotionDist(pub [f32; Emotion::COUNT]);

impl EmotionDist {
    /// Probability of one label.
    pub fn get(&self, e: Emotion) -> f32 {
        self.0[e.index()]
    }

    /// Set the probability of one label.
    pub fn set(&mut self, e: Emotion, p: f32) {
        self.0[e.index()] = p;
    }

    /// A distribution with all mass on one label.
    pub fn one_hot(e: Emotion) -> Self {
        let mut d = Self::default();
        d.set(e, 1.0);
        d
    }

    /// Labels ordered by decreasing probability (ties keep label order).
    pub fn ranked(&self) -> Vec<(Emotion, f32)> {
        let mut v: Vec<(Emotion, f32)> = Emotion::ALL.iter().map(|&e| (e, self.get(e))).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// The labels whose probability is strictly above `threshold`, most probable
    /// first (ECR keeps labels with p > 0.1).
    pub fn above(&self, threshold: f32) -> Vec<(Emotion, f32)> {
        self.ranked().into_iter().filter(|&(_, p)| p > threshold).collect()
    }

    /// The most probable label.
    pub fn top(&self) -> Emotion {
        self.ranked()[0].0
    }

    /// Sum of all probabilities.
    pub fn total(&self) -> f32 {
        self.0.iter().sum()
    }
}

impl Serialize for EmotionDist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m: BTreeMap<&str, f32> = Emotion::ALL.iter().map(|&e| (e.name(), self.get(e))).collect();
        m.serialize(s)
    }
}

impl<'de> Deserialize<'de> for EmotionDist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m: BTreeMap<String, f32> = BTreeMap::deserialize(d)?;
        let mut out = EmotionDist::default();
        for (k, p) in m {
            let e: Emotion = k.parse().map_err(serde::de::Error::custom)?;
            if !p.is_finite() || p < 0.0 {
                return Err(serde::de::Error::custom(format!(
                    "emotion {k:?} has probability {p}: expected a finite number >= 0"
                )));
            }
            out.set(e, p);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order_is_the_reference_order() {
        for (i, e) in Emotion::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert_eq!(e.name().parse::<Emotion>().unwrap(), *e);
        }
        assert_eq!(Emotion::ALL[4], Emotion::Negative);
        assert!("joy".parse::<Emotion>().unwrap_err().to_string().contains("joy"));
    }

    #[test]
    fn dist_serializes_as_a_named_map_and_rejects_bad_values() {
        let mut d = EmotionDist::default();
        d.set(Emotion::Like, 0.75);
        d.set(Emotion::Happy, 0.25);
        let j = serde_json::to_value(d).unwrap();
        assert_eq!(j["like"], 0.75);
        let back: EmotionDist = serde_json::from_value(j).unwrap();
        assert_eq!(back, d);
        assert_eq!(d.above(0.1), vec![(Emotion::Like, 0.75), (Emotion::Happy, 0.25)]);
        assert!(serde_json::from_str::<EmotionDist>(r#"{"joy": 1.0}"#).is_err());
        assert!(serde_json::from_str::<EmotionDist>(r#"{"like": -1.0}"#).is_err());
    }
}
