//! Metrics of an emotion tagger on annotated utterances.
//!
//! Definitions (gold: the 1-2 annotated labels of an utterance; ranking: the
//! nine labels by decreasing predicted probability):
//!
//! * **Recall@k** (k = 1, 2): the share of gold labels found among the top k
//!   of the ranking, micro-averaged over all gold labels of the file:
//!   `Σ_u |gold_u ∩ top_k(u)| / Σ_u |gold_u|`. With 1.24 gold labels per
//!   utterance, Recall@1 is at most about 0.81.
//! * **Top-1 accuracy**: the share of utterances whose top label is one of
//!   their gold labels.
//! * **Per-label precision/recall/F1** of the predicted label *set*: the top
//!   label, plus the second one when its probability is above the threshold
//!   (at most two labels, like the annotations).
//! * **Confusion**: gold first (most salient) label against predicted top label.

use ecr_engine::Emotion;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

const N: usize = Emotion::COUNT;

/// Precision, recall and F1 of one label.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LabelScores {
    /// Of the utterances given the label, the share that have it in gold.
    pub precision: f64,
    /// Of the utterances with the label in gold, the share given it.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Number of utterances with the label in gold.
    pub support: usize,
    /// Number of utterances given the label.
    pub predicted: usize,
}

/// All metrics of one tagger on one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmotionMetrics {
    /// Number of utterances.
    pub n: usize,
    /// Number of gold labels.
    pub gold_labels: usize,
    /// Share of gold labels found in the top 1.
    #[serde(rename = "recall@1")]
    pub recall_1: f64,
    /// Share of gold labels found in the top 2.
    #[serde(rename = "recall@2")]
    pub recall_2: f64,
    /// Share of utterances whose top label is gold.
    pub top1_accuracy: f64,
    /// The set threshold for the second label.
    pub threshold: f32,
    /// Scores per label.
    pub per_label: BTreeMap<String, LabelScores>,
    /// Macro-averaged F1 over the labels that occur in gold.
    pub macro_f1: f64,
    /// `confusion[gold first label][predicted top label]`, labels in [`Emotion::ALL`] order.
    pub confusion: Vec<Vec<usize>>,
}

/// The labels' indices ranked by decreasing probability (ties keep label
/// order): [`ecr_engine::EmotionDist::ranked`], as indices.
pub fn ranking(p: &[f32; N]) -> [usize; N] {
    let ranked = ecr_engine::EmotionDist(*p).ranked();
    std::array::from_fn(|i| ranked[i].0.index())
}

/// The predicted label set: the top label, plus the second if its probability is above `threshold`.
pub fn predicted_set(p: &[f32; N], threshold: f32) -> Vec<usize> {
    let r = ranking(p);
    if p[r[1]] > threshold { vec![r[0], r[1]] } else { vec![r[0]] }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Compute the metrics of `probs` (one distribution per utterance) against `gold`.
pub fn evaluate(probs: &[[f32; N]], gold: &[Vec<Emotion>], threshold: f32) -> EmotionMetrics {
    assert_eq!(probs.len(), gold.len(), "one prediction per utterance");
    let (mut hit1, mut hit2, mut total, mut acc) = (0, 0, 0, 0);
    let (mut tp, mut npred, mut ngold) = ([0usize; N], [0usize; N], [0usize; N]);
    let mut confusion = vec![vec![0usize; N]; N];
    for (p, g) in probs.iter().zip(gold) {
        let r = ranking(p);
        let g: Vec<usize> = g.iter().map(|e| e.index()).collect();
        total += g.len();
        hit1 += g.iter().filter(|&&l| l == r[0]).count();
        hit2 += g.iter().filter(|&&l| l == r[0] || l == r[1]).count();
        acc += usize::from(g.contains(&r[0]));
        if let Some(&first) = g.first() {
            confusion[first][r[0]] += 1;
        }
        let set = predicted_set(p, threshold);
        for &l in &set {
            npred[l] += 1;
            tp[l] += usize::from(g.contains(&l));
        }
        for &l in &g {
            ngold[l] += 1;
        }
    }
    let mut per_label = BTreeMap::new();
    let mut f1s = Vec::new();
    for e in Emotion::ALL {
        let i = e.index();
        let (precision, recall) = (ratio(tp[i], npred[i]), ratio(tp[i], ngold[i]));
        let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        if ngold[i] > 0 {
            f1s.push(f1);
        }
        per_label.insert(
            e.name().to_string(),
            LabelScores { precision, recall, f1, support: ngold[i], predicted: npred[i] },
        );
    }
    EmotionMetrics {
        n: probs.len(),
        gold_labels: total,
        recall_1: ratio(hit1, total),
        recall_2: ratio(hit2, total),
        top1_accuracy: ratio(acc, probs.len()),
        threshold,
        macro_f1: if f1s.is_empty() { 0.0 } else { f1s.iter().sum::<f64>() / f1s.len() as f64 },
        per_label,
        confusion,
    }
}

impl EmotionMetrics {
    /// The most frequent confusions (gold first label → predicted top label), largest first.
    pub fn top_confusions(&self, k: usize) -> Vec<(Emotion, Emotion, usize)> {
        let mut v: Vec<(Emotion, Emotion, usize)> = Vec::new();
        for (g, row) in self.confusion.iter().enumerate() {
            for (p, &c) in row.iter().enumerate() {
                if g != p
                    && c > 0
                    && let (Some(ge), Some(pe)) = (Emotion::from_index(g), Emotion::from_index(p))
                {
                    v.push((ge, pe, c));
                }
            }
        }
        v.sort_by_key(|x| std::cmp::Reverse(x.2));
        v.truncate(k);
        v
    }
}

/// A plain-text report: a summary table of named systems, then per-label
/// scores and the main confusions of the first system.
pub fn report(systems: &[(&str, &EmotionMetrics)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:<28} {:>9} {:>9} {:>9} {:>9}", "system", "Recall@1", "Recall@2", "top1 acc", "macro F1");
    for (name, m) in systems {
        let _ = writeln!(
            s,
            "{:<28} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
            name, m.recall_1, m.recall_2, m.top1_accuracy, m.macro_f1
        );
    }
    if let Some((name, m)) = systems.first() {
        let _ = writeln!(s, "\nper label ({name}; predicted set = top label + second if p > {}):", m.threshold);
        let _ = writeln!(
            s,
            "{:<10} {:>9} {:>9} {:>9} {:>8} {:>9}",
            "label", "precision", "recall", "F1", "support", "predicted"
        );
        for e in Emotion::ALL {
            if let Some(l) = m.per_label.get(e.name()) {
                let _ = writeln!(
                    s,
                    "{:<10} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>9}",
                    e.name(),
                    l.precision,
                    l.recall,
                    l.f1,
                    l.support,
                    l.predicted
                );
            }
        }
        let conf: Vec<String> = m.top_confusions(6).iter().map(|(g, p, c)| format!("{g}→{p} {c}")).collect();
        let _ = writeln!(s, "\nmain confusions (gold first label → predicted top label): {}", conf.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use Emotion::*;

    fn dist(pairs: &[(Emotion, f32)]) -> [f32; N] {
        let mut p = [0.0; N];
        for &(e, x) in pairs {
            p[e.index()] = x;
        }
        p
    }

    #[test]
    fn recall_is_micro_averaged_over_gold_labels() {
        let probs = vec![
            dist(&[(Like, 0.6), (Happy, 0.3), (Neutral, 0.1)]), // gold like+happy: 1 hit@1, 2 hits@2
            dist(&[(Curious, 0.5), (Neutral, 0.4)]),            // gold neutral: 0 hits@1, 1 hit@2
            dist(&[(Grateful, 0.9), (Like, 0.05)]),             // gold negative: 0, 0
        ];
        let gold = vec![vec![Like, Happy], vec![Neutral], vec![Negative]];
        let m = evaluate(&probs, &gold, 0.1);
        assert_eq!(m.gold_labels, 4);
        assert!((m.recall_1 - 0.25).abs() < 1e-12);
        assert!((m.recall_2 - 0.75).abs() < 1e-12);
        assert!((m.top1_accuracy - 1.0 / 3.0).abs() < 1e-12);
        // Predicted sets: {like, happy}, {curious, neutral}, {grateful}.
        assert_eq!(m.per_label["happy"].precision, 1.0);
        assert_eq!(m.per_label["curious"].precision, 0.0);
        assert_eq!(m.per_label["negative"].recall, 0.0);
        assert_eq!(m.confusion[Neutral.index()][Curious.index()], 1);
        assert_eq!(m.top_confusions(1)[0].2, 1);
    }
}
