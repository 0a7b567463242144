//! Recipe loading and validation: every error class with its message and location.

use ecr_engine::{
    BoxError, BuildContext, ConfigIssue, Engine, EngineError, Field, Recipe, Registry, Stage, StageFactory, StageIo,
    Turn, TurnContext,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Writes `ext.tags`: the words of the user text longer than `threshold * 10` chars.
struct Tagger;
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaggerConfig {
    threshold: f32,
    #[serde(default)]
    words: Option<PathBuf>,
}
struct TaggerStage(f32);
impl Stage for TaggerStage {
    fn run(&self, turn: &mut Turn, _cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        let min = (self.0 * 10.0) as usize;
        let tags: Vec<&str> = turn.user.text.split_whitespace().filter(|w| w.len() > min).collect();
        turn.ext.insert("tags".into(), serde_json::json!(tags));
        Ok(())
    }
}
impl StageFactory for Tagger {
    type Config = TaggerConfig;
    fn name(&self) -> &'static str {
        "tagger"
    }
    fn description(&self) -> &'static str {
        "test: tags long words"
    }
    fn io(&self, _: &TaggerConfig) -> StageIo {
        StageIo::new([Field::UserText], [Field::Ext("tags".into())])
    }
    fn check(&self, c: &TaggerConfig, ctx: &BuildContext) -> Vec<ConfigIssue> {
        let mut v: Vec<ConfigIssue> =
            c.words.iter().filter_map(|w| ConfigIssue::missing_file("words", &ctx.resolve(w))).collect();
        if !(0.0..=1.0).contains(&c.threshold) {
            v.push(ConfigIssue::new("threshold", format!("{} is outside 0..=1", c.threshold)));
        }
        v
    }
    fn build(&self, c: TaggerConfig, _: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        Ok(Box::new(TaggerStage(c.threshold)))
    }
}

/// Reads `ext.tags`, writes the response; fails on the word "boom", panics on "panic".
struct Counter;
#[derive(Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CounterConfig {
    #[serde(default)]
    prefix: String,
}
struct CounterStage(String);
impl Stage for CounterStage {
    fn run(&self, turn: &mut Turn, _cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        if turn.user.text.contains("boom") {
            return Err("boom was said".into());
        }
        if turn.user.text.contains("panic") {
            panic!("asked to panic");
        }
        let n = turn.ext["tags"].as_array().map_or(0, |a| a.len());
        turn.response = Some(format!("{}{n} long words after {} utterances", self.0, turn.history.len()));
        Ok(())
    }
}
impl StageFactory for Counter {
    type Config = CounterConfig;
    fn name(&self) -> &'static str {
        "counter"
    }
    fn description(&self) -> &'static str {
        "test: counts tags"
    }
    fn io(&self, _: &CounterConfig) -> StageIo {
        StageIo::new([Field::Ext("tags".into())], [Field::Response])
    }
    fn build(&self, c: CounterConfig, _: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        Ok(Box::new(CounterStage(c.prefix)))
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Tagger).unwrap().register(Counter).unwrap();
    r
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recipes")
}

/// Write `text` as a recipe file in a temp dir next to the fixtures (so relative paths work).
fn write(name: &str, text: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ecr-recipe-tests-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(dir().join("base.toml"), d.join("base.toml")).unwrap();
    std::fs::copy(dir().join("words.txt"), d.join("words.txt")).unwrap();
    let p = d.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn errors(path: &Path) -> Vec<String> {
    match Recipe::load(path, &registry()) {
        Ok(_) => panic!("{} should be invalid", path.display()),
        Err(e) => e.0.iter().map(|d| d.to_string()).collect(),
    }
}

fn one_error(path: &Path) -> String {
    let e = errors(path);
    assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
    e[0].clone()
}

#[test]
fn a_valid_recipe_runs_and_keeps_history() {
    let engine = Engine::from_recipe_with(dir().join("base.toml"), &registry()).unwrap();
    let mut s = engine.session();
    let out = s.turn("a wonderfully strange movie").unwrap();
    assert_eq!(out.response(), Some("3 long words after 0 utterances"));
    assert_eq!(out.trace.iter().map(|t| t.stage.as_str()).collect::<Vec<_>>(), ["tag", "count"]);
    let out = s.turn("extraordinary").unwrap();
    assert_eq!(out.response(), Some("1 long words after 2 utterances"));
    assert_eq!(s.history().len(), 4);
}

#[test]
fn extends_merges_key_by_key_and_show_prints_defaults() {
    let r = Recipe::load(dir().join("child.toml"), &registry()).unwrap();
    assert_eq!(r.name(), "child");
    assert_eq!(r.description(), "two test stages");
    let shown = r.to_toml();
    assert!(shown.contains("threshold = 0.5"), "{shown}");
    assert!(shown.contains("prefix = \"\""), "defaults are filled in: {shown}");
    let (id, c): (String, TaggerConfig) = r.stage_config("tagger").unwrap().unwrap();
    assert_eq!((id.as_str(), c.threshold), ("tag", 0.5));
}

#[test]
fn syntax_error_has_line_and_column() {
    let p = write("syntax.toml", "[recipe]\nname = \"x\"\npipeline = [\"a\",\n  oops ]\n");
    let e = one_error(&p);
    assert!(e.contains("syntax.toml:4:"), "{e}");
    assert!(e.contains("TOML syntax error"), "{e}");
}

#[test]
fn unknown_use_suggests_the_near_name() {
    let p = write(
        "use.toml",
        "[recipe]\nname = \"x\"\npipeline = [\"t\"]\n[stages.t]\nuse = \"taggr\"\n[stages.t.with]\nthreshold = 0.1\n",
    );
    let e = one_error(&p);
    assert!(e.contains("use.toml:5:7: stages.t.use: unknown stage kind \"taggr\": did you mean \"tagger\"?"), "{e}");
}

#[test]
fn unknown_and_mistyped_config_keys_point_at_the_key() {
    let p = write(
        "keys.toml",
        "[recipe]\nname = \"x\"\npipeline = [\"t\", \"c\"]\n[stages.t]\nuse = \"tagger\"\n[stages.t.with]\nthreshold = 0.1\nthreshhold = 2\n[stages.c]\nuse = \"counter\"\nwith = { prefix = 3 }\n",
    );
    let e = errors(&p);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].contains("keys.toml:8:1: stages.t.with.threshhold: unknown field `threshhold`"), "{}", e[0]);
    assert!(
        e[1].contains("keys.toml:11:10: stages.c.with.prefix: invalid type: integer `3`, expected a string"),
        "{}",
        e[1]
    );
}

#[test]
fn engine_keys_are_checked_too() {
    let p = write(
        "engine_keys.toml",
        "[recipe]\nname = \"x\"\npipeline = [\"t\"]\nfoo = 1\n[stages.t]\nuse = \"tagger\"\nenabeld = false\nwith = { threshold = 0.1 }\n",
    );
    let e = errors(&p);
    assert!(e.iter().any(|m| m.contains("engine_keys.toml:4:1: recipe.foo: unknown key `foo`")), "{e:#?}");
    assert!(
        e.iter().any(|m| m.contains(":7:1: stages.t.enabeld: unknown key `enabeld` (did you mean `enabled`?)")),
        "{e:#?}"
    );
}

#[test]
fn data_sample_is_inherited_shown_and_checked() {
    write("sampled.toml", "[recipe]\nname = \"sampled\"\nextends = \"base.toml\"\ndata_sample = 0.2\n");
    let child = write("child.toml", "[recipe]\nname = \"child\"\nextends = \"sampled.toml\"\n");
    let r = Recipe::load(&child, &registry()).unwrap();
    assert_eq!(r.context().data_sample(), 0.2);
    assert_eq!(r.context().for_stage("tag").data_sample(), 0.2);
    assert!(r.to_toml().contains("data_sample = 0.2"), "{}", r.to_toml());
    assert_eq!(Recipe::load(dir().join("base.toml"), &registry()).unwrap().context().data_sample(), 1.0);
    for (bad, says) in [("0", "0 is not in (0, 1]"), ("1.5", "1.5 is not in (0, 1]"), ("\"half\"", "found a string")] {
        let p = write(
            "bad_sample.toml",
            &format!("[recipe]\nname = \"b\"\nextends = \"base.toml\"\ndata_sample = {bad}\n"),
        );
        let e = one_error(&p);
        assert!(e.contains("bad_sample.toml:4:15: recipe.data_sample: ") && e.contains(says), "{e}");
    }
}

#[test]
fn a_stage_reading_what_nobody_wrote_names_both_stages() {
    let p = write(
        "flow.toml",
        "[recipe]\nname = \"x\"\npipeline = [\"c\", \"t\"]\n[stages.t]\nuse = \"tagger\"\nwith = { threshold = 0.1 }\n[stages.c]\nuse = \"counter\"\n",
    );
    let e = one_error(&p);
    assert!(
        e.contains("flow.toml:7:9: stages.c: stage \"c\" reads `ext.tags`, which no earlier enabled stage writes"),
        "{e}"
    );
    assert!(e.contains("written by \"t\" (later in the pipeline)"), "{e}");

    let p =
        write("flow_disabled.toml", "[recipe]\nname = \"x\"\nextends = \"base.toml\"\n[stages.tag]\nenabled = false\n");
    let e = one_error(&p);
    assert!(e.contains("base.toml:") && e.contains("\"tag\" (disabled)"), "{e}");
}

#[test]
fn pipeline_and_stage_tables_must_match() {
    let p = write(
        "tables.toml",
        "[recipe]\nname = \"x\"\npipeline = [\"t\", \"ghost\"]\n[stages.t]\nuse = \"tagger\"\nwith = { threshold = 0.1 }\n[stages.extra]\nuse = \"counter\"\n",
    );
    let e = errors(&p);
    assert!(
        e.iter().any(|m| m.contains(
            "tables.toml:3:18: recipe.pipeline: pipeline names stage \"ghost\" but there is no [stages.ghost] table"
        )),
        "{e:#?}"
    );
    assert!(
        e.iter().any(|m| m.contains("tables.toml:7:9: stages.extra: stage \"extra\" is not in recipe.pipeline")),
        "{e:#?}"
    );
}

#[test]
fn missing_files_and_failed_checks_are_reported() {
    let p = write(
        "files.toml",
        "[recipe]\nname = \"x\"\npipeline = [\"t\"]\n[stages.t]\nuse = \"tagger\"\n[stages.t.with]\nthreshold = 1.5\nwords = \"nope.txt\"\n",
    );
    let e = errors(&p);
    assert!(
        e.iter()
            .any(|m| m.contains("files.toml:8:9: stages.t.with.words: file") && m.contains("nope.txt does not exist")),
        "{e:#?}"
    );
    assert!(e.iter().any(|m| m.contains("files.toml:7:13: stages.t.with.threshold: 1.5 is outside 0..=1")), "{e:#?}");
    let ok = write(
        "files_ok.toml",
        "[recipe]\nname = \"x\"\npipeline = [\"t\"]\n[stages.t]\nuse = \"tagger\"\n[stages.t.with]\nthreshold = 0.5\nwords = \"words.txt\"\n",
    );
    Recipe::load(&ok, &registry()).expect("relative paths resolve against the recipe's directory");
}

#[test]
fn extends_cycles_and_missing_parents_are_reported() {
    let e = one_error(&dir().join("cycle_a.toml"));
    assert!(e.contains("cycle_b.toml:3:11: recipe.extends: `extends` cycle:"), "{e}");
    assert!(e.contains("cycle_a.toml -> ") && e.contains("cycle_b.toml -> "), "{e}");
    let p = write("orphan.toml", "[recipe]\nname = \"x\"\nextends = \"missing.toml\"\npipeline = []\n");
    let e = one_error(&p);
    assert!(e.contains("orphan.toml:3:11: recipe.extends: cannot read recipe"), "{e}");
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let p = write(
        "many.toml",
        "[recipe]\npipeline = [\"t\", \"u\"]\n[stages.t]\nuse = \"tagger\"\nwith = { threshold = \"high\" }\n[stages.u]\nuse = \"nothing\"\n",
    );
    let e = errors(&p);
    assert!(e.len() >= 3, "{e:#?}");
    assert!(e.iter().any(|m| m.contains("recipe.name: missing")), "{e:#?}");
}

#[test]
fn a_failing_or_panicking_stage_fails_the_turn_only() {
    let engine = Engine::from_recipe_with(dir().join("base.toml"), &registry()).unwrap();
    let mut s = engine.session();
    let err = s.turn("boom").unwrap_err();
    assert!(matches!(err, EngineError::Stage { ref stage, .. } if stage == "count"), "{err}");
    assert_eq!(err.to_string(), "stage \"count\" failed: boom was said");
    let err = s.turn("panic now").unwrap_err();
    assert!(err.to_string().contains("the stage panicked: asked to panic"), "{err}");
    assert!(s.history().is_empty(), "failed turns leave no trace in the history");
    assert!(s.turn("still working").is_ok());
    assert!(matches!(s.turn("   ").unwrap_err(), EngineError::Input(_)));
    assert!(matches!(s.turn(&"x".repeat(20_000)).unwrap_err(), EngineError::Input(_)));
}

#[test]
fn inherited_paths_resolve_against_the_recipe_that_wrote_them() {
    let r = Recipe::load(dir().join("ablations/lower.toml"), &registry()).expect("words.txt is beside with_words.toml");
    let stage = r.stage("tag").unwrap();
    assert_eq!(stage.context().resolve("words.txt"), dir().join("ablations/../words.txt"));
    let e = one_error(&dir().join("ablations/own_words.toml"));
    assert!(
        e.contains("own_words.toml:6:9: stages.tag.with.words: file")
            && e.contains("ablations/words.txt does not exist"),
        "{e}"
    );
}
