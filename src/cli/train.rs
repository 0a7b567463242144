//! `ecr train` and `ecr eval`: the recipe's trainable stages, through the
//! engine's training contract ([`ecr::train`]). The CLI names no stage kind.

use clap::Args;
use ecr::Recipe;
use ecr::train::{JobOptions, TrainOptions, evaluate_recipe, train_recipe};
use std::path::PathBuf;
use std::time::Instant;

/// Options of `ecr train`.
#[derive(Args)]
pub struct TrainArgs {
    /// The recipe whose trainable stages to train, in pipeline order.
    #[arg(short, long)]
    pub recipe: PathBuf,
    /// Train only this stage (its id in the recipe, e.g. `emotion`).
    #[arg(long, conflicts_with = "through")]
    pub stage: Option<String>,
    /// Train the stages up to and including this one (e.g. `recommend`: not the generator's adapter).
    #[arg(long)]
    pub through: Option<String>,
    /// Retrain stages that are up to date.
    #[arg(long)]
    pub force: bool,
    /// Override the configured seed.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Options of `ecr eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// The recipe whose trained stages to evaluate.
    #[arg(short, long)]
    pub recipe: PathBuf,
    /// Evaluate only this stage (its id in the recipe, e.g. `emotion`).
    #[arg(long)]
    pub stage: Option<String>,
    /// An annotation file (emotion/annotations_*.jsonl format) for the emotion tagger; default: the test annotations.
    #[arg(long)]
    pub annotations: Option<PathBuf>,
    /// Number of turns to generate responses for (stages that generate).
    #[arg(long)]
    pub responses: Option<usize>,
    /// The ReDial dialogues to evaluate on: `test`, or `valid` (the validation split carved from
    /// train.jsonl) to choose settings without looking at the test split (recommender, generator).
    #[arg(long, default_value = "test")]
    pub split: ecr::EvalSplit,
    /// Print the metrics as one JSON object on stdout (one stage: its metrics; several: keyed by stage id).
    #[arg(long)]
    pub json: bool,
}

/// Train the recipe's trainable stages.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let recipe = Recipe::load(&args.recipe, &ecr::registry())?;
    let options = TrainOptions {
        force: args.force,
        stage: args.stage,
        through: args.through,
        job: JobOptions { seed: args.seed, progress: true, ..Default::default() },
    };
    let start = Instant::now();
    let outcomes = train_recipe(&recipe, &options)?;
    for o in &outcomes {
        eprintln!("{o}");
    }
    let trained = outcomes.iter().filter(|o| matches!(o, ecr::train::TrainOutcome::Trained { .. })).count();
    eprintln!(
        "recipe {:?}: {trained} of {} trainable stages trained, {} up to date, in {:.1} s (run dir {})",
        recipe.name(),
        outcomes.len(),
        outcomes.len() - trained,
        start.elapsed().as_secs_f64(),
        recipe.run_dir().display()
    );
    Ok(())
}

/// Evaluate the recipe's trained stages.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let recipe = Recipe::load(&args.recipe, &ecr::registry())?;
    let options = JobOptions {
        annotations: args.annotations,
        responses: args.responses,
        split: args.split,
        progress: !args.json,
        ..Default::default()
    };
    let reports = evaluate_recipe(&recipe, args.stage.as_deref(), &options)?;
    if args.json {
        let value = match reports.as_slice() {
            [(_, one)] => one.metrics.clone(),
            many => serde_json::Value::Object(many.iter().map(|(id, r)| (id.clone(), r.metrics.clone())).collect()),
        };
        println!("{}", serde_json::to_string(&value)?);
    } else {
        for (id, r) in &reports {
            println!("== stage {id:?}\n{}", r.text);
        }
    }
    Ok(())
}
