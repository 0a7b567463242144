//! `ecr chat`: run any recipe turn by turn on stdin.

use clap::Args;
use ecr::{Engine, Event, TurnOptions, TurnOutput};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `ecr chat`.
#[derive(Args)]
pub struct ChatArgs {
    /// The recipe to run.
    #[arg(short, long)]
    pub recipe: PathBuf,
    /// After each turn, show the linked entities, the emotion distribution and per-stage timings.
    #[arg(long)]
    pub explain: bool,
    /// Print each turn's whole record as one JSON line instead of text.
    #[arg(long, conflicts_with = "explain")]
    pub json: bool,
}

/// Chat until end of input. A failed turn prints its error and the chat goes on.
pub fn run(args: ChatArgs) -> anyhow::Result<ExitCode> {
    let engine = Engine::from_recipe(&args.recipe)?;
    let mut session = engine.session();
    let interactive = std::io::stdin().is_terminal();
    let stdout = std::io::stdout();
    let mut failures = 0usize;
    let mut turns = 0usize;
    if interactive {
        eprintln!(
            "recipe {:?}: {} stages. Type a message; Ctrl-D ends.",
            engine.recipe().name(),
            engine.stages().count()
        );
    }
    if !args.json && !engine.stages().any(|(_, _, io)| io.writes.contains(&ecr::Field::Response)) {
        eprintln!(
            "(no stage of recipe {:?} writes a response: showing what the pipeline reads)",
            engine.recipe().name()
        );
    }
    let mut stdin = std::io::stdin().lock();
    let mut raw = Vec::new();
    loop {
        if interactive {
            eprint!("you> ");
            std::io::stderr().flush()?;
        }
        raw.clear();
        if stdin.read_until(b'\n', &mut raw)? == 0 {
            break;
        }
        turns += 1;
        // A bad line gets a message and the chat goes on.
        let line = match std::str::from_utf8(&raw) {
            Ok(l) => l.trim_end_matches(['\n', '\r']).to_string(),
            Err(e) => {
                failures += 1;
                writeln!(stdout.lock(), "error: line {turns} is not valid UTF-8 ({e}): skipped; the chat goes on")?;
                continue;
            }
        };
        if line.trim().is_empty() {
            turns -= 1;
            continue;
        }
        let mut out = stdout.lock();
        if !interactive && !args.json {
            writeln!(out, "you> {line}")?;
        }
        // Generated text is printed as it arrives; the rest after the turn.
        let mut streamed = false;
        let result = session.turn_with(&line, &TurnOptions::default(), |e| {
            if args.json {
                return;
            }
            if let Event::Token { text } = &e.event {
                if !streamed {
                    let _ = write!(out, "ecr> ");
                    streamed = true;
                }
                let _ = write!(out, "{text}");
                let _ = out.flush();
            }
        });
        if streamed {
            writeln!(out)?;
        }
        match result {
            Ok(o) if args.json => writeln!(out, "{}", serde_json::to_string(&o.turn)?)?,
            Ok(o) => {
                if args.explain {
                    write!(out, "{}", explain(&o))?;
                }
                if let (Some(r), false) = (o.response(), streamed) {
                    writeln!(out, "ecr> {r}")?;
                }
            }
            Err(e) => {
                failures += 1;
                writeln!(out, "error: {e}")?;
            }
        }
    }
    eprintln!("{turns} turns, {failures} failed");
    Ok(if failures > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Entities, emotions and timings of one turn, as indented lines.
pub fn explain(o: &TurnOutput) -> String {
    let mut s = String::new();
    let u = &o.turn.user;
    if u.entities.is_empty() {
        s.push_str("   entities: none\n");
    } else {
        let names: Vec<String> = u
            .entities
            .iter()
            .map(|e| match e.entity {
                Some(id) => format!("{} [{:?} #{id}]", e.name, e.kind),
                None => format!("{} [{:?}, not in KG]", e.name, e.kind),
            })
            .collect();
        s.push_str(&format!("   entities: {}\n", names.join("; ")));
    }
    match &u.emotions {
        Some(d) => {
            let top: Vec<String> =
                d.ranked().iter().filter(|(_, p)| *p >= 0.005).take(4).map(|(e, p)| format!("{e} {p:.2}")).collect();
            s.push_str(&format!("   emotions: {}\n", top.join(", ")));
        }
        None => s.push_str("   emotions: not tagged\n"),
    }
    if !o.turn.candidates.is_empty() {
        s.push_str("   top items:\n");
        for c in o.turn.candidates.iter().take(5) {
            s.push_str(&format!("     {:<45} {:.3}\n", c.name, c.score));
        }
    }
    if let Some(x) = o.turn.ext.get("explain") {
        s.push_str(&why(x));
    }
    for p in &o.turn.passages {
        s.push_str(&format!("   passage ({}): {}\n", p.source, p.text));
    }
    for f in &o.turn.facts {
        s.push_str(&format!("   fact: {} {} {}\n", f.head, f.relation, f.tail));
    }
    if let Some(p) = &o.turn.prompt {
        s.push_str("   prompt:\n");
        for line in p.lines() {
            s.push_str(&format!("     | {line}\n"));
        }
    }
    for (k, v) in o.turn.ext.iter().filter(|(k, _)| k.as_str() != "explain") {
        s.push_str(&format!("   ext.{k}: {v}\n"));
    }
    let timings: Vec<String> =
        o.trace.iter().map(|t| format!("{} {:.2}ms", t.stage, t.duration.as_secs_f64() * 1e3)).collect();
    s.push_str(&format!("   stages: {}\n", timings.join(", ")));
    s
}

/// Why the recommender ranked as it did: the context entities with the most
/// attention (and the user's emotions towards them), and the local/global shares.
fn why(x: &serde_json::Value) -> String {
    let mut slots: Vec<(f64, String)> = x["slots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let att =
                        s["local_attention"].as_f64().unwrap_or(0.0) + s["global_attention"].as_f64().unwrap_or(0.0);
                    let emo: Vec<String> = s["emotions"]
                        .as_array()
                        .map(|e| {
                            e.iter().filter_map(|p| Some(format!("{} {:.2}", p[0].as_str()?, p[1].as_f64()?))).collect()
                        })
                        .unwrap_or_default();
                    let emo = if emo.is_empty() { String::new() } else { format!(" (felt: {})", emo.join(", ")) };
                    (att, format!("{}{emo}", s["name"].as_str().unwrap_or("?")))
                })
                .collect()
        })
        .unwrap_or_default();
    slots.sort_by(|a, b| b.0.total_cmp(&a.0));
    let top: Vec<String> = slots.iter().take(3).map(|(a, n)| format!("{n} {:.0}%", a * 100.0)).collect();
    let mut s = String::new();
    if !top.is_empty() {
        s.push_str(&format!("   why: attention on {}\n", top.join("; ")));
    }
    if let (Some(l), Some(g)) = (x["local_share"].as_f64(), x["global_share"].as_f64()) {
        s.push_str(&format!("   branches: local {:.0}%, global {:.0}%\n", l * 100.0, g * 100.0));
    }
    s
}
