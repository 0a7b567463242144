//! Dynamic-library stages, tested against the stage directly with the example
//! plugin (`plugins/examples/cues`) and a faulty one (`plugins/examples/faulty`)
//! that the tests build first. Every refusal has its own library or mode, and
//! each test asserts the error's kind, stage id and library.

#[path = "fixtures/plugins.rs"]
mod plugins;

use ecr_engine::dylib::{DylibConfig, DylibFactory, DylibStageError};
use ecr_engine::{BoxError, BuildContext, Field, Registry, Stage, StageFactory, Turn};
use plugins::plugins;
use serde_json::json;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ctx() -> BuildContext {
    BuildContext::new(fixtures().join("recipe.toml"), "test", "plug")
}

/// A config for `library` with the rest of the `with` table in TOML.
fn config(library: &Path, rest: &str) -> DylibConfig {
    let text = format!("library = {:?}\n{rest}", library.display().to_string());
    toml::from_str(&text).unwrap_or_else(|e| panic!("bad test config {text}: {e}"))
}

fn build(library: &Path, rest: &str) -> Result<Box<dyn Stage>, BoxError> {
    DylibFactory.build(config(library, rest), &ctx())
}

fn stage(library: &Path, rest: &str) -> Box<dyn Stage> {
    build(library, rest).unwrap_or_else(|e| panic!("building {}: {e}", library.display()))
}

fn dylib_error(err: BoxError) -> DylibStageError {
    match err.downcast::<DylibStageError>() {
        Ok(e) => *e,
        Err(other) => panic!("not a DylibStageError: {other}"),
    }
}

fn build_error(library: &Path, rest: &str) -> DylibStageError {
    dylib_error(build(library, rest).err().expect("the build should fail"))
}

/// Run the faulty library in `mode` on a fresh turn; return the error and the turn.
fn faulty_run(mode: &str, writes: &str) -> (DylibStageError, Turn) {
    let s = stage(&plugins().faulty, &format!("writes = {writes}\nconfig = {{ mode = {mode:?} }}"));
    let mut turn = Turn::new(vec![], "hi");
    let err = dylib_error(s.run_detached(&mut turn).expect_err("the turn should fail"));
    (err, turn)
}

/// The message starts with `stage "plug" (<library>)`.
fn assert_names(err: &DylibStageError, library: &Path) {
    let msg = err.to_string();
    let prefix = format!("stage \"plug\" ({})", library.display());
    assert!(msg.starts_with(&prefix), "expected {prefix:?} at the start of: {msg}");
}

const CUES_IO: &str = r#"reads = ["user.text"]
writes = ["ext.cues"]"#;

#[test]
fn the_example_plugin_computes_cues() {
    let s = stage(&plugins().cues, CUES_IO);
    let mut turn = Turn::new(vec![], "Any good horror movies? I loved Alien, thanks!");
    s.run_detached(&mut turn).unwrap();
    let cues = &turn.ext["cues"];
    assert_eq!(cues["words"], json!(8));
    assert_eq!(cues["question"], json!(true));
    let p = cues["emotion_prior"]["like"].as_f64().unwrap();
    assert!((p - 1.0 / 3.0).abs() < 1e-9, "{cues}");
    // Only the declared write changed.
    assert_eq!(turn.ext.len(), 1);
    assert_eq!(turn.user.text, "Any good horror movies? I loved Alien, thanks!");
}

#[test]
fn the_config_table_reaches_create_and_paths_resolve_against_the_recipe() {
    let cues = &plugins().cues;
    let dir = cues.parent().unwrap();
    let ctx = BuildContext::new(dir.join("recipe.toml"), "test", "plug");
    let file = cues.file_name().unwrap().to_str().unwrap();
    let cfg: DylibConfig = toml::from_str(&format!(
        r#"library = "{file}"
        reads = ["user.text"]
        writes = ["ext.mood"]
        exclusive = true
        config = {{ field = "ext.mood", lexicon = {{ negative = ["meh"] }} }}"#
    ))
    .unwrap();
    assert!(DylibFactory.check(&cfg, &ctx).is_empty());
    assert_eq!(DylibFactory.io(&cfg).writes, vec![Field::Ext("mood".into())]);
    let s = DylibFactory.build(cfg, &ctx).unwrap();
    let mut turn = Turn::new(vec![], "meh");
    s.run_detached(&mut turn).unwrap();
    assert_eq!(turn.ext["mood"]["emotion_prior"]["negative"], json!(1.0));
}

#[test]
fn create_errors_carry_the_library_message() {
    let err = build_error(&plugins().cues, "config = { colour = 1 }");
    assert!(matches!(err, DylibStageError::Create { .. }), "{err}");
    assert_names(&err, &plugins().cues);
    assert!(err.to_string().contains("unknown config key \"colour\""), "{err}");

    let err = build_error(&plugins().faulty, r#"config = { mode = "refuse" }"#);
    assert!(err.to_string().contains("refuses to create a stage"), "{err}");
}

#[test]
fn an_undeclared_write_is_refused() {
    let lib = &plugins().cues;
    let s = stage(lib, "reads = [\"user.text\"]\nwrites = [\"ext.other\"]");
    let mut turn = Turn::new(vec![], "I loved it");
    let err = dylib_error(s.run_detached(&mut turn).unwrap_err());
    let DylibStageError::UndeclaredWrite { field, .. } = &err else { panic!("expected an undeclared write: {err}") };
    assert_eq!(field, &Field::Ext("cues".into()));
    assert_names(&err, lib);
    let name = lib.file_name().unwrap().to_string_lossy();
    assert!(err.to_string().contains(&format!("library {name} wrote field ext.cues it did not declare")), "{err}");
    assert!(turn.ext.is_empty());
}

#[test]
fn a_missing_library_is_a_config_issue_and_a_build_error() {
    let missing = fixtures().join("no_such_plugin.so");
    let issues = DylibFactory.check(&config(&missing, ""), &ctx());
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "library");
    assert!(issues[0].message.contains("no_such_plugin.so does not exist"), "{}", issues[0].message);
    let err = build_error(&missing, "");
    assert!(matches!(err, DylibStageError::Load { .. }), "{err}");
    assert_names(&err, &missing);
}

#[test]
fn a_file_that_is_no_library_is_refused() {
    let not_lib = fixtures().join("lua/words.lua");
    let err = build_error(&not_lib, "");
    let DylibStageError::Load { message, .. } = &err else { panic!("expected a load error: {err}") };
    assert!(!message.is_empty());
    assert_names(&err, &not_lib);
}

#[test]
fn a_library_without_the_abi_is_refused() {
    // The default build has every symbol but no ecr_stage_run in the no-run variant.
    let lib = &plugins().faulty_no_run;
    let err = build_error(lib, "");
    assert!(matches!(err, DylibStageError::MissingSymbol { symbol: "ecr_stage_run", .. }), "{err}");
    assert_names(&err, lib);
    assert!(err.to_string().contains("lacks the symbol `ecr_stage_run`"), "{err}");
}

#[test]
fn another_abi_version_is_refused() {
    let lib = &plugins().faulty_abi999;
    let err = build_error(lib, "");
    assert!(matches!(err, DylibStageError::AbiVersion { found: 999, .. }), "{err}");
    assert_names(&err, lib);
    assert!(err.to_string().contains("ABI version 999, this engine speaks version 1"), "{err}");
}

#[test]
fn invalid_json_is_refused_and_quoted() {
    let (err, turn) = faulty_run("invalid_json", r#"["ext.faulty"]"#);
    let DylibStageError::InvalidJson { excerpt, .. } = &err else { panic!("expected invalid JSON: {err}") };
    assert_eq!(excerpt, "{\"ext.faulty\": tru");
    assert_names(&err, &plugins().faulty);
    assert!(turn.ext.is_empty());

    let (err, _) = faulty_run("no_output", r#"["ext.faulty"]"#);
    assert!(err.to_string().contains("returned 0 but no output"), "{err}");
}

#[test]
fn output_that_is_not_an_object_is_refused() {
    let (err, _) = faulty_run("not_object", "[]");
    assert!(matches!(err, DylibStageError::NotAnObject { got: "an array", .. }), "{err}");
}

#[test]
fn an_unknown_field_is_refused() {
    let (err, _) = faulty_run("unknown_field", "[]");
    let DylibStageError::UnknownField { key, .. } = &err else { panic!("expected an unknown field: {err}") };
    assert_eq!(key, "user.mood");
}

#[test]
fn a_value_of_the_wrong_type_is_refused_and_changes_nothing() {
    let (err, turn) = faulty_run("bad_value", r#"["candidates"]"#);
    assert!(matches!(err, DylibStageError::BadValue { .. }), "{err}");
    assert!(err.to_string().contains("field candidates:"), "{err}");
    assert!(turn.candidates.is_empty());
}

#[test]
fn run_errors_and_caught_panics_are_reported_and_the_stage_goes_on() {
    let (err, _) = faulty_run("fail", "[]");
    assert!(matches!(err, DylibStageError::Run { code: 3, .. }), "{err}");
    assert!(err.to_string().ends_with("the faulty plugin failed on purpose"), "{err}");

    let s = stage(&plugins().faulty, "writes = []\nconfig = { mode = \"panic\" }");
    for _ in 0..2 {
        let err = dylib_error(s.run_detached(&mut Turn::new(vec![], "hi")).unwrap_err());
        assert!(matches!(err, DylibStageError::Run { code: 101, .. }), "{err}");
        assert!(err.to_string().contains("panicked on purpose"), "{err}");
    }
}

#[test]
fn stages_of_one_library_are_independent_and_drop_cleanly() {
    // Two stages of the same (cached) library with different configs, one dropped early.
    let a = stage(&plugins().cues, CUES_IO);
    let b = stage(&plugins().cues, "reads = [\"user.text\"]\nwrites = [\"ext.b\"]\nconfig = { field = \"ext.b\" }");
    drop(a);
    let mut turn = Turn::new(vec![], "wow");
    b.run_detached(&mut turn).unwrap();
    assert_eq!(turn.ext["b"]["emotion_prior"]["surprise"], json!(1.0));
}

#[test]
fn config_is_strict() {
    let err = toml::from_str::<DylibConfig>("library = \"x.so\"\nlibrary_path = \"y\"").unwrap_err();
    assert!(err.to_string().contains("unknown field `library_path`"), "{err}");
    assert!(Registry::new().list().any(|(name, _)| name == "dylib"));
}

#[test]
fn a_cancellable_library_sees_the_turn_being_cancelled() {
    let s = stage(
        &plugins().faulty,
        r#"writes = ["ext.faulty"]
config = { mode = "wait_cancel" }"#,
    );
    let cancel = ecr_engine::CancelToken::new();
    let remote = cancel.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        remote.cancel();
    });
    let start = std::time::Instant::now();
    let mut turn = Turn::new(vec![], "wait");
    let mut cx = ecr_engine::TurnContext::new("plug", None, Some(&cancel), None);
    let err = dylib_error(s.run(&mut turn, &mut cx).unwrap_err());
    t.join().unwrap();
    assert!(start.elapsed() < std::time::Duration::from_secs(5), "took {:?}", start.elapsed());
    assert!(matches!(&err, DylibStageError::Run { code: 4, message, .. } if message.contains("cancelled")), "{err}");
    // The other modes behave as through ecr_stage_run.
    let ok = stage(&plugins().faulty, r#"writes = ["ext.faulty"]"#);
    let mut turn = Turn::new(vec![], "x");
    ok.run(&mut turn, &mut ecr_engine::TurnContext::new("plug", None, Some(&cancel), None)).unwrap();
    assert_eq!(turn.ext["faulty"], serde_json::json!("ok"));
}
