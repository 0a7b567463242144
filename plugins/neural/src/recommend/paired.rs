//! Per-instance outcomes (`test_instances.jsonl`, written beside a
//! recommender's test metrics; `valid_instances.jsonl` for `ecr eval --split
//! valid`) and the paired comparison of two recipes over the same instances:
//! where one recipe ranks the gold movie in its top k and the other does not,
//! broken down by what the instance's dialogue carried
//! (feedback on the gold movie, emotional context entities, how many context
//! entities, whether the gold movie was mentioned before).
//!
//! Two recipes over the same data and linker have the same instances in the
//! same order (they come from the gold movies of the recommender turns, not
//! from the model), which [`paired`] checks before it compares.

use super::metrics::Outcome;
use ecr_engine::Feedback;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file name of the per-instance outcomes on `split` (`test_instances.jsonl`,
/// `valid_instances.jsonl`).
pub fn instances_file(split: ecr_engine::EvalSplit) -> String {
    format!("{}_instances.jsonl", split.name())
}

/// One instance (recommender turn, gold movie) of an evaluated split and how the model ranked it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The recommender turn, by its index among the evaluated split's gold turns.
    pub turn: usize,
    /// The gold movie's KG id.
    pub gold: u32,
    /// The seeker's feedback on it.
    pub feedback: Feedback,
    /// 0-based rank of the gold movie among all items.
    pub rank: usize,
    /// 0-based rank among the items not mentioned before; `None` when the gold movie was.
    pub new_rank: Option<usize>,
    /// Context entity occurrences the model saw.
    pub entities: usize,
    /// Of which carrying emotions (from the local emotion stage).
    pub emotional: usize,
}

impl InstanceRecord {
    /// The record of `outcome` for the gold item `gold` of turn `turn` with its context counts.
    pub fn new(turn: usize, gold: u32, outcome: &Outcome, entities: usize, emotional: usize) -> Self {
        InstanceRecord {
            turn,
            gold,
            feedback: outcome.feedback,
            rank: outcome.rank,
            new_rank: (!outcome.mentioned).then_some(outcome.new_rank),
            entities,
            emotional,
        }
    }
}

/// Write `records` as JSON lines (written beside and renamed: never a torn file).
pub fn write_instances(path: &Path, records: &[InstanceRecord]) -> std::io::Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Read a file written by [`write_instances`]; the error names the file and line.
pub fn read_instances(path: &Path) -> Result<Vec<InstanceRecord>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1)))
        .collect()
}

/// One row of a paired comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedRow {
    /// Which instances.
    pub group: String,
    /// How many.
    pub n: usize,
    /// Recall@k of the first recipe.
    pub recall_a: f64,
    /// Recall@k of the second recipe.
    pub recall_b: f64,
    /// Instances only the first has in its top k.
    pub only_a: usize,
    /// Instances only the second has in its top k.
    pub only_b: usize,
    /// Two-sided exact sign-test (McNemar) p-value of `only_a` against `only_b`.
    pub p: f64,
}

/// Recall@`k` of two recipes on the same instances, overall and by group.
/// The groups that depend on the context (emotional entities, entity count)
/// are read from `a`, the recipe with the emotion stages. Fails when the two
/// files do not hold the same instances.
pub fn paired(a: &[InstanceRecord], b: &[InstanceRecord], k: usize) -> Result<Vec<PairedRow>, String> {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| (x.turn, x.gold) != (y.turn, y.gold)) {
        return Err(format!(
            "the two recipes were evaluated on different instances ({} and {}): compare recipes over the same data \
             (recipe.data_sample) and entity linker",
            a.len(),
            b.len()
        ));
    }
    type Filter = Box<dyn Fn(&InstanceRecord) -> bool>;
    let groups: Vec<(&str, Filter)> = vec![
        ("all", Box::new(|_| true)),
        ("gold liked", Box::new(|r| r.feedback == Feedback::Liked)),
        ("gold disliked", Box::new(|r| r.feedback == Feedback::Disliked)),
        ("gold not said", Box::new(|r| r.feedback == Feedback::NotSaid)),
        ("no context entity", Box::new(|r| r.entities == 0)),
        ("context entities, none emotional", Box::new(|r| r.entities > 0 && r.emotional == 0)),
        ("some emotional context entity", Box::new(|r| r.emotional > 0)),
        ("1-2 context entities", Box::new(|r| (1..=2).contains(&r.entities))),
        ("3+ context entities", Box::new(|r| r.entities >= 3)),
        ("gold mentioned before", Box::new(|r| r.new_rank.is_none())),
        ("gold new", Box::new(|r| r.new_rank.is_some())),
    ];
    Ok(groups
        .into_iter()
        .map(|(name, keep)| {
            let pairs: Vec<(bool, bool)> =
                a.iter().zip(b).filter(|(x, _)| keep(x)).map(|(x, y)| (x.rank < k, y.rank < k)).collect();
            let n = pairs.len();
            let hits = |f: fn(&(bool, bool)) -> bool| pairs.iter().filter(|p| f(p)).count();
            let (only_a, only_b) = (hits(|p| p.0 && !p.1), hits(|p| !p.0 && p.1));
            let share = |h: usize| if n == 0 { f64::NAN } else { h as f64 / n as f64 };
            PairedRow {
                group: name.to_string(),
                n,
                recall_a: share(hits(|p| p.0)),
                recall_b: share(hits(|p| p.1)),
                only_a,
                only_b,
                p: sign_test(only_a, only_b),
            }
        })
        .collect())
}

/// Two-sided exact binomial test of `x` successes against `y` at p = 1/2.
pub fn sign_test(x: usize, y: usize) -> f64 {
    let n = x + y;
    if n == 0 {
        return 1.0;
    }
    let low = x.min(y);
    // P(X <= low) for X ~ Binomial(n, 1/2), in logs to stay finite for large n.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_c = 0.0; // ln C(n, 0)
    let mut tail = 0.0;
    for i in 0..=low {
        if i > 0 {
            ln_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_c + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// The rows as a Markdown table, `a` and `b` naming the recipes.
pub fn to_markdown(rows: &[PairedRow], a: &str, b: &str, k: usize) -> String {
    let mut out = format!(
        "| instances | n | {a} R@{k} | {b} R@{k} | only {a} | only {b} | sign test p |\n|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} | {} | {} | {:.3} |\n",
            r.group, r.n, r.recall_a, r.recall_b, r.only_a, r.only_b, r.p
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(turn: usize, rank: usize, feedback: Feedback, emotional: usize) -> InstanceRecord {
        InstanceRecord { turn, gold: 7, feedback, rank, new_rank: Some(rank), entities: 2, emotional }
    }

    #[test]
    fn sign_test_matches_the_binomial() {
        assert_eq!(sign_test(0, 0), 1.0);
        assert!((sign_test(0, 5) - 2.0 / 32.0).abs() < 1e-12);
        assert!((sign_test(5, 5) - 1.0).abs() < 1e-12);
        // 3 vs 7: P(X <= 3) = (1 + 10 + 45 + 120) / 1024.
        assert!((sign_test(3, 7) - 2.0 * 176.0 / 1024.0).abs() < 1e-12);
        assert!(sign_test(400, 600) < 1e-9);
    }

    #[test]
    fn paired_counts_discordant_instances_by_group() {
        let a = vec![rec(0, 3, Feedback::Liked, 1), rec(1, 20, Feedback::Liked, 0), rec(2, 5, Feedback::Disliked, 1)];
        let b = vec![rec(0, 30, Feedback::Liked, 0), rec(1, 2, Feedback::Liked, 0), rec(2, 1, Feedback::Disliked, 0)];
        let rows = paired(&a, &b, 10).unwrap();
        let all = &rows[0];
        assert_eq!((all.n, all.only_a, all.only_b), (3, 1, 1));
        assert!((all.recall_a - 2.0 / 3.0).abs() < 1e-12 && (all.recall_b - 2.0 / 3.0).abs() < 1e-12);
        let liked = rows.iter().find(|r| r.group == "gold liked").unwrap();
        assert_eq!((liked.n, liked.only_a, liked.only_b), (2, 1, 1));
        // Groups by context come from the first recipe's records.
        let emotional = rows.iter().find(|r| r.group == "some emotional context entity").unwrap();
        assert_eq!((emotional.n, emotional.only_a, emotional.only_b), (2, 1, 0));
        assert!(to_markdown(&rows, "ecr", "base", 10).contains("| gold liked | 2 | 0.500 | 0.500 | 1 | 1 |"));
    }

    #[test]
    fn different_instances_are_refused() {
        let a = vec![rec(0, 3, Feedback::Liked, 1)];
        let b = vec![rec(1, 3, Feedback::Liked, 1)];
        assert!(paired(&a, &b, 10).unwrap_err().contains("different instances"));
        assert!(paired(&a, &[], 10).is_err());
    }
}
