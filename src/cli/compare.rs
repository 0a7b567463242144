//! `ecr compare`: recipes side by side over seeds ([`ecr::compare`]).

use clap::Args;
use ecr::Recipe;
use ecr::compare::{CompareOptions, DEFAULT_METRICS, compare, compare_paired};
use std::path::PathBuf;

/// Options of `ecr compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// The recipes to compare (trained first where needed).
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
    /// The compared stage (its id in the recipes).
    #[arg(long, default_value = "recommend")]
    pub stage: String,
    /// Seeds per recipe: the recipe's own, then 1, 2, ...
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub seeds: u64,
    /// Output directory (default: runs/compare/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compare two recipes instance by instance at their own seeds (Recall@K overall and by
    /// feedback, emotional context, context size, mentioned gold; sign tests) instead.
    #[arg(long, value_name = "K", num_args = 0..=1, default_missing_value = "10")]
    pub paired: Option<usize>,
}

/// Run the comparison and print the table.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let registry = ecr::registry();
    let recipes = args.recipes.iter().map(|p| Recipe::load(p, &registry)).collect::<Result<Vec<_>, _>>()?;
    let options =
        CompareOptions { stage: args.stage, extra_seeds: (1..args.seeds).collect(), out_dir: args.out, progress: true };
    if let Some(k) = args.paired {
        let [a, b] = &recipes[..] else {
            anyhow::bail!("--paired compares exactly two recipes, got {}", recipes.len())
        };
        let (table, file) = compare_paired(a, b, &options, k)?;
        println!("{table}");
        eprintln!("paired comparison written to {}", file.display());
        return Ok(());
    }
    let start = std::time::Instant::now();
    let outcome = compare(&recipes, &options)?;
    println!("{}", outcome.comparison.to_markdown(DEFAULT_METRICS));
    if let Some(e) = &outcome.chart_error {
        eprintln!("warning: no chart: {e}");
    }
    let files: Vec<String> = outcome.files.iter().map(|p| p.display().to_string()).collect();
    eprintln!(
        "compared {} recipes × {} seeds in {:.0} s ({} runs computed, {} from the cache): {}",
        recipes.len(),
        args.seeds,
        start.elapsed().as_secs_f64(),
        outcome.computed,
        outcome.cached,
        files.join(", ")
    );
    Ok(())
}
