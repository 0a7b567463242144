//! The `ecr` command-line tool.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// ecr: empathetic conversational recommendation, driven by TOML recipes.
#[derive(Parser)]
#[command(name = "ecr", version, about, long_about = None)]
struct Cli {
    /// The data directory (holding redial/, kg/, reviews/, emotion/); default: $ECR_DATA_DIR, else
    /// shared/data beside the recipe's or the working directory's ancestors.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check or print recipes.
    #[command(subcommand)]
    Recipe(cli::recipe::RecipeCommand),
    /// Chat with a recipe's pipeline, one user turn per line of stdin.
    Chat(cli::chat::ChatArgs),
    /// The main job: replay a real ReDial dialogue through a recipe (training what it needs first).
    Demo(cli::demo::DemoArgs),
    /// Train a recipe's trainable stages in pipeline order, skipping those that are up to date.
    Train(cli::train::TrainArgs),
    /// Evaluate a recipe's trained stages on their test data.
    Eval(cli::train::EvalArgs),
    /// Compare recipes over seeds: one table (mean ± std, both protocols) as Markdown, CSV and PNG.
    Compare(cli::compare::CompareArgs),
    /// Throughput benchmarks.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
    /// Data statistics, linking report against UniCRS, linker benchmark.
    #[command(subcommand)]
    Data(cli::data::DataCommand),
}

fn main() -> ExitCode {
    // Die quietly when the reader of our output goes away (`ecr data stats | head`),
    // as command-line tools do, instead of panicking in `println!`.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    cli::init_tracing();
    let cli = Cli::parse();
    if let Some(dir) = &cli.data_dir {
        if !dir.is_dir() {
            eprintln!("error: --data-dir {} is not a directory", dir.display());
            return ExitCode::FAILURE;
        }
        // One rule for the data directory everywhere (ecr_engine::paths): the flag sets it.
        // SAFETY: set before any thread starts.
        unsafe { std::env::set_var(ecr::paths::DATA_DIR_ENV, dir) };
    }
    let result = match cli.command {
        Command::Recipe(cmd) => cli::recipe::run(cmd),
        Command::Chat(args) => cli::chat::run(args),
        Command::Demo(args) => cli::demo::run(args),
        Command::Train(args) => cli::train::train(args).map(|()| ExitCode::SUCCESS),
        Command::Eval(args) => cli::train::eval(args).map(|()| ExitCode::SUCCESS),
        Command::Compare(args) => cli::compare::run(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(cmd) => cli::bench::run(cmd).map(|()| ExitCode::SUCCESS),
        Command::Data(cmd) => cli::data::run(cmd).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
