//! ECR's m(f) written in Lua (recipes/lua/feedback.lua, through the real Lua
//! stage) and the built-in `feedback_mapping` give bit-identical instance
//! weights for every feedback, item and emotion state: the recommender's loss
//! is `mean m_i · CE_i` over those weights and its training is seeded and
//! deterministic (plugins/neural, `same_weights_same_training...`), so
//! `ecr-lua-feedback.toml` trains to exactly `ecr.toml`'s metrics (measured:
//! equal to every digit over 3 seeds, docs/results/comparison.md).

use ecr::{Emotion, EmotionDist, Engine, Feedback, ItemFeedback, Turn, Utterance};
use std::path::PathBuf;

fn recipe(name: &str, feedback: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ecr-feedback-lua-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lua = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("recipes/lua/feedback.lua");
    // The feedback stage reads `feedback`, which some earlier stage must write: a Lua stage that
    // passes the caller's turn through unchanged stands in for the data layer's feedback reader and the tagger.
    let given = dir.join("given.lua");
    std::fs::write(&given, "function run(turn) end\n").unwrap();
    let text = format!(
        "[recipe]\nname = \"{name}\"\npipeline = [\"given\", \"feedback\"]\n\n\
         [stages.given]\nuse = \"lua\"\nwith = {{ script = \"{}\", writes = [\"feedback\", \"user.emotions\"] }}\n\n\
         [stages.feedback]\n{}\n",
        given.display(),
        feedback.replace("LUA", &lua.display().to_string())
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Every feedback on several items, with and without user emotions.
fn turns() -> Vec<Turn> {
    let mut out = Vec::new();
    for emotions in [None, Some((Emotion::Like, 0.7)), Some((Emotion::Negative, 0.4))] {
        let mut t = Turn::new(vec![Utterance::new(ecr::Role::Seeker, "hi")], "I liked it");
        if let Some((e, p)) = emotions {
            let mut d = EmotionDist::default();
            d.set(e, p);
            t.user.emotions = Some(d);
        }
        t.feedback = [Feedback::Liked, Feedback::Disliked, Feedback::NotSaid, Feedback::Liked]
            .iter()
            .enumerate()
            .map(|(i, &feedback)| ItemFeedback { item: 100 + i as u32, feedback, weight: None })
            .collect();
        out.push(t);
    }
    out
}

fn weights(engine: &Engine) -> Vec<Vec<(u32, f32)>> {
    turns()
        .into_iter()
        .map(|mut t| {
            engine.run(&mut t).unwrap();
            t.feedback.iter().map(|f| (f.item, f.weight.expect("the stage writes every weight"))).collect()
        })
        .collect()
}

#[test]
fn lua_and_builtin_feedback_mappings_weigh_every_instance_identically() {
    let builtin = Engine::from_recipe(recipe("builtin", "use = \"feedback_mapping\"")).unwrap();
    let lua =
        Engine::from_recipe(recipe("lua", "use = \"lua\"\nwith = { script = \"LUA\", hook = \"weight\" }")).unwrap();
    let (a, b) = (weights(&builtin), weights(&lua));
    assert_eq!(a, b);
    // ECR's run: liked 2.0, disliked 1.0, not said 0.5 (so the test could fail on a wrong table).
    assert_eq!(a[0], vec![(100, 2.0), (101, 1.0), (102, 0.5), (103, 2.0)]);
}
