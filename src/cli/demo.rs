//! `ecr demo`: the main job. Trains what the recipe needs and is not trained
//! yet (through the same contract as `ecr train`), then replays a real ReDial
//! test dialogue through the recipe's pipeline, showing what the engine reads
//! at each turn.

use crate::cli::chat::explain;
use clap::Args;
use ecr::data::{Conversation, load_conversations};
use ecr::lua::{LuaLimits, LuaWeightFn};
use ecr::train::{JobOptions, TrainOptions, recipe_status, train_recipe};
use ecr::{Engine, Event, Feedback, Recipe, Role, TurnOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The recipe the demo starts from: quick to train on 2 cores.
pub const QUICK_RECIPE: &str = "recipes/ecr-quick.toml";
/// The full recipe, trained by `ecr train -r recipes/ecr.toml`.
pub const FULL_RECIPE: &str = "recipes/ecr.toml";

/// Options of `ecr demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// The recipe to run.
    #[arg(short, long, default_value = QUICK_RECIPE)]
    pub recipe: PathBuf,
    /// The ReDial test conversation to replay (`conversationId`); default: the
    /// first one with at least 10 messages and both liked and disliked movies.
    #[arg(long)]
    pub conversation: Option<String>,
    /// The feedback mapping m(f) to show the seeker's feedback through.
    #[arg(long, default_value = "recipes/lua/feedback.lua")]
    pub mapping: PathBuf,
}

/// Run the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    ensure_trained(&args.recipe)?;
    let engine = Engine::from_recipe(&args.recipe)?;
    let test = ecr::data::data_dir()?.join("redial/test.jsonl");
    let conversations = load_conversations(&test)?;
    let conv = pick(&conversations, args.conversation.as_deref())
        .ok_or_else(|| anyhow::anyhow!("no conversation {:?} in {}", args.conversation, test.display()))?;
    println!(
        "Replaying ReDial test conversation {} ({} messages) through recipe {:?} ({}).",
        conv.id,
        conv.messages.len(),
        engine.recipe().name(),
        engine.stages().map(|(id, use_name, _)| format!("{id}: {use_name}")).collect::<Vec<_>>().join(" → ")
    );
    println!("Seeker turns go through the pipeline; the recommender's real replies join the history.\n");
    let mut session = engine.session();
    let (script, _) = ecr::data::replay::script(conv);
    for u in script {
        let shown = write_out(conv, &u.text);
        match u.role {
            Role::Seeker => {
                println!("seeker> {shown}");
                // The response streams as it is generated; what the engine read follows.
                let mut streamed = false;
                let result = session.turn_with(&u.text, &TurnOptions::default(), |e| {
                    if let Event::Token { text } = &e.event {
                        if !streamed {
                            print!("ecr> ");
                            streamed = true;
                        }
                        print!("{text}");
                        let _ = std::io::stdout().flush();
                    }
                });
                if streamed {
                    println!();
                }
                match result {
                    Ok(out) => print!("{}", explain(&out)),
                    Err(e) => println!("   error: {e}"),
                }
            }
            Role::Recommender => {
                println!("recommender (ReDial)> {shown}");
                session.push(u);
            }
        }
    }
    feedback_summary(conv, &args.mapping)?;
    if args.recipe == Path::new(QUICK_RECIPE) {
        println!(
            "\nThis was {QUICK_RECIPE}, whose stages train in minutes. The full recipe (fine-tuned tagger): \
             `cargo run --release -- train -r {FULL_RECIPE}`, then `cargo run --release -- demo -r {FULL_RECIPE}`."
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Train the recipe's trainable stages that are missing or out of date.
fn ensure_trained(recipe_path: &Path) -> anyhow::Result<()> {
    let recipe = Recipe::load(recipe_path, &ecr::registry())?;
    let pending: Vec<String> = recipe_status(&recipe)?
        .into_iter()
        .filter(|(_, s)| s.needs_training())
        .map(|(id, s)| format!("{id}: {s}"))
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    eprintln!("Training what recipe {:?} needs first, once ({}).", recipe.name(), pending.join("; "));
    let options = TrainOptions { job: JobOptions { progress: true, ..Default::default() }, ..Default::default() };
    for outcome in train_recipe(&recipe, &options)? {
        eprintln!("{outcome}");
    }
    Ok(())
}

/// The requested conversation, or the first long one with mixed feedback.
fn pick<'a>(conversations: &'a [Conversation], id: Option<&str>) -> Option<&'a Conversation> {
    match id {
        Some(id) => conversations.iter().find(|c| c.id == id),
        None => conversations.iter().find(|c| {
            let fb: Vec<Feedback> = c.movie_mentions.keys().map(|&m| c.seeker_feedback(m)).collect();
            c.messages.len() >= 10 && fb.contains(&Feedback::Liked) && fb.contains(&Feedback::Disliked)
        }),
    }
}

/// `text` with `@<id>` written out as the conversation's movie titles, for display.
fn write_out(conv: &Conversation, text: &str) -> String {
    ecr::data::linker::write_out_movies(text, |id| conv.movie_mentions.get(&id).and_then(|t| t.as_deref()))
}

/// The seeker's questionnaire answers and the weight m(f) the mapping gives them.
fn feedback_summary(conv: &Conversation, mapping: &Path) -> anyhow::Result<()> {
    let m = LuaWeightFn::load("demo", mapping, LuaLimits::default())?;
    println!("\nThe seeker's own feedback (questionnaire) and ECR's m(f) from {}:", mapping.display());
    for (&movie, title) in &conv.movie_mentions {
        let f = conv.seeker_feedback(movie);
        let w = m.weight(movie, f, None)?;
        let title = title.as_deref().map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "));
        println!("   {:<45} {:<9} m(f) = {w:.1}", title.as_deref().unwrap_or("?"), format!("{f:?}"));
    }
    Ok(())
}
