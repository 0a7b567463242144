//! End-to-end tests of the `ecr` command line (recipe validation, chat).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ecr(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ecr"));
    cmd.args(args).current_dir(root()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run ecr");
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn recipe_check_prints_every_error_with_its_location_and_fails() {
    let out = ecr(&["recipe", "check", "tests/fixtures/typo.toml", "tests/fixtures/flow.toml"], None);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("tests/fixtures/typo.toml:6:7: stages.link.use: unknown stage kind \"entity_linkr\": did you mean \"entity_linker\"?"),
        "{t}"
    );
    assert!(t.contains("tests/fixtures/typo.toml:11:1: stages.emotion.with.treshold: unknown field `treshold`"), "{t}");
    assert!(t.contains("tests/fixtures/flow.toml:8:10: stages.emotion.with.script: file"), "{t}");
    assert!(
        t.contains("stage \"emotion\" reads `user.entities`, which no earlier enabled stage writes; it is written by \"link\" (later in the pipeline)"),
        "{t}"
    );
    assert!(t.contains("2 of 2 recipes are invalid"), "{t}");
}

#[test]
fn recipe_check_names_out_of_range_generator_settings() {
    let out = ecr(&["recipe", "check", "tests/fixtures/bad-generator.toml"], None);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("tests/fixtures/bad-generator.toml:7:22: stages.generate.with.generate.sampling.repetition_penalty: 0: must be a positive number"),
        "{t}"
    );
    assert!(
        t.contains("tests/fixtures/bad-generator.toml:10:17: stages.generate.with.finetune.similar_share: a share of the samples"),
        "{t}"
    );
    assert!(
        t.contains(
            "tests/fixtures/bad-generator.toml:11:16: stages.generate.with.finetune.unlikelihood: a loss weight"
        ),
        "{t}"
    );
    assert!(
        t.contains("tests/fixtures/bad-generator.toml:12:7: stages.generate.with.finetune.itf: the inverse token frequency exponent"),
        "{t}"
    );
}

#[test]
fn every_shipped_recipe_is_valid_and_shows_its_data_flow() {
    let mut recipes: Vec<String> = std::fs::read_dir(root().join("recipes"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.strip_prefix(root()).unwrap_or(&p).display().to_string())
        .collect();
    recipes.sort();
    assert!(recipes.iter().any(|r| r.ends_with("ecr.toml")), "{recipes:?}");
    let mut args = vec!["recipe", "check"];
    args.extend(recipes.iter().map(String::as_str));
    let out = ecr(&args, None);
    assert!(out.status.success(), "{}", text(&out));
    let out = ecr(&["recipe", "show", "recipes/ecr.toml"], None);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("use = \"entity_linker\"") && t.contains("# link"), "{t}");
    assert!(Path::new(&root().join("recipes/ecr.toml")).is_file());
}

#[test]
fn a_recipe_made_only_of_lua_stages_chats_and_survives_bad_turns() {
    let out = ecr(&["chat", "-r", "recipes/lua-chat.toml", "--explain"], Some("I loved The Matrix!\n\nthanks a lot\n"));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("emotions: like 1.00"), "{t}");
    assert!(t.contains("ecr> Glad you liked it! (turn 1, you sound like: 100%)"), "{t}");
    assert!(t.contains("ecr> You're welcome! (turn 2, you sound grateful: 100%)"), "{t}");
    assert!(t.contains("2 turns, 0 failed"), "{t}");

    let long = "x".repeat(20_000);
    let out = ecr(&["chat", "-r", "recipes/lua-chat.toml", "--json"], Some(&format!("{long}\nhello there\n")));
    let t = text(&out);
    assert!(!out.status.success(), "a failed turn makes the exit status non-zero: {t}");
    assert!(t.contains("error: bad input: the utterance has 20000 bytes"), "{t}");
    let json_line = t.lines().find(|l| l.starts_with('{')).expect("the good turn still ran");
    let turn: serde_json::Value = serde_json::from_str(json_line).unwrap();
    assert_eq!(turn["user"]["text"], "hello there");
    assert!(turn["response"].as_str().unwrap().contains("turn 1"), "{turn}");
}

#[test]
fn chat_streams_tokens_and_survives_a_line_that_is_not_utf8() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ecr"))
        .args(["chat", "-r", "recipes/lua-chat.toml"])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = b"I loved The Matrix!\n".to_vec();
    input.extend_from_slice(b"caf\xe9 \xff\xfe\n");
    input.extend_from_slice(b"thanks a lot\n");
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert!(t.contains("error: line 2 is not valid UTF-8"), "{t}");
    // The streamed reply reads as one line, and the chat went on after the bad line.
    assert!(t.contains("ecr> Glad you liked it! (turn 1, you sound like: 100%)"), "{t}");
    assert!(t.contains("ecr> You're welcome! (turn 2, you sound grateful: 100%)"), "{t}");
    assert!(t.contains("3 turns, 1 failed"), "{t}");
}
