//! ECR's global emotion co-occurrence statistics (ECR_REFERENCE.md §1.6),
//! built from training dialogues only and stored sparsely (CSR, rows L1-normalised).

use crate::instances::{ContextEntity, Dialogue, entity_occurrences};
use ecr_engine::Emotion;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How many leading labels of each occurrence take part in the match.
pub const LABELS_COMPARED: usize = 3;

/// The row-normalised co-occurrence matrix C (N × N, sparse).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CoOccurrence {
    /// Number of rows and columns (KG entity ids).
    pub n: usize,
    /// CSR row pointers (`n + 1` entries).
    pub row_ptr: Vec<usize>,
    /// Column (later entity) of each stored value.
    pub cols: Vec<u32>,
    /// Row-normalised weights.
    pub vals: Vec<f32>,
}

/// Whether two label lists share a label among their first three.
pub fn labels_match(a: &[(Emotion, f32)], b: &[(Emotion, f32)]) -> bool {
    let a = &a[..a.len().min(LABELS_COMPARED)];
    let b = &b[..b.len().min(LABELS_COMPARED)];
    a.iter().any(|(x, _)| b.iter().any(|(y, _)| x == y))
}

/// Raw counts: for every ordered pair of occurrences `i < j` of one dialogue
/// (`i` earlier; the same entity allowed) whose label lists are both
/// non-empty and share a label among their first three, `cnt[e_i][e_j] += 1`.
/// Labels come from the ECR rule with the seeker fallback.
pub fn count_pairs<'a>(dialogues: impl IntoIterator<Item = &'a Dialogue>) -> HashMap<(u32, u32), u32> {
    count_occurrence_pairs(dialogues.into_iter().map(|d| entity_occurrences(d, true)))
}

/// [`count_pairs`] over each dialogue's entity occurrences with their labels
/// (from [`crate::local_emotion::propagate`], seeker fallback included): the
/// one counting rule for segmented dialogues and for replayed engine turns.
pub fn count_occurrence_pairs(dialogues: impl IntoIterator<Item = Vec<ContextEntity>>) -> HashMap<(u32, u32), u32> {
    let mut cnt = HashMap::new();
    for occ in dialogues {
        for (i, a) in occ.iter().enumerate() {
            if a.emotions.is_empty() {
                continue;
            }
            for b in &occ[i + 1..] {
                if !b.emotions.is_empty() && labels_match(&a.emotions, &b.emotions) {
                    *cnt.entry((a.entity, b.entity)).or_insert(0) += 1;
                }
            }
        }
    }
    cnt
}

impl CoOccurrence {
    /// Build C over `n` entities from training dialogues.
    pub fn build<'a>(n: usize, train: impl IntoIterator<Item = &'a Dialogue>) -> Self {
        Self::from_counts(n, &count_pairs(train))
    }

    /// Row-normalise raw counts into CSR; entries outside `0..n` are dropped.
    pub fn from_counts(n: usize, counts: &HashMap<(u32, u32), u32>) -> Self {
        let mut entries: Vec<(u32, u32, u32)> = counts
            .iter()
            .filter(|((r, c), _)| (*r as usize) < n && (*c as usize) < n)
            .map(|(&(r, c), &v)| (r, c, v))
            .collect();
        entries.sort_unstable();
        let mut row_ptr = vec![0usize; n + 1];
        for &(r, _, _) in &entries {
            row_ptr[r as usize + 1] += 1;
        }
        for i in 0..n {
            row_ptr[i + 1] += row_ptr[i];
        }
        let cols = entries.iter().map(|e| e.1).collect();
        let mut vals: Vec<f32> = entries.iter().map(|e| e.2 as f32).collect();
        for r in 0..n {
            let row = &mut vals[row_ptr[r]..row_ptr[r + 1]];
            let sum: f32 = row.iter().sum();
            if sum > 0.0 {
                row.iter_mut().for_each(|v| *v /= sum);
            }
        }
        CoOccurrence { n, row_ptr, cols, vals }
    }

    /// Row `e`: `(column, weight)` pairs, columns ascending; empty for no counts.
    pub fn row(&self, e: u32) -> impl Iterator<Item = (u32, f32)> + '_ {
        let (a, b) = match self.row_ptr.get(e as usize..e as usize + 2) {
            Some(&[a, b]) => (a, b),
            _ => (0, 0),
        };
        self.cols[a..b].iter().copied().zip(self.vals[a..b].iter().copied())
    }

    /// Number of stored (non-zero) entries.
    pub fn nnz(&self) -> usize {
        self.cols.len()
    }

    /// Number of rows with at least one entry.
    pub fn nonempty_rows(&self) -> usize {
        self.row_ptr.windows(2).filter(|w| w[1] > w[0]).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instances::{ContextEntity, DialogueTurn, segment};
    use crate::linker::{Linker, LinkerOptions, tests::world};
    use ecr_engine::{EntityKind, EntityMention, Role};

    fn turn(role: Role, entities: &[u32], labels: &[Emotion]) -> DialogueTurn {
        DialogueTurn {
            role,
            raw_text: String::new(),
            text: String::new(),
            messages: vec![],
            movies: vec![],
            entities: entities
                .iter()
                .map(|&e| EntityMention {
                    name: e.to_string(),
                    kind: EntityKind::Entity,
                    entity: Some(e),
                    movie: None,
                    span: None,
                })
                .collect(),
            emotions: None,
            labels: labels.iter().map(|&e| (e, 0.5)).collect(),
            labels_with_fallback: labels.iter().map(|&e| (e, 0.5)).collect(),
        }
    }

    #[test]
    fn counts_ordered_pairs_sharing_a_label_among_the_first_three() {
        use Emotion::*;
        let d = Dialogue {
            split: "train".into(),
            source: "train".into(),
            conversation_id: "1".into(),
            turns: vec![
                turn(Role::Seeker, &[10, 11], &[Like]),
                turn(Role::Recommender, &[12], &[]), // gets turn 2's labels
                turn(Role::Seeker, &[10], &[Like, Happy]),
                turn(Role::Recommender, &[13], &[]), // no seeker reply: no labels, no pairs
            ],
        };
        let cnt = count_pairs([&d]);
        // Occurrences: 10[L], 11[L], 12[L,H], 10[L,H], 13[].
        let expect = HashMap::from([
            ((10, 11), 1),
            ((10, 12), 1),
            ((10, 10), 1), // same entity later: allowed
            ((11, 12), 1),
            ((11, 10), 1),
            ((12, 10), 1),
        ]);
        assert_eq!(cnt, expect);
        let c = CoOccurrence::from_counts(20, &cnt);
        assert_eq!(c.row(10).collect::<Vec<_>>(), vec![(10, 1.0 / 3.0), (11, 1.0 / 3.0), (12, 1.0 / 3.0)]);
        assert_eq!(c.row(12).collect::<Vec<_>>(), vec![(10, 1.0)]);
        assert_eq!(c.row(13).count(), 0);
        assert_eq!(c.row(99).count(), 0, "out of range rows are empty");
        assert_eq!((c.nnz(), c.nonempty_rows()), (6, 3));
        // Directional: nothing from later to earlier unless it occurs again later.
        assert!(!cnt.contains_key(&(12, 11)));
    }

    #[test]
    fn only_the_first_three_labels_are_compared() {
        use Emotion::*;
        let a: Vec<(Emotion, f32)> = [Like, Happy, Curious, Negative].iter().map(|&e| (e, 0.5)).collect();
        assert!(!labels_match(&a, &[(Negative, 0.9)]));
        assert!(labels_match(&a, &[(Grateful, 0.9), (Neutral, 0.5), (Curious, 0.2)]));
        assert!(!labels_match(&a, &[]));
        let _ = ContextEntity { entity: 0, name: String::new(), turn: 0, emotions: vec![] };
    }

    #[test]
    fn built_from_segmented_dialogues_with_the_seeker_fallback() {
        let (cat, kg) = world();
        let l = Linker::new(&cat, &kg, &LinkerOptions::default());
        let conv = crate::instances::tests_support::conversation();
        let d = segment(
            &conv,
            "train",
            "train",
            &l,
            &crate::instances::tests_support::emotions(),
            crate::instances::EMOTION_THRESHOLD,
        );
        let c = CoOccurrence::build(kg.len(), [&d]);
        // The Matrix (0, turn 0, [like, happy, like]) and Reloaded (1, turn 1, [negative]) share nothing.
        assert!(c.row(0).all(|(col, _)| col != 1));
        // Turn 0's two entities share "like": 0 → 7.
        assert!(c.row(0).any(|(col, _)| col == 7));
        for r in 0..kg.len() as u32 {
            let s: f32 = c.row(r).map(|(_, v)| v).sum();
            assert!(s == 0.0 || (s - 1.0).abs() < 1e-6, "row {r} sums to {s}");
        }
    }
}
