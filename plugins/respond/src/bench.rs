//! `ecr bench retrieve`: the review database's build and reload times and
//! the retriever's latency per turn on real ReDial test dialogues.

use crate::retrieve::{Retriever, World};
use crate::reviewdb::{Opened, ReviewDb, fingerprint};
use crate::stage::{RetrieverConfig, open_review_db};
use ecr_data::{LinkerOptions, Resources, load_conversations};
use ecr_engine::{BoxError, BuildContext, Candidate, Role, Utterance};
use ecr_neural::TextEncoder;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Delete the database first so that it is built (the embedding cache stays).
    pub rebuild: bool,
    /// Reloads to time.
    pub reloads: usize,
    /// Recommender turns of the test dialogues to retrieve for.
    pub turns: usize,
}

/// The figures.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// How the database was opened (built, with the build's stats, or loaded).
    pub opened: Opened,
    /// The build's statistics (from this run or the recorded build).
    pub stats: crate::reviewdb::BuildStats,
    /// Median reload time.
    pub reload_median: Duration,
    /// Per-turn retrieval times for movies with reviews.
    pub with_reviews: Vec<Duration>,
    /// Per-turn retrieval times for movies without reviews (HNSW fallback).
    pub without_reviews: Vec<Duration>,
    /// Mean passages per turn.
    pub mean_passages: f64,
    /// Mean facts per turn.
    pub mean_facts: f64,
}

fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s.get(((s.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.stats;
        match &self.opened {
            Opened::Built(why) => writeln!(f, "review db: built now ({why})")?,
            Opened::Loaded(d) => writeln!(f, "review db: loaded in {:.1} ms (build figures as recorded)", ms(*d))?,
        }
        writeln!(
            f,
            "  {} of {} reviews kept (dropped {:?}), {} sentences ({} emotional), {} movies",
            s.kept_reviews, s.reviews, s.dropped, s.sentences, s.emotional, s.movies
        )?;
        writeln!(f, "  build {:.1} s: embedding {:.1} s, HNSW {:.1} s", s.total_s, s.embed_s, s.index_s)?;
        writeln!(f, "reload: median {:.1} ms", ms(self.reload_median))?;
        for (what, v) in [("movie with reviews", &self.with_reviews), ("movie without reviews", &self.without_reviews)]
        {
            if v.is_empty() {
                continue;
            }
            let mean = v.iter().sum::<Duration>() / v.len() as u32;
            writeln!(
                f,
                "retrieve, {what}: {} turns, mean {:.1} ms, p50 {:.1} ms, p95 {:.1} ms",
                v.len(),
                ms(mean),
                ms(quantile(v, 0.5)),
                ms(quantile(v, 0.95))
            )?;
        }
        write!(f, "per turn: {:.1} passages, {:.1} facts", self.mean_passages, self.mean_facts)
    }
}

/// Run the benchmark for the retriever configured by `config` (paths
/// resolve through `ctx` as in a recipe).
pub fn bench_retrieve(
    config: &RetrieverConfig,
    ctx: &BuildContext,
    opts: &BenchOptions,
) -> Result<BenchReport, BoxError> {
    let dir = ctx.data_dir()?;
    let res = Resources::load(&dir, &LinkerOptions::default())?;
    let encoder = TextEncoder::load(&ctx.resolve(&config.model_dir))?;
    if opts.rebuild {
        let fp = fingerprint(&config.db_params(), encoder.id());
        let _ = std::fs::remove_dir_all(config.index_dir(ctx).join(format!("reviews-{fp}")));
    }
    let (db, opened) = open_review_db(config, &res, &encoder, ctx, true)?;
    let db_dir = db.dir().to_path_buf();
    let stats = db.stats().clone();
    let mut reloads = Vec::new();
    for _ in 0..opts.reloads.max(1) {
        let t = Instant::now();
        let again = ReviewDb::load(&db_dir)?;
        reloads.push(t.elapsed());
        drop(again);
    }
    let world = World { kg: &res.kg, catalogue: &res.catalogue, linker: &res.linker, encoder: &encoder };
    let retriever = Retriever::new(Arc::new(db), world, config.options())?;
    let convs = load_conversations(&ecr_data::paths::require_file(&dir, "redial/test.jsonl")?)?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut passages, mut facts) = (0usize, 0usize);
    'outer: for c in &convs {
        let mut history: Vec<Utterance> = Vec::new();
        for m in &c.messages {
            let role = if m.sender == c.initiator { Role::Seeker } else { Role::Recommender };
            let movie = (role == Role::Recommender)
                .then(|| res.linker.link_at_mentions(&m.text))
                .and_then(|v| v.into_iter().find_map(|(id, _)| res.linker.movie_entity(id).map(|e| (id, e))));
            if let (Some((id, item)), Some(last)) = (movie, history.last()) {
                let name = res.catalogue.get(id).map(|m| m.title.clone()).unwrap_or_default();
                let cand = Candidate { item, name, score: 1.0 };
                let (before, user) = (&history[..history.len() - 1], last.text.clone());
                let t = Instant::now();
                let r = retriever.retrieve(world, std::slice::from_ref(&cand), before, &user)?;
                let d = t.elapsed();
                if retriever.db_movie(item).is_some() {
                    with.push(d)
                } else {
                    without.push(d)
                }
                passages += r.passages.len();
                facts += r.facts.len();
                if with.len() + without.len() >= opts.turns {
                    break 'outer;
                }
            }
            history.push(Utterance::new(role, m.text.clone()));
        }
    }
    let n = (with.len() + without.len()).max(1) as f64;
    Ok(BenchReport {
        opened,
        stats,
        reload_median: quantile(&reloads, 0.5),
        with_reviews: with,
        without_reviews: without,
        mean_passages: passages as f64 / n,
        mean_facts: facts as f64 / n,
    })
}
