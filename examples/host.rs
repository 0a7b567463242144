//! A host application embedding ecr: one engine, several dialogues served from threads.
//!
//! ```text
//! cargo run --release --example host -- [RECIPE]     # default: recipes/ecr.toml
//! ```
//!
//! The engine builds every stage once (models load once) and is shared by
//! reference; each dialogue owns a cheap `Session` that keeps its history.

use std::process::ExitCode;

const DIALOGUES: [&[&str]; 3] = [
    &["Hi! I loved The Matrix, it was so much fun.", "Any other sci-fi like that? Thanks!"],
    &["I'm looking for a comedy for tonight.", "I didn't like Step Brothers at all."],
    &["Titanic made me cry, what a beautiful movie.", "Maybe something romantic like The Notebook?"],
];

fn main() -> ExitCode {
    let recipe = std::env::args().nth(1).unwrap_or_else(|| "recipes/ecr.toml".into());
    let engine = match ecr::Engine::from_recipe(&recipe) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot build {recipe}:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    let transcripts: Vec<Result<String, ecr::EngineError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = DIALOGUES
            .iter()
            .map(|lines| {
                let engine = &engine;
                scope.spawn(move || {
                    let mut session = engine.session();
                    let mut transcript = String::new();
                    for line in *lines {
                        let out = session.turn(line)?;
                        let entities: Vec<&str> = out.turn.user.entities.iter().map(|e| e.name.as_str()).collect();
                        let emotions = out
                            .turn
                            .user
                            .emotions
                            .map(|d| {
                                d.above(0.1).iter().map(|(e, p)| format!("{e} {p:.2}")).collect::<Vec<_>>().join(", ")
                            })
                            .unwrap_or_else(|| "-".into());
                        transcript.push_str(&format!(
                            "user: {line}\n  entities: [{}]  emotions: [{emotions}]  {:.1} ms\n",
                            entities.join(", "),
                            out.total().as_secs_f64() * 1e3
                        ));
                        if let Some(r) = out.response() {
                            transcript.push_str(&format!("ecr: {r}\n"));
                        }
                    }
                    Ok(transcript)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Ok("(thread panicked)".into()))).collect()
    });
    let mut failed = false;
    for (i, t) in transcripts.into_iter().enumerate() {
        match t {
            Ok(t) => println!("--- dialogue {i}\n{t}"),
            Err(e) => {
                failed = true;
                println!("--- dialogue {i} failed: {e}");
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
