//! End-to-end: the real ECR pipeline (entity linker + a really trained emotion
//! tagger) on real data, through the CLI and through the library.
//!
//! Needs the weights (`models/fetch.sh`) and the data (`../shared/data`). The
//! tagger of `recipes/ecr-quick.toml` (a head on frozen MiniLM features) is
//! trained from scratch once per test run, in about a minute.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The reading half of ECR (linker + quick tagger): the recommender and generator have tests of their own.
const RECIPE: &str = "recipes/ecr-quick-reading.toml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ecr(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ecr"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ecr");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Train the quick recipe's tagger once for all tests of this file.
fn trained() {
    static TRAINED: OnceLock<()> = OnceLock::new();
    TRAINED.get_or_init(|| {
        assert!(
            root().join("models/all-MiniLM-L6-v2/model.safetensors").is_file(),
            "the MiniLM weights are missing: run models/fetch.sh first"
        );
        let out = ecr(&["train", "-r", RECIPE], "");
        assert!(out.status.success(), "training failed:\n{}", text(&out));
    });
}

#[test]
fn training_a_trained_recipe_again_returns_at_once_and_says_so() {
    trained();
    let start = std::time::Instant::now();
    let out = ecr(&["train", "-r", RECIPE], "");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("stage \"emotion\": up to date"), "{t}");
    assert!(start.elapsed() < std::time::Duration::from_secs(20), "took {:?}", start.elapsed());
    // --stage names a stage by its recipe id; a stage with nothing to train is refused clearly.
    let out = ecr(&["train", "-r", RECIPE, "--stage", "link"], "");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("has nothing to train; trainable stages of recipe \"ecr-quick-reading\": \"emotion\""),
        "{}",
        text(&out)
    );
}

#[test]
fn a_checkpoint_trained_with_another_config_is_refused_naming_the_key() {
    trained();
    let dir = std::env::temp_dir().join(format!("ecr-pipeline-other-{}", std::process::id())).join("recipes");
    std::fs::create_dir_all(&dir).unwrap();
    let quick = root().join(RECIPE);
    let checkpoint = root().join("runs/ecr-quick/emotion");
    std::fs::write(
        dir.join("other.toml"),
        format!(
            "[recipe]\nname = \"other\"\nextends = {:?}\n[stages.emotion.with]\ncheckpoint = {:?}\n[stages.emotion.with.train]\nhidden = 64\n",
            quick.display().to_string(),
            checkpoint.display().to_string()
        ),
    )
    .unwrap();
    let out = ecr(&["chat", "-r", dir.join("other.toml").to_str().unwrap()], "hi\n");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("another configuration: train.hidden (512 → 64)"), "{t}");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn the_trained_tagger_beats_the_baselines_on_the_held_out_test_file() {
    trained();
    let out = ecr(&["eval", "-r", RECIPE, "--stage", "emotion", "--json"], "");
    assert!(out.status.success(), "{}", text(&out));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let r2 = m["recall@2"].as_f64().unwrap();
    let r1 = m["recall@1"].as_f64().unwrap();
    assert!(r2 > 0.85, "Recall@2 {r2}");
    assert!(r1 > 0.65 && r1 <= r2, "Recall@1 {r1}");
    // The tagger is evaluated on annotation files: a ReDial split is refused, saying what to pass.
    let out = ecr(&["eval", "-r", RECIPE, "--stage", "emotion", "--split", "valid"], "");
    assert!(!out.status.success());
    assert!(text(&out).contains("--split valid needs --annotations <file>"), "{}", text(&out));
    let out = ecr(&["eval", "-r", RECIPE, "--split", "validation"], "");
    assert!(!out.status.success());
    assert!(text(&out).contains("expected \"test\" or \"valid\""), "{}", text(&out));
}

#[test]
fn chat_links_entities_and_reads_emotions_of_real_utterances() {
    trained();
    let input = "Hi! I loved The Matrix, any other sci-fi movies like that?\nThank you so much, I will watch it tonight!\nHave you seen @111776 ?\n";
    let out = ecr(&["chat", "-r", RECIPE, "--json"], input);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let turns: Vec<serde_json::Value> =
        t.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(turns.len(), 3, "{t}");

    let names = |turn: &serde_json::Value| -> Vec<String> {
        turn["user"]["entities"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
    };
    let ranked = |turn: &serde_json::Value| -> Vec<String> {
        let e = turn["user"]["emotions"].as_object().expect("emotions are tagged");
        assert_eq!(e.len(), 9, "a distribution over exactly the nine labels: {e:?}");
        let mut v: Vec<(&String, f64)> = e.iter().map(|(k, p)| (k, p.as_f64().unwrap())).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.into_iter().map(|(k, _)| k.clone()).collect()
    };
    let top = |turn: &serde_json::Value| ranked(turn)[0].clone();
    assert_eq!(names(&turns[0]), ["The Matrix (1999)", "Science fiction"], "{t}");
    assert_eq!(turns[0]["user"]["entities"][0]["kind"], "movie");
    assert!(turns[0]["user"]["entities"][0]["entity"].is_u64(), "the movie maps into the KG: {t}");
    // Both readings are right ("I loved X, any other ...?"); which one wins varies between trainings.
    assert!(["like", "curious"].contains(&top(&turns[0]).as_str()), "{t}");
    assert_eq!(top(&turns[1]), "grateful", "{t}");
    assert!(names(&turns[1]).is_empty(), "{t}");
    assert_eq!(names(&turns[2]), ["Super Troopers (2001)"], "ReDial's @<id> mentions link: {t}");
    assert_eq!(top(&turns[2]), "curious", "{t}");
    assert_eq!(turns[2]["history"].as_array().unwrap().len(), 2, "the session keeps the dialogue: {t}");
}

#[test]
fn one_engine_serves_dialogues_from_threads_with_the_real_models() {
    trained();
    let engine = ecr::Engine::from_recipe(root().join(RECIPE)).expect("build the quick ECR recipe");
    std::thread::scope(|s| {
        for i in 0..4 {
            let engine = &engine;
            s.spawn(move || {
                let mut session = engine.session();
                let first = format!("I loved Titanic, it made me cry ({i})");
                let out = session.turn(&first).unwrap();
                assert!(out.turn.user.entities.iter().any(|e| e.name.starts_with("Titanic")), "{:?}", out.turn.user);
                let d = out.turn.user.emotions.expect("tagged");
                assert!(d.get(ecr::Emotion::Like) > 0.1, "{d:?}");
                assert_eq!(out.trace.len(), 2);
                session.push(ecr::Utterance::new(ecr::Role::Recommender, "Have you seen @111776 ?"));
                session.turn("Thanks!").unwrap();
                assert_eq!(session.history().len(), 3);
                assert_eq!(session.history()[0].text, first);
                let linked: Vec<&str> = session.history()[1].entities.iter().map(|e| e.name.as_str()).collect();
                assert_eq!(linked, ["Super Troopers (2001)"], "the linker's work on the history is kept");
            });
        }
    });
}

#[test]
fn the_demo_replays_a_real_redial_dialogue() {
    trained();
    let out = ecr(&["demo", "-r", RECIPE], "");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("Replaying ReDial test conversation 20048 (17 messages) through recipe \"ecr-quick-reading\""),
        "{t}"
    );
    assert!(t.contains("seeker> i watched Iron Man 2 (2010) and a liked it"), "{t}");
    assert!(t.contains("entities: Iron Man 2 (2010) [Movie #"), "{t}");
    assert!(t.contains("recommender (ReDial)> Or Cabin by the Lake (2000)"), "{t}");
    assert!(t.contains("It (2017)                                     Disliked  m(f) = 1.0"), "{t}");
}
