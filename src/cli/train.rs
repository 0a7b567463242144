//! `ecr train` and `ecr eval` for the recipe's trainable stages.
//!
//! `--stage emotion` trains the emotion tagger on the training annotations
//! (holding part of them out for model selection), saves it to the stage's
//! `checkpoint`, evaluates it on the test annotations next to the baselines,
//! and labels every seeker message of ReDial into the stage's `labels_file`.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use ecr::data::{Annotation, load_annotations};
use ecr::neural::evaluate::{EvalReport, evaluate_file};
use ecr::neural::label::label_redial;
use ecr::neural::train::train_tagger;
use ecr::neural::{EmbeddingCache, EmotionTagger, EmotionTaggerConfig, TextEncoder};
use ecr::{BuildContext, Recipe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What to train or evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrainStage {
    /// The emotion tagger (`use = "emotion_tagger"`); training also labels every ReDial seeker message.
    Emotion,
    /// Only relabel every ReDial seeker message with the already trained tagger.
    EmotionLabels,
}

/// Options of `ecr train`.
#[derive(Args)]
pub struct TrainArgs {
    /// The recipe whose stage to train.
    #[arg(short, long)]
    pub recipe: PathBuf,
    /// The stage to train.
    #[arg(long, value_enum)]
    pub stage: TrainStage,
    /// After training the tagger, do not label every ReDial seeker message.
    #[arg(long)]
    pub no_labels: bool,
}

/// Options of `ecr eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// The recipe whose stage to evaluate.
    #[arg(short, long)]
    pub recipe: PathBuf,
    /// The stage to evaluate (`emotion`).
    #[arg(long, value_enum)]
    pub stage: TrainStage,
    /// An annotation file (emotion/annotations_*.jsonl format); default: the test annotations.
    #[arg(long)]
    pub annotations: Option<PathBuf>,
    /// Print the metrics as one JSON object on stdout (keys `recall@1`, `recall@2`, ...) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The recipe's emotion tagger stage: its config and the recipe's build context.
/// The recipe's emotion tagger config, with the context its paths resolve in.
fn emotion_stage(recipe_path: &Path) -> anyhow::Result<(BuildContext, EmotionTaggerConfig)> {
    let recipe = Recipe::load(recipe_path, &ecr::registry())?;
    let Some((id, config)) = recipe.stage_config::<EmotionTaggerConfig>("emotion_tagger")? else {
        bail!("recipe {} has no enabled stage with use = \"emotion_tagger\"", recipe_path.display());
    };
    let ctx = recipe.stage(&id).map_or(recipe.context(), |s| s.context()).clone();
    Ok((ctx, config))
}

fn data_file(rel: &str) -> anyhow::Result<PathBuf> {
    Ok(ecr::data::paths::require_file(&ecr::data::data_dir()?, rel)?)
}

fn load(path: &Path) -> anyhow::Result<Vec<Annotation>> {
    load_annotations(path).with_context(|| format!("loading annotations {}", path.display()))
}

struct Loaded {
    encoder: Arc<TextEncoder>,
    cache: EmbeddingCache,
}

fn load_encoder(ctx: &BuildContext, config: &EmotionTaggerConfig) -> anyhow::Result<Loaded> {
    let encoder = Arc::new(TextEncoder::load(&ctx.resolve(&config.model_dir))?);
    let cache = EmbeddingCache::open(&ctx.resolve(&config.cache_dir), encoder.id(), encoder.dim())?;
    Ok(Loaded { encoder, cache })
}

fn train_annotations(ctx: &BuildContext, config: &EmotionTaggerConfig) -> anyhow::Result<PathBuf> {
    match &config.train.annotations {
        Some(p) => Ok(ctx.resolve(p)),
        None => data_file("emotion/annotations_train.jsonl"),
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?).with_context(|| format!("writing {}", path.display()))
}

/// Train the chosen stage.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let (ctx, config) = emotion_stage(&args.recipe)?;
    let ctx = &ctx;
    let checkpoint = ctx.resolve(&config.checkpoint);
    let cache_dir = ctx.resolve(&config.cache_dir);
    let mut l = load_encoder(ctx, &config)?;
    let t0 = Instant::now();
    let tagger = match args.stage {
        TrainStage::Emotion => {
            let train_path = train_annotations(ctx, &config)?;
            let train = load(&train_path)?;
            let (tagger, report) =
                train_tagger(Arc::clone(&l.encoder), Some(&mut l.cache), &train, &config.train, &checkpoint, true)?;
            write_json(&checkpoint.join("train_report.json"), &report)?;
            let holdout = report.holdout.as_ref().map_or(0.0, |m| m.recall_2);
            eprintln!(
                "emotion tagger: trained on {} annotations ({} held out) in {:.1} s (embedding {:.1} s, training {:.1} s); \
                 held-out Recall@2 {holdout:.4} at epoch {}; saved to {}",
                report.n_train,
                report.n_holdout,
                t0.elapsed().as_secs_f64(),
                report.embed_seconds,
                report.train_seconds,
                report.best_epoch,
                checkpoint.display()
            );
            let test_path = data_file("emotion/annotations_test.jsonl")?;
            let test = load(&test_path)?;
            let mut eval =
                evaluate_file(&tagger, &l.encoder, Some(&cache_dir), &train, &test, config.threshold as f32, true)?;
            eval.file = test_path.display().to_string();
            write_json(&checkpoint.join("eval_annotations_test.json"), &eval)?;
            println!("{}", eval.table());
            tagger
        }
        TrainStage::EmotionLabels => EmotionTagger::load(&checkpoint, Arc::clone(&l.encoder))?,
    };
    if args.no_labels {
        return Ok(());
    }
    let labels = ctx.resolve(&config.labels_file);
    let data_dir = ecr::data::data_dir()?;
    let summary = label_redial(&tagger, Some(&cache_dir), &data_dir, &labels, config.threshold as f32, true)?;
    eprintln!(
        "labelled {} ReDial seeker messages in {:.1} s ({:.0}/s) -> {}",
        summary.messages,
        summary.seconds,
        summary.messages as f64 / summary.seconds.max(1e-9),
        labels.display()
    );
    Ok(())
}

/// Evaluate the chosen stage.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    if args.stage != TrainStage::Emotion {
        bail!("ecr eval: --stage {:?} cannot be evaluated; use --stage emotion", args.stage);
    }
    let (ctx, config) = emotion_stage(&args.recipe)?;
    let ctx = &ctx;
    let l = load_encoder(ctx, &config)?;
    let checkpoint = ctx.resolve(&config.checkpoint);
    let tagger = EmotionTagger::load(&checkpoint, Arc::clone(&l.encoder))?;
    let test_path = match &args.annotations {
        Some(p) => p.clone(),
        None => data_file("emotion/annotations_test.jsonl")?,
    };
    let test = load(&test_path)?;
    let train = load(&train_annotations(ctx, &config)?)?;
    let progress = !args.json;
    let mut eval: EvalReport = evaluate_file(
        &tagger,
        &l.encoder,
        Some(&ctx.resolve(&config.cache_dir)),
        &train,
        &test,
        config.threshold as f32,
        progress,
    )?;
    eval.file = test_path.display().to_string();
    let stem = test_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    let out = checkpoint.join(format!("eval_{stem}.json"));
    write_json(&out, &eval)?;
    if args.json {
        println!("{}", serde_json::to_string(&eval)?);
    } else {
        println!("{}", eval.table());
        eprintln!("metrics written to {}", out.display());
    }
    Ok(())
}
