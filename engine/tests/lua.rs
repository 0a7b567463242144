//! Lua stages, tested against the stage directly (factory → stage → turn).
//!
//! Every error class has its own bad script under `tests/fixtures/lua/`, and
//! each test asserts the error's kind, its stage id, script and line.

use ecr_engine::lua::{LuaConfig, LuaFactory, LuaLimits, LuaStageError, LuaWeightFn};
use ecr_engine::{
    BoxError, BuildContext, Emotion, EmotionDist, Feedback, Field, ItemFeedback, Registry, Stage, StageFactory, Turn,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn script(name: &str) -> PathBuf {
    fixtures().join("lua").join(name)
}

fn recipes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes")
}

/// A context as for a recipe in `tests/fixtures/`, stage id "probe".
fn ctx() -> BuildContext {
    BuildContext::new(fixtures().join("recipe.toml"), "test", "probe")
}

fn config(with: &str) -> LuaConfig {
    toml::from_str(with).unwrap_or_else(|e| panic!("bad test config {with}: {e}"))
}

fn build(with: &str) -> Result<Box<dyn Stage>, BoxError> {
    LuaFactory.build(config(with), &ctx())
}

fn stage(with: &str) -> Box<dyn Stage> {
    build(with).unwrap_or_else(|e| panic!("building {with}: {e}"))
}

/// Run the stage on a turn for `text`; return the Lua error it failed with.
fn fail(stage: &dyn Stage, text: &str) -> LuaStageError {
    let mut turn = Turn::new(vec![], text);
    let err = stage.run_detached(&mut turn).expect_err("the turn should fail");
    into_lua_error(err)
}

fn into_lua_error(err: BoxError) -> LuaStageError {
    match err.downcast::<LuaStageError>() {
        Ok(e) => *e,
        Err(other) => panic!("not a LuaStageError: {other}"),
    }
}

/// The message starts with `stage "probe" (<script>:<line>)`.
fn assert_located(err: &LuaStageError, file: &str, line: u32) {
    let msg = err.to_string();
    let prefix = format!("stage \"probe\" ({}:{line})", script(file).display());
    assert!(msg.starts_with(&prefix), "expected {prefix:?} at the start of: {msg}");
}

#[test]
fn run_changes_declared_fields() {
    let s = stage(
        r#"script = "lua/words.lua"
        reads = ["user.text"]
        writes = ["ext.words", "ext.question"]"#,
    );
    let mut turn = Turn::new(vec![], "Any good horror movies from the 80s?");
    s.run_detached(&mut turn).unwrap();
    assert_eq!(turn.ext["words"], json!(7));
    assert_eq!(turn.ext["question"], json!(true));
    assert_eq!(turn.user.text, "Any good horror movies from the 80s?");
}

#[test]
fn run_may_return_a_new_turn_table() {
    let s = stage(
        r#"script = "lua/respond.lua"
        writes = ["response"]"#,
    );
    let mut turn = Turn::new(vec![], "hello");
    s.run_detached(&mut turn).unwrap();
    assert_eq!(turn.response.as_deref(), Some("you said: hello"));
}

#[test]
fn runtime_error_names_stage_script_and_line() {
    let s = stage(
        r#"script = "lua/nil_arith.lua"
        writes = ["ext.total"]"#,
    );
    let err = fail(s.as_ref(), "hi");
    let LuaStageError::Runtime { stage, at, message, .. } = &err else { panic!("expected a runtime error: {err}") };
    assert_eq!(stage, "probe");
    assert_eq!(at.line, Some(5));
    assert!(message.starts_with("attempt to perform arithmetic on a nil value"), "{message}");
    assert_located(&err, "nil_arith.lua", 5);
}

#[test]
fn errors_raised_by_the_script_and_by_libraries_carry_their_line() {
    let s = stage(r#"script = "lua/raise.lua""#);
    let err = fail(s.as_ref(), "raise");
    assert!(matches!(err, LuaStageError::Runtime { .. }), "{err}");
    assert_located(&err, "raise.lua", 4);
    assert!(err.to_string().ends_with("cannot handle raise"), "{err}");

    // string.rep's own message has no position: the line comes from the traceback.
    let err = fail(s.as_ref(), "library");
    assert_located(&err, "raise.lua", 8);
    assert!(err.to_string().contains("bad argument #1 to 'rep'"), "{err}");

    // The stage is still usable.
    s.run_detached(&mut Turn::new(vec![], "fine")).unwrap();
}

#[test]
fn endless_loop_fails_within_a_second_with_a_budget_error() {
    let s = stage(r#"script = "lua/loop.lua""#);
    let start = Instant::now();
    let err = fail(s.as_ref(), "hi");
    let took = start.elapsed();
    let LuaStageError::Budget { budget, .. } = &err else { panic!("expected a budget error: {err}") };
    assert_eq!(*budget, 10_000_000);
    assert_located(&err, "loop.lua", 4);
    assert!(err.to_string().contains("instruction budget of 10000000 exceeded"), "{err}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn growing_table_fails_within_a_second_with_a_memory_error() {
    let s = stage(r#"script = "lua/grow.lua""#);
    let start = Instant::now();
    let err = fail(s.as_ref(), "hi");
    let took = start.elapsed();
    let LuaStageError::Memory { limit_mb, .. } = &err else { panic!("expected a memory error: {err}") };
    assert_eq!(*limit_mb, 32);
    assert!(err.to_string().contains("memory limit of 32 MiB exceeded"), "{err}");
    // The line the hook last saw is inside the loop (lines 5 to 8).
    let LuaStageError::Memory { at, .. } = &err else { unreachable!() };
    assert!(matches!(at.line, Some(5..=8)), "{err}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn one_huge_string_hits_the_memory_cap_and_endless_recursion_overflows_the_stack() {
    let s = stage(r#"script = "lua/edge.lua""#);
    let err = fail(s.as_ref(), "rep");
    assert!(matches!(err, LuaStageError::Memory { .. }), "{err}");
    // string.rep runs no VM instructions, so the line is unknown: the script is still named.
    assert!(err.to_string().starts_with(&format!("stage \"probe\" ({}", script("edge.lua").display())), "{err}");

    let s = stage(
        r#"script = "lua/edge.lua"
        memory_limit_mb = 256"#,
    );
    let err = fail(s.as_ref(), "deep");
    assert!(matches!(err, LuaStageError::Runtime { .. }), "{err}");
    assert_located(&err, "edge.lua", 2);
    assert!(err.to_string().contains("stack overflow"), "{err}");
    s.run_detached(&mut Turn::new(vec![], "fine")).unwrap();
}

#[test]
fn configured_limits_apply() {
    let s = stage(
        r#"script = "lua/loop.lua"
        instruction_budget = 5000"#,
    );
    let err = fail(s.as_ref(), "hi");
    assert!(matches!(err, LuaStageError::Budget { budget: 5000, .. }), "{err}");

    let s = stage(
        r#"script = "lua/grow.lua"
        memory_limit_mb = 2"#,
    );
    let err = fail(s.as_ref(), "hi");
    assert!(matches!(err, LuaStageError::Memory { limit_mb: 2, .. }), "{err}");
}

#[test]
fn pcall_cannot_swallow_budget_or_memory_errors() {
    let s = stage(r#"script = "lua/pcall_loop.lua""#);
    let err = fail(s.as_ref(), "hi");
    assert!(matches!(err, LuaStageError::Budget { .. }), "{err}");

    let s = stage(
        r#"script = "lua/pcall_grow.lua"
        memory_limit_mb = 4"#,
    );
    let err = fail(s.as_ref(), "hi");
    assert!(matches!(err, LuaStageError::Memory { .. }), "{err}");
}

#[test]
fn a_stage_stays_usable_after_budget_and_memory_errors() {
    // raise.lua only fails for some texts; exhaust a state with a tiny budget first.
    let s = stage(
        r#"script = "lua/loop.lua"
        instruction_budget = 1000"#,
    );
    for _ in 0..3 {
        assert!(matches!(fail(s.as_ref(), "x"), LuaStageError::Budget { .. }));
    }
    let s = stage(
        r#"script = "lua/grow.lua"
        memory_limit_mb = 1"#,
    );
    for _ in 0..3 {
        assert!(matches!(fail(s.as_ref(), "x"), LuaStageError::Memory { .. }));
    }
}

#[test]
fn wrong_return_type_names_the_function_and_its_line() {
    let s = stage(r#"script = "lua/wrong_type.lua""#);
    let err = fail(s.as_ref(), "hi");
    let LuaStageError::WrongType { function, got, .. } = &err else { panic!("expected a wrong type: {err}") };
    assert_eq!(*function, "run");
    assert_eq!(got, "a number (42)");
    assert_located(&err, "wrong_type.lua", 3);
}

#[test]
fn undeclared_write_is_refused_and_names_the_field() {
    let s = stage(
        r#"script = "lua/undeclared.lua"
        writes = ["ext.words"]"#,
    );
    let mut turn = Turn::new(vec![], "hi");
    let err = into_lua_error(s.run_detached(&mut turn).unwrap_err());
    let LuaStageError::UndeclaredWrite { field, .. } = &err else { panic!("expected an undeclared write: {err}") };
    assert_eq!(field, &Field::Response);
    assert_located(&err, "undeclared.lua", 2);
    assert!(err.to_string().contains("add \"response\" to `writes`"), "{err}");
    // Nothing of the failed call reached the turn.
    assert!(turn.ext.is_empty() && turn.response.is_none());
}

#[test]
fn unknown_turn_key_is_refused() {
    let s = stage(
        r#"script = "lua/typo.lua"
        writes = ["response"]"#,
    );
    let err = fail(s.as_ref(), "hi");
    let LuaStageError::UnknownField { key, .. } = &err else { panic!("expected an unknown field: {err}") };
    assert_eq!(key, "respnse");
    assert_located(&err, "typo.lua", 2);
}

#[test]
fn a_value_of_the_wrong_shape_names_its_path() {
    let s = stage(
        r#"script = "lua/bad_shape.lua"
        writes = ["feedback"]"#,
    );
    let err = fail(s.as_ref(), "hi");
    let LuaStageError::BadTurn { path, .. } = &err else { panic!("expected a bad turn: {err}") };
    assert_eq!(path, "feedback[0].item");
    assert_located(&err, "bad_shape.lua", 2);
}

#[test]
fn syntax_error_is_found_by_check_and_by_build() {
    let cfg = config(r#"script = "lua/syntax.lua""#);
    let issues = LuaFactory.check(&cfg, &ctx());
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "script");
    let expected = format!("syntax error at {}:3:", script("syntax.lua").display());
    assert!(issues[0].message.starts_with(&expected), "{}", issues[0].message);

    let err = into_lua_error(build(r#"script = "lua/syntax.lua""#).err().expect("build must fail"));
    assert!(matches!(err, LuaStageError::Syntax { .. }), "{err}");
    assert_located(&err, "syntax.lua", 3);
    assert!(err.to_string().contains("unexpected symbol near '='"), "{err}");
}

#[test]
fn missing_script_is_a_config_issue_and_a_build_error() {
    let cfg = config(r#"script = "lua/nope.lua""#);
    let issues = LuaFactory.check(&cfg, &ctx());
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "script");
    assert!(issues[0].message.contains("nope.lua does not exist"), "{}", issues[0].message);
    let err = into_lua_error(build(r#"script = "lua/nope.lua""#).err().expect("build must fail"));
    assert!(matches!(err, LuaStageError::Read { .. }), "{err}");
    assert!(err.to_string().contains("nope.lua"), "{err}");
}

#[test]
fn missing_hook_function_says_what_to_do() {
    let err = into_lua_error(build(r#"script = "lua/weight_only.lua""#).err().expect("build must fail"));
    assert!(matches!(err, LuaStageError::MissingFunction { function: "run", .. }), "{err}");
    assert!(err.to_string().contains("set hook = \"weight\""), "{err}");

    let err = into_lua_error(build(r#"script = "lua/no_function.lua""#).err().expect("build must fail"));
    assert!(err.to_string().contains("not as a local"), "{err}");
}

#[test]
fn the_sandbox_offers_only_safe_libraries() {
    let s = stage(
        r#"script = "lua/sandbox_probe.lua"
        writes = ["ext.globals"]"#,
    );
    let mut turn = Turn::new(vec![], "hi");
    s.run_detached(&mut turn).unwrap();
    let seen = &turn.ext["globals"];
    for absent in [
        "io",
        "os",
        "require",
        "package",
        "load",
        "loadstring",
        "loadfile",
        "dofile",
        "debug",
        "collectgarbage",
        "coroutine",
        "warn",
        "dump",
    ] {
        assert_eq!(seen[absent], json!("nil"), "{absent} must not be reachable: {seen}");
    }
    for present in ["string", "table", "math", "utf8"] {
        assert_eq!(seen[present], json!("table"), "{present}: {seen}");
    }
    assert_eq!(seen["pcall"], json!("function"));
    // The shared string metatable is locked.
    assert_eq!(seen["string_meta"], json!("false"));
}

#[test]
fn globals_and_library_changes_do_not_survive_a_call() {
    let s = stage(
        r#"script = "lua/leak.lua"
        writes = ["ext.counter", "ext.calls", "ext.upper_ok", "ext.pi_ok"]"#,
    );
    for _ in 0..3 {
        let mut turn = Turn::new(vec![], "hi");
        s.run_detached(&mut turn).unwrap();
        assert_eq!(turn.ext["counter"], json!(1), "{:?}", turn.ext);
        assert_eq!(turn.ext["calls"], json!(1), "{:?}", turn.ext);
        assert_eq!(turn.ext["upper_ok"], json!(true), "{:?}", turn.ext);
        assert_eq!(turn.ext["pi_ok"], json!(true), "{:?}", turn.ext);
    }
}

#[test]
fn finalizers_are_refused() {
    let s = stage(r#"script = "lua/gc.lua""#);
    let err = fail(s.as_ref(), "hi");
    assert!(matches!(err, LuaStageError::Runtime { .. }), "{err}");
    assert_located(&err, "gc.lua", 3);
    assert!(err.to_string().contains("__gc metamethods are not allowed"), "{err}");
}

#[test]
fn readme_feedback_mapping() {
    let f = LuaWeightFn::load("feedback", recipes().join("lua/feedback.lua"), LuaLimits::default()).unwrap();
    assert_eq!(f.weight(7, Feedback::Liked, None).unwrap(), 2.0);
    assert_eq!(f.weight(7, Feedback::Disliked, None).unwrap(), 1.0);
    assert_eq!(f.weight(7, Feedback::NotSaid, None).unwrap(), 0.5);

    // As a stage: every feedback entry gets its weight.
    let ctx = BuildContext::new(recipes().join("ecr.toml"), "ecr", "feedback");
    let cfg = config(
        r#"script = "lua/feedback.lua"
        hook = "weight""#,
    );
    assert!(LuaFactory.check(&cfg, &ctx).is_empty());
    let io = LuaFactory.io(&cfg);
    assert_eq!(io.reads, vec![Field::Feedback, Field::UserEmotions]);
    assert_eq!(io.writes, vec![Field::Feedback]);
    let s = LuaFactory.build(cfg, &ctx).unwrap();
    let mut turn = Turn::new(vec![], "hi");
    turn.feedback = vec![
        ItemFeedback { item: 1, feedback: Feedback::Liked, weight: None },
        ItemFeedback { item: 2, feedback: Feedback::NotSaid, weight: None },
        ItemFeedback { item: 3, feedback: Feedback::Disliked, weight: None },
    ];
    s.run_detached(&mut turn).unwrap();
    let weights: Vec<Option<f32>> = turn.feedback.iter().map(|f| f.weight).collect();
    assert_eq!(weights, vec![Some(2.0), Some(0.5), Some(1.0)]);
}

#[test]
fn a_weight_stage_may_leave_the_emotions_out() {
    let ctx = BuildContext::new(recipes().join("ecr.toml"), "ecr", "feedback");
    let cfg = config(
        r#"script = "lua/emotion_weight.lua"
        hook = "weight"
        reads = ["feedback"]"#,
    );
    assert!(LuaFactory.check(&cfg, &ctx).is_empty());
    assert_eq!(LuaFactory.io(&cfg).reads, vec![Field::Feedback]);
    let s = LuaFactory.build(cfg, &ctx).unwrap();
    let mut turn = Turn::new(vec![], "hi");
    turn.user.emotions = Some(EmotionDist::one_hot(Emotion::Curious));
    turn.feedback = vec![ItemFeedback { item: 1, feedback: Feedback::NotSaid, weight: None }];
    s.run_detached(&mut turn).unwrap();
    // The emotions were not passed: the script fell back to the feedback table.
    assert_eq!(turn.feedback[0].weight, Some(0.5));
}

#[test]
fn emotion_weighting_uses_the_emotions_and_falls_back_to_feedback() {
    let f = LuaWeightFn::load("emotion", recipes().join("lua/emotion_weight.lua"), LuaLimits::default()).unwrap();
    let mut d = EmotionDist::default();
    d.set(Emotion::Like, 0.5);
    d.set(Emotion::Curious, 0.25);
    d.set(Emotion::Neutral, 0.25);
    // 0.5 * 2.0 + 0.25 * 1.5 + 0.25 * 0.5
    assert_eq!(f.weight(3, Feedback::Disliked, Some(&d)).unwrap(), 1.5);
    assert_eq!(f.weight(3, Feedback::Liked, None).unwrap(), 2.0);
    assert_eq!(f.weight(3, Feedback::NotSaid, Some(&EmotionDist::default())).unwrap(), 0.5);
}

#[test]
fn weight_errors_name_the_script_and_line() {
    let f = LuaWeightFn::load("probe", script("weight_bad.lua"), LuaLimits::default()).unwrap();
    let err = f.weight(1, Feedback::Liked, None).unwrap_err();
    assert!(matches!(&err, LuaStageError::WrongType { function: "weight", .. }), "{err}");
    assert!(err.to_string().contains("returned a string (\"heavy\"); expected a finite number >= 0"), "{err}");
    assert_located(&err, "weight_bad.lua", 2);

    let err = f.weight(1, Feedback::Disliked, None).unwrap_err();
    assert!(err.to_string().contains("returned -1"), "{err}");

    // emotions is an empty table without emotions: emotions.like is nil.
    let err = f.weight(1, Feedback::NotSaid, None).unwrap_err();
    assert!(matches!(err, LuaStageError::Runtime { .. }), "{err}");
    assert_located(&err, "weight_bad.lua", 8);
    assert_eq!(f.weight(1, Feedback::NotSaid, Some(&EmotionDist::one_hot(Emotion::Like))).unwrap(), 2.0);
}

#[test]
fn config_is_strict_and_checked() {
    assert!(
        toml::from_str::<LuaConfig>(
            r#"script = "x.lua"
        budget = 3"#
        )
        .unwrap_err()
        .to_string()
        .contains("unknown field `budget`")
    );
    assert!(
        toml::from_str::<LuaConfig>(
            r#"script = "x.lua"
        hook = "weigh""#
        )
        .is_err()
    );
    let cfg = config(
        r#"script = "lua/words.lua"
        hook = "weight"
        reads = ["user.text"]
        instruction_budget = 10
        memory_limit_mb = 0"#,
    );
    let keys: Vec<String> = LuaFactory.check(&cfg, &ctx()).into_iter().map(|i| i.key).collect();
    assert_eq!(keys, vec!["reads", "instruction_budget", "memory_limit_mb"]);
}

#[test]
fn the_engine_registry_has_lua() {
    let r = Registry::new();
    assert!(r.list().any(|(name, _)| name == "lua"));
    fn send_sync<T: Send + Sync>() {}
    send_sync::<LuaWeightFn>();
}
