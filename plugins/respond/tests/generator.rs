//! The `generator` stage on the real SmolLM2 weights: streaming, cancellation,
//! determinism, the no-repeat-3-gram rule. Needs `models/fetch.sh`.

use ecr_engine::{CancelToken, Engine, EngineError, Event, Interrupted, Registry, TurnOptions};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn engine() -> Engine {
    let dir = std::env::temp_dir().join(format!("ecr-generator-{}", std::process::id())).join("recipes");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prompt.lua"),
        r#"
function run(turn)
  turn.prompt = "<|im_start|>system\nYou are a warm movie recommender.<|im_end|>\n<|im_start|>user\n"
    .. turn.user.text .. "<|im_end|>\n<|im_start|>assistant\nI think you would love Alien."
  turn.ext.response_prefix = "I think you would love Alien."
end
"#,
    )
    .unwrap();
    let model = root().join("models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.is_file(), "run models/fetch.sh first");
    std::fs::write(
        dir.join("gen.toml"),
        format!(
            r#"
[recipe]
name = "gen"
pipeline = ["prompt", "generate"]
[stages.prompt]
use = "lua"
with = {{ script = "prompt.lua", reads = ["user.text"], writes = ["prompt", "ext.response_prefix"] }}
[stages.generate]
use = "generator"
[stages.generate.with]
model = {:?}
[stages.generate.with.generate]
max_new_tokens = 40
[stages.generate.with.generate.sampling]
no_repeat_ngram = 3
"#,
            model.display().to_string()
        ),
    )
    .unwrap();
    let mut registry = Registry::new();
    registry.register(ecr_respond::GeneratorFactory).unwrap();
    Engine::from_recipe_with(dir.join("gen.toml"), &registry).unwrap()
}

#[test]
fn streams_the_response_deterministically_and_stops_when_cancelled() {
    let engine = engine();
    let mut session = engine.session();
    let mut pieces = Vec::new();
    let out = session
        .turn_with("I want a scary space movie", &TurnOptions::default(), |e| {
            if let Event::Token { text } = e.event {
                pieces.push(text);
            }
        })
        .unwrap();
    let response = out.response().unwrap().to_string();
    assert!(response.starts_with("I think you would love Alien."), "{response}");
    assert!(response.len() > "I think you would love Alien.".len() + 10, "the model continued: {response}");
    assert!(pieces.len() > 5, "streamed token by token: {pieces:?}");
    assert_eq!(pieces.concat(), response, "the stream is the response");

    // Greedy generation is deterministic.
    let again = engine.session().turn("I want a scary space movie").unwrap();
    assert_eq!(again.response(), Some(response.as_str()));

    // No word trigram repeats in the generated part (the rule bans repeated token 3-grams).
    let words: Vec<&str> = response.split_whitespace().collect();
    let trigrams: Vec<_> = words.windows(3).collect();
    let unique: std::collections::HashSet<_> = trigrams.iter().collect();
    assert_eq!(unique.len(), trigrams.len(), "{response}");

    // Cancelling mid-generation stops it and leaves the history unchanged.
    let before = session.history().len();
    let cancel = CancelToken::new();
    let options = TurnOptions { cancel: Some(cancel.clone()), deadline: None };
    let mut n = 0;
    let err = session
        .turn_with("Something funnier?", &options, |e| {
            if matches!(e.event, Event::Token { .. }) {
                n += 1;
                if n == 3 {
                    cancel.cancel();
                }
            }
        })
        .unwrap_err();
    assert!(matches!(err, EngineError::Interrupted { why: Interrupted::Cancelled, .. }), "{err}");
    assert!(n <= 4, "generation stopped at once, got {n} tokens");
    assert_eq!(session.history().len(), before);
}
