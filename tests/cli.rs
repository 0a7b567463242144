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
