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
        s.push_str(&why(x, &o.turn.candidates));
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

/// One line of `why`: a context entity (and branch) with its summed values and the user's
/// emotions towards it (those of its first slot that has some).
struct Merged {
    label: String,
    values: [f64; 2],
    felt: String,
}

/// Add `values` to the entry labelled `label`, or start one.
fn merge(list: &mut Vec<Merged>, label: String, values: [f64; 2], felt: String) {
    match list.iter_mut().find(|m| m.label == label) {
        Some(m) => {
            m.values[0] += values[0];
            m.values[1] += values[1];
            if m.felt.is_empty() {
                m.felt = felt;
            }
        }
        None => list.push(Merged { label, values, felt }),
    }
}

/// Why the recommender ranked as it did: for the top three items, the context entities whose
/// parts of the score are largest (with the emotion fusion's part) and the score's other parts;
/// then the entities with the most attention and the local/global shares.
fn why(x: &serde_json::Value, candidates: &[ecr::Candidate]) -> String {
    let slots = x["slots"].as_array().map(Vec::as_slice).unwrap_or_default();
    let felt = |slot: &serde_json::Value| -> String {
        let emo: Vec<String> = slot["emotions"]
            .as_array()
            .map(|e| e.iter().filter_map(|p| Some(format!("{} {:.2}", p[0].as_str()?, p[1].as_f64()?))).collect())
            .unwrap_or_default();
        if emo.is_empty() { String::new() } else { format!(", felt: {}", emo.join(", ")) }
    };
    let mut s = String::new();
    // How each top item's score is made: the context entities' parts (exact), then the rest.
    let items = x["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    for (item, c) in items.iter().zip(candidates).take(3) {
        // An entity mentioned twice fills two slots: its parts are summed, per branch.
        let mut parts: Vec<Merged> = Vec::new();
        for p in item["parts"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let Some(slot) = p["slot"].as_u64().and_then(|j| slots.get(j as usize)) else { continue };
            let label = format!("{} [{}]", slot["name"].as_str().unwrap_or("?"), p["branch"].as_str().unwrap_or("?"));
            let values = [p["score"].as_f64().unwrap_or(0.0), p["emotions"].as_f64().unwrap_or(0.0)];
            merge(&mut parts, label, values, felt(slot));
        }
        parts.sort_by(|a, b| b.values[0].abs().total_cmp(&a.values[0].abs()));
        let top: Vec<String> = parts
            .iter()
            .take(3)
            .map(|m| {
                let [score, emotions] = m.values;
                let emo = if emotions.abs() >= 0.005 {
                    format!(" (emotions {emotions:+.2}{})", m.felt)
                } else {
                    String::new()
                };
                format!("{} {score:+.2}{emo}", m.label)
            })
            .collect();
        let f = |k: &str| item[k].as_f64().unwrap_or(0.0);
        // A model whose text summary does not join the user representation has no text part.
        let text = item["text"].as_f64().map(|t| format!(", dialogue text {t:+.2}")).unwrap_or_default();
        s.push_str(&format!(
            "   why {} ({:.2}): {}\n     local {:+.2}, global {:+.2} (emotions {:+.2}){text}, biases {:+.2}\n",
            c.name,
            c.score,
            if top.is_empty() { "no context entities".to_string() } else { top.join("; ") },
            f("local"),
            f("global"),
            f("emotions"),
            f("bias"),
        ));
    }
    // Attention per entity (its slots summed).
    let mut att: Vec<Merged> = Vec::new();
    for slot in slots {
        let a = slot["local_attention"].as_f64().unwrap_or(0.0) + slot["global_attention"].as_f64().unwrap_or(0.0);
        merge(&mut att, slot["name"].as_str().unwrap_or("?").to_string(), [a, 0.0], felt(slot));
    }
    att.sort_by(|a, b| b.values[0].total_cmp(&a.values[0]));
    let top: Vec<String> =
        att.iter().take(3).map(|m| format!("{}{} {:.0}%", m.label, m.felt, m.values[0] * 100.0)).collect();
    if !top.is_empty() {
        s.push_str(&format!("   attention: {}", top.join("; ")));
        if let (Some(l), Some(g)) = (x["local_share"].as_f64(), x["global_share"].as_f64()) {
            s.push_str(&format!(" (local {:.0}%, global {:.0}%)", l * 100.0, g * 100.0));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn why_names_the_parts_of_each_top_score_largest_first() {
        let x = serde_json::json!({
            "slots": [
                { "name": "The Avengers (2012)", "emotions": [["like", 0.9]], "local_attention": 0.3, "global_attention": 0.2 },
                { "name": "Thor (2011)", "emotions": [], "local_attention": 0.1, "global_attention": 0.4 },
                { "name": "Thor (2011)", "emotions": [], "local_attention": 0.0, "global_attention": 0.0 },
            ],
            "local_share": 0.4, "global_share": 0.6,
            "items": [{
                "item": 7, "score": 5.0,
                "parts": [
                    { "slot": 0, "branch": "local", "score": 0.2, "emotions": 0.0 },
                    { "slot": 1, "branch": "local", "score": -0.5, "emotions": 0.0 },
                    { "slot": 2, "branch": "local", "score": -0.4, "emotions": 0.0 },
                    { "slot": 0, "branch": "global", "score": 1.5, "emotions": 0.25 },
                ],
                "local": -0.7, "global": 1.5, "emotions": 0.25, "text": 1.2, "bias": 3.0,
            }],
        });
        let c = [ecr::Candidate { item: 7, name: "Wonder Woman (2017)".into(), score: 5.0 }];
        let s = why(&x, &c);
        assert!(
            s.contains(
                "why Wonder Woman (2017) (5.00): The Avengers (2012) [global] +1.50 (emotions +0.25, felt: like 0.90); Thor (2011) [local] -0.90; The Avengers (2012) [local] +0.20\n"
            ),
            "{s}"
        );
        assert!(s.contains("local -0.70, global +1.50 (emotions +0.25), dialogue text +1.20, biases +3.00"), "{s}");
        assert!(
            s.contains("attention: The Avengers (2012), felt: like 0.90 50%; Thor (2011) 50% (local 40%, global 60%)"),
            "{s}"
        );
        assert_eq!(why(&serde_json::json!({}), &[]), "", "nothing to explain, nothing printed");
        // Without a text part (text_summary = false) none is shown, not a zero.
        let mut no_text = x.clone();
        no_text["items"][0].as_object_mut().unwrap().remove("text");
        let s = why(&no_text, &c);
        assert!(s.contains("local -0.70, global +1.50 (emotions +0.25), biases +3.00"), "{s}");
    }
}
