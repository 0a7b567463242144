//! `ecr compare`: train what is missing, evaluate each recipe over several
//! seeds, and report one table (mean ± std per metric, both protocols) as
//! Markdown, CSV and a PNG chart ([`report`]).
//!
//! Each recipe is first brought up to date as `ecr train` would (its own
//! seed). Its compared stage (by recipe id, `recommend` by default) is then
//! evaluated at that seed and retrained at each other seed through the
//! training contract's seed override; a trainer keeps a run at another seed
//! beside the recipe's own checkpoint (the recommender: `seed-<s>/`), so the
//! recipe still runs with its own. Every (recipe, seed) result is cached
//! under `runs/compare/cache/`, keyed by the stage's fingerprint
//! ([`crate::train::stage_fingerprint`]) and the seed: a second comparison
//! of the same recipes only renders the table, and an edited recipe, changed
//! data or a retrained upstream stage recompute exactly what they affect.

pub mod report;

pub use report::{Comparison, DEFAULT_METRICS, RecipeRuns, ReportError};

use crate::train::{JobOptions, TrainOptions, TrainOutcome, evaluate_recipe, stage_fingerprint, train_recipe};
use crate::{EngineError, Recipe};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What to compare and where to write it.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The recipe id of the stage whose metrics are compared.
    pub stage: String,
    /// The seeds besides each recipe's own (which is always run).
    pub extra_seeds: Vec<u64>,
    /// Output directory (the table files and the cache); default `runs/compare/` beside the first recipe's runs.
    pub out_dir: Option<PathBuf>,
    /// Show progress bars.
    pub progress: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions { stage: "recommend".into(), extra_seeds: vec![1, 2], out_dir: None, progress: true }
    }
}

/// What a comparison produced.
#[derive(Debug)]
pub struct CompareOutcome {
    /// The table.
    pub comparison: Comparison,
    /// Paths of the Markdown, CSV and PNG files.
    pub files: Vec<PathBuf>,
    /// The PNG's error if it could not be drawn (the Markdown and CSV were still written).
    pub chart_error: Option<ReportError>,
    /// (recipe, seed) runs computed now, and read from the cache.
    pub computed: usize,
    /// Runs read from the cache.
    pub cached: usize,
}

/// An error of `ecr compare`.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// Training or evaluating a recipe failed.
    #[error("recipe {recipe}: {source}")]
    Engine {
        /// The recipe file.
        recipe: String,
        /// What failed.
        #[source]
        source: EngineError,
    },
    /// A stage's report has no metrics object.
    #[error("recipe {recipe}: stage {stage:?} reported no metrics; compare a stage that trains and evaluates")]
    NoMetrics {
        /// The recipe file.
        recipe: String,
        /// The stage id.
        stage: String,
    },
    /// Reading or writing the cache or the output failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// No recipe was given.
    #[error("no recipe to compare: name at least one recipe file")]
    Empty,
    /// A paired comparison could not be made.
    #[error("paired comparison: {0}")]
    Paired(String),
}

/// A cached (recipe, seed) result.
#[derive(Serialize, Deserialize)]
struct CachedRun {
    key: String,
    seed: u64,
    metrics: BTreeMap<String, f64>,
}

/// The numeric metrics of a report, flattened with dotted keys
/// (`new_items.recall@10`, `baselines.popularity.recall@10`).
fn flatten(metrics: &serde_json::Value) -> BTreeMap<String, f64> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, f64>) {
        match v {
            serde_json::Value::Number(n) => {
                out.insert(prefix.to_string(), n.as_f64().unwrap_or(f64::NAN));
            }
            serde_json::Value::Object(map) => {
                for (k, inner) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, inner, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", metrics, &mut out);
    out
}

/// Rows for the baselines the compared stage reports beside its own metrics
/// (`baselines.<name>.<metric>`, e.g. popularity): deterministic, so read
/// from the first recipe's first run.
fn baseline_rows(first: &RecipeRuns) -> Vec<RecipeRuns> {
    let Some(m) = first.metrics.first() else { return vec![] };
    let mut names: Vec<&str> = m.keys().filter_map(|k| k.strip_prefix("baselines.")?.split('.').next()).collect();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let prefix = format!("baselines.{name}.");
            let values = m.iter().filter_map(|(k, &v)| Some((k.strip_prefix(&prefix)?.to_string(), v))).collect();
            RecipeRuns { recipe: format!("{name} (baseline)"), seeds: vec![], metrics: vec![values] }
        })
        .collect()
}

fn read_cached(path: &Path, key: &str) -> Option<CachedRun> {
    let run: CachedRun = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    (run.key == key).then_some(run)
}

fn write_cached(path: &Path, run: &CachedRun) -> Result<(), CompareError> {
    let io = |source| CompareError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let text = serde_json::to_string_pretty(run).unwrap_or_default();
    // Written beside and renamed, so an interrupted comparison never leaves a torn cache file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// `options.out_dir`, else `runs/compare/` beside the first recipe's run directory.
fn output_dir(first: &Recipe, options: &CompareOptions) -> PathBuf {
    options.out_dir.clone().unwrap_or_else(|| first.run_dir().parent().unwrap_or(Path::new("runs")).join("compare"))
}

/// Compare `recipes` (loaded recipe files) on `options.stage`, writing the
/// table files under the output directory.
pub fn compare(recipes: &[Recipe], options: &CompareOptions) -> Result<CompareOutcome, CompareError> {
    let first = recipes.first().ok_or(CompareError::Empty)?;
    let out_dir = output_dir(first, options);
    let (mut computed, mut cached) = (0, 0);
    let mut runs = Vec::new();
    for recipe in recipes {
        let name = recipe.path().display().to_string();
        let engine = |source| CompareError::Engine { recipe: name.clone(), source };
        let _span = tracing::info_span!("compare", recipe = recipe.name()).entered();
        let job = JobOptions { progress: options.progress, ..Default::default() };
        // The compared stage and its upstream up to date at the recipe's own seed first (not the
        // stages after it: comparing recommenders does not train the generator's adapter).
        let through = TrainOptions { through: Some(options.stage.clone()), job: job.clone(), ..Default::default() };
        for outcome in train_recipe(recipe, &through).map_err(engine)? {
            if let TrainOutcome::Trained { .. } = outcome {
                tracing::info!("{outcome}");
            }
        }
        let fingerprint = stage_fingerprint(recipe, &options.stage).map_err(engine)?;
        let mut seeds = Vec::new();
        let mut metrics = Vec::new();
        let own = std::iter::once(None);
        for seed in own.chain(options.extra_seeds.iter().map(|&s| Some(s))) {
            let label = seed.map_or("own".to_string(), |s| s.to_string());
            let path = out_dir.join("cache").join(recipe.name()).join(format!("{}-seed-{label}.json", options.stage));
            let key = format!("{fingerprint}/{label}");
            let run = match read_cached(&path, &key) {
                Some(run) => {
                    cached += 1;
                    run
                }
                None => {
                    let report = match seed {
                        // The recipe's own seed is trained: evaluate its checkpoint.
                        None => evaluate_recipe(recipe, Some(&options.stage), &job)
                            .map_err(engine)?
                            .pop()
                            .map(|(_, r)| r.metrics),
                        Some(s) => {
                            let train = TrainOptions {
                                force: true,
                                stage: Some(options.stage.clone()),
                                job: JobOptions { seed: Some(s), ..job.clone() },
                                ..Default::default()
                            };
                            let outcomes = train_recipe(recipe, &train).map_err(engine)?;
                            outcomes.into_iter().find_map(|o| match o {
                                TrainOutcome::Trained { report, .. } => Some(report.metrics),
                                TrainOutcome::UpToDate { .. } => None,
                            })
                        }
                    };
                    let values = flatten(&report.unwrap_or_default());
                    if values.is_empty() {
                        return Err(CompareError::NoMetrics { recipe: name.clone(), stage: options.stage.clone() });
                    }
                    let seed = values.get("seed").map_or(seed.unwrap_or(0), |&s| s as u64);
                    let run = CachedRun { key, seed, metrics: values };
                    write_cached(&path, &run)?;
                    computed += 1;
                    run
                }
            };
            tracing::info!(seed = run.seed, "recipe {:?} seed {} done", recipe.name(), run.seed);
            seeds.push(run.seed);
            metrics.push(run.metrics);
        }
        runs.push(RecipeRuns { recipe: recipe.name().to_string(), seeds, metrics });
    }
    if let Some(first) = runs.first() {
        let baselines = baseline_rows(first);
        runs.extend(baselines);
    }
    let comparison = Comparison { runs };
    let (files, chart_error) = match comparison.write_all(DEFAULT_METRICS, &out_dir) {
        Ok(files) => (files.to_vec(), None),
        Err(e) => {
            let written: Vec<PathBuf> =
                ["comparison.md", "comparison.csv"].iter().map(|f| out_dir.join(f)).filter(|p| p.is_file()).collect();
            (written, Some(e))
        }
    };
    Ok(CompareOutcome { comparison, files, chart_error, computed, cached })
}

/// The paired comparison of two recipes (`ecr compare --paired A B`): both
/// are brought up to date and their compared stage evaluated at its own
/// seed; the per-instance outcomes it reports (`instances` in its metrics,
/// the recommender's [`ecr_neural::recommend::paired`] records) are compared
/// instance by instance at Recall@`k`, overall and by group. Returns the
/// Markdown table, also written to `paired-<a>-<b>.md` in the output directory.
pub fn compare_paired(
    a: &Recipe,
    b: &Recipe,
    options: &CompareOptions,
    k: usize,
) -> Result<(String, PathBuf), CompareError> {
    use ecr_neural::recommend::paired::{paired, read_instances, to_markdown};
    let job = JobOptions { progress: options.progress, ..Default::default() };
    let mut records = Vec::new();
    for recipe in [a, b] {
        let name = recipe.path().display().to_string();
        let engine = |source| CompareError::Engine { recipe: name.clone(), source };
        let through = TrainOptions { through: Some(options.stage.clone()), job: job.clone(), ..Default::default() };
        train_recipe(recipe, &through).map_err(engine)?;
        let report = evaluate_recipe(recipe, Some(&options.stage), &job).map_err(engine)?.pop().map(|(_, r)| r.metrics);
        let path = report.as_ref().and_then(|m| m.get("instances")).and_then(|v| v.as_str()).ok_or_else(|| {
            CompareError::Paired(format!(
                "recipe {name}: stage {:?} reports no per-instance outcomes (`instances`); compare a recommender",
                options.stage
            ))
        })?;
        records.push(read_instances(Path::new(path)).map_err(CompareError::Paired)?);
    }
    let rows = paired(&records[0], &records[1], k).map_err(CompareError::Paired)?;
    let table = to_markdown(&rows, a.name(), b.name(), k);
    let out_dir = output_dir(a, options);
    let file = out_dir.join(format!("paired-{}-{}.md", a.name(), b.name()));
    let io = |source| CompareError::Io { path: file.clone(), source };
    std::fs::create_dir_all(&out_dir).map_err(io)?;
    std::fs::write(&file, &table).map_err(io)?;
    Ok((table, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_flatten_with_dotted_keys_and_baselines_become_rows() {
        let v = serde_json::json!({
            "recall@10": 0.2, "seed": 42, "new_items": { "recall@10": 0.1 },
            "baselines": { "popularity": { "recall@10": 0.05, "new_items": { "recall@10": 0.01 } } }, "note": "x"
        });
        let m = flatten(&v);
        assert_eq!(m.len(), 5);
        assert_eq!(m["recall@10"], 0.2);
        assert_eq!(m["new_items.recall@10"], 0.1);
        assert_eq!(m["seed"], 42.0);
        assert_eq!(m["baselines.popularity.new_items.recall@10"], 0.01);
        let first = RecipeRuns { recipe: "ecr".into(), seeds: vec![42], metrics: vec![m] };
        let rows = baseline_rows(&first);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].recipe, "popularity (baseline)");
        assert_eq!(
            rows[0].metrics[0],
            BTreeMap::from([("recall@10".into(), 0.05), ("new_items.recall@10".into(), 0.01)])
        );
    }

    #[test]
    fn a_cached_run_is_read_back_only_under_its_key() {
        let dir = std::env::temp_dir().join(format!("ecr-compare-cache-{}", std::process::id()));
        let path = dir.join("r").join("recommend-seed-1.json");
        let run = CachedRun { key: "abc/1".into(), seed: 1, metrics: BTreeMap::from([("auc".into(), 0.5)]) };
        write_cached(&path, &run).unwrap();
        assert_eq!(read_cached(&path, "abc/1").unwrap().metrics["auc"], 0.5);
        assert!(read_cached(&path, "abd/1").is_none(), "another fingerprint is a miss");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
