//! `ecr recipe check|show|stages`.

use clap::Subcommand;
use ecr::{Recipe, Registry};
use std::path::PathBuf;
use std::process::ExitCode;

/// What to do with recipes.
#[derive(Subcommand)]
pub enum RecipeCommand {
    /// Validate recipes; print every problem with file:line:column and key.
    Check {
        /// Recipe files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a recipe resolved (after `extends`, defaults filled in) and its pipeline's reads and writes.
    Show {
        /// Recipe file.
        file: PathBuf,
    },
    /// List the stage kinds a recipe can `use`.
    Stages,
}

/// Run a recipe subcommand.
pub fn run(cmd: RecipeCommand) -> anyhow::Result<ExitCode> {
    let registry = ecr::registry();
    match cmd {
        RecipeCommand::Check { files } => Ok(check(&files, &registry)),
        RecipeCommand::Show { file } => {
            let recipe = Recipe::load(&file, &registry)?;
            print!("{}", show(&recipe));
            Ok(ExitCode::SUCCESS)
        }
        RecipeCommand::Stages => {
            for (name, description) in registry.list() {
                println!("{name:<18} {description}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check(files: &[PathBuf], registry: &Registry) -> ExitCode {
    let mut failed = 0;
    for f in files {
        match Recipe::load(f, registry) {
            Ok(r) => println!("ok: {} (recipe {:?}, {} stages)", f.display(), r.name(), r.stages().len()),
            Err(e) => {
                failed += 1;
                for d in &e.0 {
                    println!("error: {d}");
                }
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} recipes are invalid", files.len());
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The resolved recipe followed by a table of the pipeline's data flow.
fn show(recipe: &Recipe) -> String {
    let mut out = recipe.to_toml();
    out.push_str("\n# pipeline\n");
    out.push_str(&format!("# {:<12} {:<16} {:<8} {:<40} writes\n", "stage", "use", "enabled", "reads"));
    for s in recipe.stages() {
        let names = |fs: &[ecr::Field]| fs.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ");
        out.push_str(&format!(
            "# {:<12} {:<16} {:<8} {:<40} {}\n",
            s.id,
            s.use_name,
            s.enabled,
            names(&s.io.reads),
            names(&s.io.writes)
        ));
    }
    out
}
