//! Agreement of our linking with UniCRS's own linking of the ReDial test
//! split (`kg/unicrs_test_processed.jsonl`: one line per recommender turn,
//! `entity` = context entity ids, `rec` = gold item ids).
//!
//! Rows align with our recommender turns in file order. Context entities are
//! compared as sets per row (micro-averaged over rows: every row counts each
//! entity of its context once); gold movies likewise against `rec`.

use crate::emotion_source::NoEmotions;
use crate::error::DataError;
use crate::instances::segment;
use crate::jsonl::for_each_line;
use crate::paths::require_file;
use crate::prepare::Resources;
use crate::redial::load_conversations;
use ecr_engine::Role;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

#[derive(Deserialize)]
struct UnicrsRow {
    #[serde(default)]
    context: Vec<String>,
    #[serde(default)]
    rec: Vec<u32>,
    #[serde(default)]
    entity: Vec<u32>,
}

/// Precision, recall and F1 of a set comparison (true positives, false positives, false negatives).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Prf {
    /// Pairs both have.
    pub tp: usize,
    /// Pairs only we have.
    pub fp: usize,
    /// Pairs only the reference has.
    pub fn_: usize,
}

impl Prf {
    /// Add one row's comparison.
    pub fn add(&mut self, ours: &BTreeSet<u32>, theirs: &BTreeSet<u32>) {
        self.tp += ours.intersection(theirs).count();
        self.fp += ours.difference(theirs).count();
        self.fn_ += theirs.difference(ours).count();
    }
    /// Precision.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    /// Recall.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    /// F1.
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The linking report.
#[derive(Debug, Clone, Serialize)]
pub struct LinkingReport {
    /// Rows compared (recommender turns of the test split).
    pub rows: usize,
    /// Rows whose context length differs from ours (alignment check; should be 0).
    pub misaligned_rows: usize,
    /// Context entities, all kinds.
    pub context: Prf,
    /// Context entities that are movies (in `item_ids`/`movie_ids`).
    pub context_movies: Prf,
    /// Context entities that are not movies (people, genres, ...).
    pub context_other: Prf,
    /// Gold movies of the turn against `rec`.
    pub gold: Prf,
    /// Entities UniCRS has that we miss most often (name, rows).
    pub top_missed: Vec<(String, usize)>,
    /// Entities we add that UniCRS does not have, most often (name, rows).
    pub top_extra: Vec<(String, usize)>,
    /// Gold items UniCRS has that we miss most often (name, rows).
    pub top_missed_gold: Vec<(String, usize)>,
}

/// Compare our linking of `redial/test.jsonl` with UniCRS's.
pub fn linking_report(res: &Resources, top: usize) -> Result<LinkingReport, DataError> {
    let convs = load_conversations(&require_file(&res.dir, "redial/test.jsonl")?)?;
    let path = require_file(&res.dir, "kg/unicrs_test_processed.jsonl")?;
    let mut rows = Vec::new();
    for_each_line(&path, |_, r: UnicrsRow| {
        rows.push(r);
        Ok(())
    })?;
    let mut ours: Vec<(usize, BTreeSet<u32>, BTreeSet<u32>)> = Vec::new();
    for c in &convs {
        let d = segment(c, "test", "test", &res.linker, &NoEmotions, crate::instances::EMOTION_THRESHOLD);
        let mut ctx = BTreeSet::new();
        for (t, turn) in d.turns.iter().enumerate() {
            if turn.role == Role::Recommender {
                let gold = turn.movies.iter().filter_map(|m| m.entity).collect();
                ours.push((t, ctx.clone(), gold));
            }
            ctx.extend(turn.kg_entities().map(|(e, _)| e));
        }
    }
    if ours.len() != rows.len() {
        return Err(DataError::file(
            &path,
            format!(
                "{} rows but redial/test.jsonl has {} recommender turns: the files do not describe the same split",
                rows.len(),
                ours.len()
            ),
        ));
    }
    let (mut all, mut mov, mut oth, mut gold) = (Prf::default(), Prf::default(), Prf::default(), Prf::default());
    let mut missed: HashMap<u32, usize> = HashMap::new();
    let mut extra: HashMap<u32, usize> = HashMap::new();
    let mut missed_gold: HashMap<u32, usize> = HashMap::new();
    let mut misaligned = 0;
    for ((t, ctx, g), row) in ours.iter().zip(&rows) {
        let n_ctx = row.context.iter().filter(|s| !s.is_empty()).count();
        if n_ctx != *t {
            misaligned += 1;
        }
        let theirs: BTreeSet<u32> = row.entity.iter().copied().collect();
        all.add(ctx, &theirs);
        let split = |s: &BTreeSet<u32>, movie: bool| -> BTreeSet<u32> {
            s.iter().copied().filter(|&e| res.kg.is_movie(e) == movie).collect()
        };
        mov.add(&split(ctx, true), &split(&theirs, true));
        oth.add(&split(ctx, false), &split(&theirs, false));
        let their_rec: BTreeSet<u32> = row.rec.iter().copied().collect();
        gold.add(g, &their_rec);
        for &e in theirs.difference(ctx) {
            *missed.entry(e).or_default() += 1;
        }
        for &e in ctx.difference(&theirs) {
            *extra.entry(e).or_default() += 1;
        }
        for &e in their_rec.difference(g) {
            *missed_gold.entry(e).or_default() += 1;
        }
    }
    let named = |m: HashMap<u32, usize>| {
        let mut v: Vec<(String, usize)> =
            m.into_iter().map(|(e, n)| (res.kg.name(e).unwrap_or("?").to_string(), n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(top);
        v
    };
    Ok(LinkingReport {
        rows: rows.len(),
        misaligned_rows: misaligned,
        context: all,
        context_movies: mov,
        context_other: oth,
        gold,
        top_missed: named(missed),
        top_extra: named(extra),
        top_missed_gold: named(missed_gold),
    })
}
