//! `ecr demo`: the main job. Trains the emotion tagger once if the recipe has
//! one that is not trained yet, then replays a real ReDial test dialogue
//! through the recipe's pipeline, showing what the engine reads at each turn.

use crate::cli::chat::explain;
use crate::cli::train::{TrainArgs, TrainStage, train};
use clap::Args;
use ecr::data::{Conversation, load_conversations};
use ecr::lua::{LuaLimits, LuaWeightFn};
use ecr::neural::EmotionTaggerConfig;
use ecr::neural::tagger::checkpoint_files;
use ecr::{Engine, Feedback, Recipe, Role, Utterance};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `ecr demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// The recipe to run.
    #[arg(short, long, default_value = "recipes/ecr.toml")]
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
    ensure_tagger(&args.recipe)?;
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
    for (role, text) in turns(conv) {
        let shown = write_out(conv, &text);
        match role {
            Role::Seeker => {
                println!("seeker> {shown}");
                match session.turn(&text) {
                    Ok(out) => print!("{}", explain(&out)),
                    Err(e) => println!("   error: {e}"),
                }
            }
            Role::Recommender => {
                println!("recommender (ReDial)> {shown}");
                session.push(Utterance::new(Role::Recommender, text));
            }
        }
    }
    feedback_summary(conv, &args.mapping)?;
    Ok(ExitCode::SUCCESS)
}

/// Train the recipe's emotion tagger if it has one and its checkpoint is missing.
fn ensure_tagger(recipe_path: &Path) -> anyhow::Result<()> {
    let recipe = Recipe::load(recipe_path, &ecr::registry())?;
    let Some((id, config)) = recipe.stage_config::<EmotionTaggerConfig>("emotion_tagger")? else { return Ok(()) };
    let context = recipe.stage(&id).map_or(recipe.context(), |s| s.context());
    let checkpoint = context.resolve(&config.checkpoint);
    if checkpoint_files(&checkpoint).iter().all(|p| p.is_file()) {
        return Ok(());
    }
    eprintln!(
        "The emotion tagger of stage {id:?} is not trained yet ({}): training it now, once.",
        checkpoint.display()
    );
    train(TrainArgs { recipe: recipe_path.to_path_buf(), stage: TrainStage::Emotion, no_labels: true })
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

/// Consecutive messages of one sender merged into one turn (raw text, `@<id>` kept).
fn turns(conv: &Conversation) -> Vec<(Role, String)> {
    let mut out: Vec<(Role, String)> = Vec::new();
    for m in &conv.messages {
        let role = conv.role_of(m.sender).unwrap_or(Role::Recommender);
        match out.last_mut() {
            Some((r, text)) if *r == role => {
                text.push(' ');
                text.push_str(&m.text);
            }
            _ => out.push((role, m.text.clone())),
        }
    }
    out
}

/// `text` with `@<id>` written out as the conversation's movie titles, for display.
fn write_out(conv: &Conversation, text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let digits: String = rest[at + 1..].chars().take_while(char::is_ascii_digit).collect();
        let title = digits.parse::<u32>().ok().and_then(|id| conv.movie_mentions.get(&id).cloned().flatten());
        match title {
            Some(t) => out.push_str(&t),
            None => out.push_str(&rest[at..at + 1 + digits.len()]),
        }
        rest = &rest[at + 1 + digits.len()..];
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
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
