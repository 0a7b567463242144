//! Turn latency: real ReDial test dialogues replayed through a recipe's
//! pipeline, as `ecr chat` runs them, with every stage timed (warm: after a
//! few warm-up turns), and the time to the first streamed token.
//!
//! `ecr bench turn -r RECIPE --turns 50` prints p50/p95 per stage, of the
//! stages before the first one that reads `candidates` (the recommendation
//! stages), of the whole turn, and of the first token.

use crate::data::{load_conversations, replay::script};
use crate::{Engine, EngineError, Event, Role, TurnOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct TurnBenchOptions {
    /// Timed seeker turns.
    pub turns: usize,
    /// Untimed turns first (caches, lazily built indexes, page faults).
    pub warmup: usize,
}

impl Default for TurnBenchOptions {
    fn default() -> Self {
        TurnBenchOptions { turns: 50, warmup: 3 }
    }
}

/// p50 and p95 of a list of durations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile (nearest rank).
    pub p95_ms: f64,
}

impl Percentiles {
    /// Of `samples` (empty: zeros).
    pub fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if ms.is_empty() { 0.0 } else { ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1] }
        };
        Percentiles { p50_ms: at(0.5), p95_ms: at(0.95) }
    }
}

/// The measurements.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TurnBench {
    /// The recipe's name.
    pub recipe: String,
    /// Timed turns.
    pub turns: usize,
    /// Per enabled stage (pipeline order): id and its run time.
    pub stages: Vec<(String, Percentiles)>,
    /// The ids of the recommendation stages: those before the first stage that reads `candidates`.
    pub recommendation_stages: Vec<String>,
    /// Their summed run time per turn.
    pub recommendation: Percentiles,
    /// The whole turn.
    pub total: Percentiles,
    /// From the start of the turn to the first streamed token (turns that streamed one).
    pub first_token: Option<Percentiles>,
    /// Mean number of tokens streamed per turn.
    pub tokens_per_turn: f64,
}

impl std::fmt::Display for TurnBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "recipe {:?}: {} warm turns (p50 / p95 ms)", self.recipe, self.turns)?;
        for (id, p) in &self.stages {
            writeln!(f, "  stage {id:<12} {:>9.2} {:>9.2}", p.p50_ms, p.p95_ms)?;
        }
        let rec = self.recommendation_stages.join("+");
        writeln!(f, "  recommendation ({rec}) {:.2} / {:.2}", self.recommendation.p50_ms, self.recommendation.p95_ms)?;
        writeln!(f, "  whole turn {:.1} / {:.1}", self.total.p50_ms, self.total.p95_ms)?;
        match &self.first_token {
            Some(p) => write!(
                f,
                "  first token {:.1} / {:.1} ({:.1} tokens per turn)",
                p.p50_ms, p.p95_ms, self.tokens_per_turn
            ),
            None => write!(f, "  no stage streamed tokens"),
        }
    }
}

/// Replay the seeker turns of the test dialogues in `data_dir` through
/// `engine` (one session per dialogue; the recorded recommender replies join
/// the history) until `options.warmup + options.turns` turns ran.
pub fn turn_latency(engine: &Engine, data_dir: &Path, options: &TurnBenchOptions) -> Result<TurnBench, EngineError> {
    let test = data_dir.join("redial").join("test.jsonl");
    let conversations =
        load_conversations(&test).map_err(|e| EngineError::Input(format!("{}: {e}", test.display())))?;
    let ids: Vec<String> = engine.stages().map(|(id, _, _)| id.to_string()).collect();
    let rec_end =
        engine.stages().position(|(_, _, io)| io.reads.iter().any(|f| f.name() == "candidates")).unwrap_or(ids.len());
    let mut per_stage: Vec<Vec<Duration>> = vec![Vec::new(); ids.len()];
    let (mut totals, mut recs, mut firsts) = (Vec::new(), Vec::new(), Vec::new());
    let (mut seen, mut tokens) = (0usize, 0usize);
    let wanted = options.warmup + options.turns;
    'dialogues: for conv in &conversations {
        let mut session = engine.session();
        for u in script(conv).0 {
            if u.role != Role::Seeker {
                session.push(u);
                continue;
            }
            if seen == wanted {
                break 'dialogues;
            }
            let start = Instant::now();
            let mut first: Option<Duration> = None;
            let mut n_tokens = 0;
            let out = session.turn_with(&u.text, &TurnOptions::default(), |e| {
                if let Event::Token { .. } = e.event {
                    n_tokens += 1;
                    first.get_or_insert_with(|| start.elapsed());
                }
            })?;
            let total = start.elapsed();
            seen += 1;
            if seen <= options.warmup {
                continue;
            }
            // The trace has one timing per enabled stage, in pipeline order, as `ids`.
            for (samples, t) in per_stage.iter_mut().zip(&out.trace) {
                samples.push(t.duration);
            }
            recs.push(out.trace.iter().take(rec_end).map(|t| t.duration).sum());
            totals.push(total);
            firsts.extend(first);
            tokens += n_tokens;
        }
    }
    let timed = totals.len();
    Ok(TurnBench {
        recipe: engine.recipe().name().to_string(),
        turns: timed,
        stages: ids.iter().cloned().zip(per_stage.iter().map(|s| Percentiles::of(s))).collect(),
        recommendation_stages: ids[..rec_end].to_vec(),
        recommendation: Percentiles::of(&recs),
        total: Percentiles::of(&totals),
        first_token: (!firsts.is_empty()).then(|| Percentiles::of(&firsts)),
        tokens_per_turn: if timed == 0 { 0.0 } else { tokens as f64 / timed as f64 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let d: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        let p = Percentiles::of(&d);
        assert_eq!((p.p50_ms, p.p95_ms), (10.0, 19.0));
        assert_eq!(Percentiles::of(&[]), Percentiles { p50_ms: 0.0, p95_ms: 0.0 });
        assert_eq!(Percentiles::of(&d[..1]).p95_ms, 1.0);
    }
}
