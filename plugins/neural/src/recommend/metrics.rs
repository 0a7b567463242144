//! Recommendation metrics (ECR_REFERENCE.md §5.1) under two protocols, and the
//! two non-learned baselines.
//!
//! One instance per (recommender turn, gold movie). For each instance
//! [`Outcome::of`] keeps what the metrics need from its score row:
//! * the paper's protocol: the gold item's rank among all items and its
//!   softmax probability over the item set;
//! * the new-items protocol: the movies already mentioned in the dialogue are
//!   removed from the ranking, and instances whose gold movie was mentioned
//!   are dropped.
//!
//! Recall@k, NDCG@k = 1/log2(r+2), MRR@k = 1/(r+1) for a 0-based rank r < k;
//! Recall_True@k over liked instances only; AUC as the reference computes it
//! (per evaluation batch of 32 in order: liked instances' probabilities
//! against disliked ones', ties half, mean over batches having both) and a
//! global AUC (all liked against all disliked).

use ecr_engine::Feedback;
use serde::Serialize;
use std::collections::BTreeMap;

/// The cut-offs reported.
pub const KS: [usize; 3] = [1, 10, 50];
/// The reference's evaluation batch size, which its AUC depends on.
pub const AUC_BATCH: usize = 32;

/// The headline metrics, in the order tables show them (`ecr eval`, `ecr compare`).
pub const HEADLINE: &[&str] = &[
    "recall@1",
    "recall@10",
    "recall@50",
    "recall_true@10",
    "recall_true@50",
    "auc",
    "auc_global",
    "ndcg@10",
    "mrr@10",
];

/// What the metrics need of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Outcome {
    /// The seeker's feedback on the gold movie.
    pub feedback: Feedback,
    /// 0-based rank among all items.
    pub rank: usize,
    /// Softmax probability of the gold item over all items.
    pub prob: f64,
    /// Whether the gold movie was mentioned earlier in the dialogue.
    pub mentioned: bool,
    /// 0-based rank among the items not mentioned in the dialogue.
    pub new_rank: usize,
    /// Softmax probability over the items not mentioned.
    pub new_prob: f64,
}

impl Outcome {
    /// The outcome of the score row `scores` (one per item) for the gold item
    /// at index `gold`, with the indices of the items mentioned in the dialogue.
    pub fn of(scores: &[f32], gold: usize, mentioned: &[usize], feedback: Feedback) -> Self {
        let g = scores[gold];
        let is_mentioned = |i: usize| mentioned.contains(&i);
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let (mut rank, mut new_rank, mut z, mut z_new) = (0, 0, 0f64, 0f64);
        for (i, &s) in scores.iter().enumerate() {
            let ex = ((s as f64) - max).exp();
            z += ex;
            let m = is_mentioned(i);
            if !m {
                z_new += ex;
            }
            if s > g {
                rank += 1;
                if !m {
                    new_rank += 1;
                }
            }
        }
        let eg = ((g as f64) - max).exp();
        Outcome {
            feedback,
            rank,
            prob: eg / z,
            mentioned: is_mentioned(gold),
            new_rank,
            new_prob: if z_new > 0.0 { eg / z_new } else { 0.0 },
        }
    }
}

fn auc_pairs(pos: &[f64], neg: &[f64]) -> Option<f64> {
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut s = 0f64;
    for p in pos {
        for n in neg {
            s += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(s / (pos.len() * neg.len()) as f64)
}

/// AUC as the reference computes it: per consecutive batch of `batch`
/// instances, liked against disliked probabilities; the mean over batches
/// that have both (0 when none has).
pub fn auc_per_batch(items: &[(Feedback, f64)], batch: usize) -> f64 {
    let per: Vec<f64> = items
        .chunks(batch)
        .filter_map(|c| {
            let pos: Vec<f64> = c.iter().filter(|x| x.0 == Feedback::Liked).map(|x| x.1).collect();
            let neg: Vec<f64> = c.iter().filter(|x| x.0 == Feedback::Disliked).map(|x| x.1).collect();
            auc_pairs(&pos, &neg)
        })
        .collect();
    if per.is_empty() { 0.0 } else { per.iter().sum::<f64>() / per.len() as f64 }
}

/// All liked against all disliked probabilities.
pub fn auc_global(items: &[(Feedback, f64)]) -> f64 {
    let pos: Vec<f64> = items.iter().filter(|x| x.0 == Feedback::Liked).map(|x| x.1).collect();
    let neg: Vec<f64> = items.iter().filter(|x| x.0 == Feedback::Disliked).map(|x| x.1).collect();
    auc_pairs(&pos, &neg).unwrap_or(0.0)
}

/// Every metric of `(feedback, rank, prob)` triples in evaluation order.
pub fn metrics_of(rows: &[(Feedback, usize, f64)]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let n = rows.len().max(1) as f64;
    let liked: Vec<&(Feedback, usize, f64)> = rows.iter().filter(|r| r.0 == Feedback::Liked).collect();
    for k in KS {
        m.insert(format!("recall@{k}"), rows.iter().filter(|r| r.1 < k).count() as f64 / n);
        m.insert(
            format!("recall_true@{k}"),
            liked.iter().filter(|r| r.1 < k).count() as f64 / liked.len().max(1) as f64,
        );
    }
    for k in [10, 50] {
        let ndcg: f64 = rows.iter().filter(|r| r.1 < k).map(|r| 1.0 / ((r.1 + 2) as f64).log2()).sum();
        let mrr: f64 = rows.iter().filter(|r| r.1 < k).map(|r| 1.0 / (r.1 + 1) as f64).sum();
        m.insert(format!("ndcg@{k}"), ndcg / n);
        m.insert(format!("mrr@{k}"), mrr / n);
    }
    let probs: Vec<(Feedback, f64)> = rows.iter().map(|r| (r.0, r.2)).collect();
    m.insert("auc".into(), auc_per_batch(&probs, AUC_BATCH));
    m.insert("auc_global".into(), auc_global(&probs));
    m.insert("instances".into(), rows.len() as f64);
    m.insert("liked".into(), liked.len() as f64);
    m
}

/// Both protocols: the paper's metrics at the top level and the new-items
/// ones under `new_items.` (flat keys, e.g. `new_items.recall@10`).
pub fn report(outcomes: &[Outcome]) -> BTreeMap<String, f64> {
    let paper: Vec<(Feedback, usize, f64)> = outcomes.iter().map(|o| (o.feedback, o.rank, o.prob)).collect();
    let new: Vec<(Feedback, usize, f64)> =
        outcomes.iter().filter(|o| !o.mentioned).map(|o| (o.feedback, o.new_rank, o.new_prob)).collect();
    let mut m = metrics_of(&paper);
    for (k, v) in metrics_of(&new) {
        m.insert(format!("new_items.{k}"), v);
    }
    m
}

/// Popularity: each item's number of gold mentions in the training instances.
pub fn popularity_scores(n_items: usize, train_gold: impl IntoIterator<Item = usize>) -> Vec<f32> {
    let mut s = vec![0f32; n_items];
    for g in train_gold {
        s[g] += 1.0;
    }
    s
}

/// "Repeat the last mentioned movies": the movies mentioned in the dialogue,
/// most recent first, above every other item (ranked by `popularity`).
pub fn repeat_scores(popularity: &[f32], mentioned_in_order: &[usize]) -> Vec<f32> {
    let top = popularity.iter().copied().fold(0f32, f32::max) + 1.0;
    let mut s: Vec<f32> = popularity.to_vec();
    for (age, &i) in mentioned_in_order.iter().rev().enumerate() {
        s[i] = s[i].max(top + (mentioned_in_order.len() - age) as f32);
    }
    s
}

/// The indices of the `k` highest of `scores`, highest first, ties to the lower index (as the
/// ranks of [`Outcome::of`] count them). A partial selection: no full sort of the item set.
pub fn top_items(scores: &[f32], k: usize) -> Vec<usize> {
    let by_score = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let k = k.min(order.len());
    if k == 0 {
        return vec![];
    }
    order.select_nth_unstable_by(k - 1, by_score);
    order.truncate(k);
    order.sort_by(by_score);
    order
}

/// How concentrated a model's recommendations are over a split's turns, which the recall
/// metrics do not show: a model can reach its recall by putting the same few popular movies
/// first in most turns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Concentration {
    /// Turns counted.
    pub turns: usize,
    /// How many turns each item is ranked first in.
    top1: BTreeMap<usize, usize>,
    /// The distinct items in any turn's top 10.
    top10: std::collections::BTreeSet<usize>,
}

impl Concentration {
    /// Count one turn's score row (one score per item; ties go to the lower index, as the
    /// rankings do).
    pub fn add(&mut self, scores: &[f32]) {
        let order = top_items(scores, 10);
        if order.is_empty() {
            return;
        }
        self.turns += 1;
        *self.top1.entry(order[0]).or_default() += 1;
        self.top10.extend(order);
    }

    /// `distinct_top1`, `distinct_top10`, `top1_share` (the share of turns whose first item is
    /// the most frequent first item), `top1_item` (that item's index), `top1_name` (`name` of
    /// it) and `turns`.
    pub fn report(&self, name: &dyn Fn(usize) -> String) -> serde_json::Value {
        let (item, most) =
            self.top1.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map_or((0, 0), |(&i, &n)| (i, n));
        serde_json::json!({
            "turns": self.turns,
            "distinct_top1": self.top1.len(),
            "distinct_top10": self.top10.len(),
            "top1_share": most as f64 / self.turns.max(1) as f64,
            "top1_item": item,
            "top1_name": name(item),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Feedback::*;

    #[test]
    fn concentration_counts_first_items_and_the_top_ten() {
        let mut c = Concentration::default();
        // 12 items; the first turn ranks 11, 10, ..., 2 in its top 10 and 11 first.
        let a: Vec<f32> = (0..12).map(|i| i as f32).collect();
        c.add(&a);
        c.add(&a);
        // The second kind of turn ranks 0 first, then 1..=9: items 0 and 1 join the top 10s.
        let b: Vec<f32> = (0..12).map(|i| -(i as f32)).collect();
        c.add(&b);
        let name = |i: usize| format!("item {i}");
        let r = c.report(&name);
        assert_eq!(r["turns"], 3);
        assert_eq!(r["distinct_top1"], 2);
        assert_eq!(r["distinct_top10"], 12);
        assert_eq!(r["top1_item"], 11);
        assert!((r["top1_share"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r["top1_name"], "item 11");
        // Ties: the lower index first.
        let mut t = Concentration::default();
        t.add(&[1.0, 1.0]);
        assert_eq!(t.report(&name)["top1_item"], 0);
        assert_eq!(t.report(&name)["distinct_top10"], 2);
        assert_eq!(Concentration::default().report(&name)["top1_share"], 0.0);
        // The top-k helper itself: partial, highest first, ties to the lower index, k past the end.
        assert_eq!(top_items(&[0.5, 2.0, 2.0, -1.0], 3), vec![1, 2, 0]);
        assert_eq!(top_items(&[0.5, 2.0], 5), vec![1, 0]);
        assert!(top_items(&[], 3).is_empty() && top_items(&[1.0], 0).is_empty());
    }

    #[test]
    fn ranks_and_new_items_filtering_by_hand() {
        // Items 0..5 with scores; gold = 2 (score 0.5): items 0 (0.9) and 3 (0.7) are above it.
        let s = [0.9, 0.1, 0.5, 0.7, 0.2];
        let o = Outcome::of(&s, 2, &[], Liked);
        assert_eq!((o.rank, o.new_rank, o.mentioned), (2, 2, false));
        // Item 0 mentioned: removed from the ranking under the new-items protocol.
        let o = Outcome::of(&s, 2, &[0], Liked);
        assert_eq!((o.rank, o.new_rank), (2, 1));
        let z: f64 = s.iter().map(|&x| (x as f64 - 0.9).exp()).sum();
        assert!((o.prob - (0.5f64 - 0.9).exp() / z).abs() < 1e-9);
        assert!(o.new_prob > o.prob);
        // A mentioned gold movie is dropped from the new-items protocol.
        let m = Outcome::of(&s, 0, &[0], Disliked);
        let r = report(&[o, m]);
        assert_eq!(r["recall@1"], 0.5);
        assert_eq!(r["recall@10"], 1.0);
        assert_eq!(r["new_items.instances"], 1.0);
        assert_eq!(r["new_items.recall@1"], 0.0);
        assert_eq!(r["new_items.recall@10"], 1.0);
        // NDCG@10 and MRR@10 of ranks 2 and 0: (1/log2(4) + 1)/2 and (1/3 + 1)/2.
        assert!((r["ndcg@10"] - 0.75).abs() < 1e-12);
        assert!((r["mrr@10"] - (1.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        // Recall_True counts liked instances only.
        assert_eq!(r["recall_true@1"], 0.0);
    }

    #[test]
    fn auc_per_batch_of_32_and_global_by_hand() {
        // Batch 1 (32 instances): liked 0.9, 0.3; disliked 0.5 → pairs 1 + 0 = 0.5.
        let mut v = vec![(Liked, 0.9), (Liked, 0.3), (Disliked, 0.5)];
        v.extend(std::iter::repeat_n((NotSaid, 0.0), 29));
        // Batch 2: liked 0.2, disliked 0.2 (a tie) and 0.1 → (0.5 + 1) / 2 = 0.75.
        v.extend([(Liked, 0.2), (Disliked, 0.2), (Disliked, 0.1)]);
        v.extend(std::iter::repeat_n((NotSaid, 0.0), 29));
        // Batch 3: only liked → not counted.
        v.extend(std::iter::repeat_n((Liked, 0.4), 32));
        assert!((auc_per_batch(&v, 32) - 0.625).abs() < 1e-12);
        // Global: liked {0.9, 0.3, 0.2, 0.4×32} vs disliked {0.5, 0.2, 0.1}.
        let pos = [0.9, 0.3, 0.2].into_iter().chain(std::iter::repeat_n(0.4, 32)).collect::<Vec<f64>>();
        let neg = [0.5, 0.2, 0.1];
        let mut want = 0.0;
        for p in &pos {
            for n in &neg {
                want += if p > n {
                    1.0
                } else if p == n {
                    0.5
                } else {
                    0.0
                };
            }
        }
        assert!((auc_global(&v) - want / (pos.len() * 3) as f64).abs() < 1e-12);
    }

    #[test]
    fn baselines_rank_popular_and_recent_items_first() {
        let p = popularity_scores(4, [1, 1, 3]);
        assert_eq!(p, vec![0.0, 2.0, 0.0, 1.0]);
        let r = repeat_scores(&p, &[0, 2]);
        assert!(r[2] > r[0] && r[0] > r[1] && r[1] > r[3]);
    }
}
