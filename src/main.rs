//! The `ecr` command-line tool.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// ecr: empathetic conversational recommendation, driven by TOML recipes.
#[derive(Parser)]
#[command(name = "ecr", version, about, long_about = None)]
struct Cli {
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
}

fn main() -> ExitCode {
    cli::init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Recipe(cmd) => cli::recipe::run(cmd),
        Command::Chat(args) => cli::chat::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
