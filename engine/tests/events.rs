//! The engine contract for stages that stream, stop, see what the recipe
//! provides, and train: events during a turn, cancellation and deadlines
//! (built-in, Lua), optional reads, replay, and `train_recipe`.

use ecr_engine::train::{TrainOptions, TrainOutcome, recipe_status, stage_fingerprint, train_recipe};
use ecr_engine::{
    BoxError, BuildContext, CancelToken, Engine, EngineError, EvalReport, Event, Field, Fingerprint, Interrupted,
    Recipe, Registry, Role, Stage, StageFactory, StageIo, TrainContext, TrainReport, TrainStatus, Trainable, Turn,
    TurnContext, TurnEvent, TurnOptions, Utterance,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Emits its words one by one as tokens, `delay_ms` apart, checking for cancellation.
struct Speaker;
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpeakerConfig {
    words: Vec<String>,
    #[serde(default)]
    delay_ms: u64,
}
struct SpeakerStage(SpeakerConfig);
impl Stage for SpeakerStage {
    fn run(&self, turn: &mut Turn, cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        let mut said = String::new();
        for w in &self.0.words {
            cx.check_cancelled()?;
            cx.token(w.clone());
            said.push_str(w);
            std::thread::sleep(Duration::from_millis(self.0.delay_ms));
        }
        turn.response = Some(said);
        Ok(())
    }
}
impl StageFactory for Speaker {
    type Config = SpeakerConfig;
    fn name(&self) -> &'static str {
        "speaker"
    }
    fn description(&self) -> &'static str {
        "test: streams words"
    }
    fn io(&self, _: &SpeakerConfig) -> StageIo {
        StageIo::new([Field::UserText], [Field::Response])
    }
    fn build(&self, c: SpeakerConfig, _: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        Ok(Box::new(SpeakerStage(c)))
    }
}

/// The user texts of every turn a probe stage ran on.
static PROBED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Counts its runs; reads global_entities when the recipe provides them and
/// says in `ext.sees_global` whether it was built to.
struct Probe;
#[derive(Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProbeConfig {
    /// Only changes the stage's configuration (and so its fingerprint).
    #[serde(default)]
    tag: String,
}
struct ProbeStage(bool);
impl Stage for ProbeStage {
    fn run(&self, turn: &mut Turn, _: &mut TurnContext<'_>) -> Result<(), BoxError> {
        PROBED.lock().unwrap().push(turn.user.text.clone());
        turn.ext.insert("sees_global".into(), self.0.into());
        Ok(())
    }
}
impl StageFactory for Probe {
    type Config = ProbeConfig;
    fn name(&self) -> &'static str {
        "probe"
    }
    fn description(&self) -> &'static str {
        "test: counts runs, reads global_entities if provided"
    }
    fn io(&self, _: &ProbeConfig) -> StageIo {
        StageIo::new([Field::UserText], [Field::Ext("sees_global".into())]).with_optional([Field::GlobalEntities])
    }
    fn build(&self, _: ProbeConfig, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        Ok(Box::new(ProbeStage(ctx.provides(&Field::GlobalEntities))))
    }
}

/// A trainable stage: counts the words of the turns its upstream stages
/// produce when replayed over the dialogues of `data` (one dialogue per line,
/// utterances separated by `|`, seeker first), and writes them to its stage
/// directory. It is up to date when config, data and upstream are unchanged.
struct Vocab;
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VocabConfig {
    data: String,
    #[serde(default)]
    lowercase: bool,
    /// Declare (through `trained_on`) that training depends on the responses only.
    #[serde(default)]
    responses_only: bool,
}
struct VocabTrainer {
    data: PathBuf,
    out: PathBuf,
    config: String,
    responses_only: bool,
}
impl VocabTrainer {
    fn identity(&self, upstream: &str) -> Result<String, BoxError> {
        Ok(Fingerprint::new().str(&self.config).str(upstream).file(&self.data)?.hex())
    }
    fn stamp(&self) -> PathBuf {
        self.out.join("trained_from")
    }
}
impl Trainable for VocabTrainer {
    fn status(&self, upstream: &str) -> Result<TrainStatus, BoxError> {
        let Ok(stamp) = std::fs::read_to_string(self.stamp()) else {
            return Ok(TrainStatus::Missing(format!("no {}", self.stamp().display())));
        };
        Ok(if stamp == self.identity(upstream)? {
            TrainStatus::UpToDate("same config, data and upstream".into())
        } else {
            TrainStatus::Stale("the config, the data or the upstream stages changed".into())
        })
    }
    fn fingerprint(&self) -> Option<String> {
        std::fs::read_to_string(self.stamp()).ok()
    }
    fn train(&self, cx: &TrainContext<'_>) -> Result<TrainReport, BoxError> {
        let scripts: Vec<Vec<Utterance>> = std::fs::read_to_string(&self.data)?
            .lines()
            .map(|l| {
                l.split('|')
                    .enumerate()
                    .map(|(i, t)| Utterance::new(if i % 2 == 0 { Role::Seeker } else { Role::Recommender }, t))
                    .collect()
            })
            .collect();
        let turns = cx.upstream.replay(&scripts, 2, &mut |_| {})?;
        let words: Vec<String> = turns
            .iter()
            .flatten()
            .flat_map(|t| t.response.iter().chain([&t.user.text]).cloned().collect::<Vec<_>>())
            .collect();
        std::fs::create_dir_all(&self.out)?;
        std::fs::write(self.out.join("vocab.txt"), words.join("\n"))?;
        std::fs::write(self.stamp(), self.identity(cx.upstream_fingerprint)?)?;
        let histories: Vec<usize> = turns.iter().flatten().map(|t| t.history.len()).collect();
        Ok(TrainReport {
            summary: format!("{} turns", histories.len()),
            metrics: serde_json::json!({ "histories": histories }),
        })
    }
    fn evaluate(&self, _: &TrainContext<'_>) -> Result<EvalReport, BoxError> {
        let n = std::fs::read_to_string(self.out.join("vocab.txt"))?.lines().count();
        Ok(EvalReport { text: format!("{n} words"), metrics: serde_json::json!({ "words": n }) })
    }
    fn trained_on(&self) -> Option<Vec<Field>> {
        self.responses_only.then(|| vec![Field::Response])
    }
}
impl StageFactory for Vocab {
    type Config = VocabConfig;
    fn name(&self) -> &'static str {
        "vocab"
    }
    fn description(&self) -> &'static str {
        "test: a trainable stage"
    }
    fn io(&self, _: &VocabConfig) -> StageIo {
        StageIo::new([Field::UserText], [])
    }
    fn build(&self, _: VocabConfig, _: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        Ok(Box::new(ProbeStage(false)))
    }
    fn trainer(&self, c: VocabConfig, ctx: &BuildContext) -> Result<Option<Box<dyn Trainable>>, BoxError> {
        Ok(Some(Box::new(VocabTrainer {
            data: ctx.resolve(&c.data),
            out: ctx.stage_dir(),
            config: serde_json::to_string(&c)?,
            responses_only: c.responses_only,
        })))
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Speaker).unwrap().register(Probe).unwrap().register(Vocab).unwrap();
    r
}

/// A fresh `<tmp>/recipes/` directory (so that `runs/` goes to `<tmp>/runs/`).
fn temp_recipes(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir()
        .join(format!("ecr-events-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)))
        .join("recipes");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const SPEAKER: &str = r#"
[recipe]
name = "speak"
pipeline = ["speak", "after"]
[stages.speak]
use = "speaker"
with = { words = ["Hello", " there", ", film", " lover"], delay_ms = 40 }
[stages.after]
use = "probe"
"#;

fn speaker_engine() -> Engine {
    let d = temp_recipes("speak");
    Engine::from_recipe_with(write(&d, "speak.toml", SPEAKER), &registry()).unwrap()
}

#[test]
fn events_arrive_in_order_while_the_turn_runs() {
    let engine = speaker_engine();
    let mut session = engine.session();
    let start = Instant::now();
    let mut seen: Vec<(Duration, TurnEvent)> = Vec::new();
    let out = session.turn_with("hi", &TurnOptions::default(), |e| seen.push((start.elapsed(), e))).unwrap();
    let done = start.elapsed();
    let tokens: Vec<&str> = seen
        .iter()
        .map(|(_, e)| match &e.event {
            Event::Token { text } => text.as_str(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(tokens, ["Hello", " there", ", film", " lover"]);
    assert!(seen.iter().all(|(_, e)| e.stage == "speak"));
    // Streamed, not delivered at the end: the first token came three delays before the turn ended.
    assert!(done - seen[0].0 >= Duration::from_millis(100), "first token at {:?}, turn done at {done:?}", seen[0].0);
    assert_eq!(out.response(), Some(tokens.concat().as_str()));
}

#[test]
fn cancelling_mid_turn_stops_it_and_leaves_the_history_unchanged() {
    let engine = speaker_engine();
    let mut session = engine.session();
    session.turn("first").unwrap();
    assert_eq!(session.history().len(), 2);

    // Cancelled from the event callback, after the second token.
    let cancel = CancelToken::new();
    let options = TurnOptions { cancel: Some(cancel.clone()), deadline: None };
    let mut tokens = 0;
    let err = session
        .turn_with("second", &options, |_| {
            tokens += 1;
            if tokens == 2 {
                cancel.cancel();
            }
        })
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::Interrupted { stage, why: Interrupted::Cancelled } if stage == "speak"),
        "{err}"
    );
    assert_eq!(tokens, 2);
    assert_eq!(session.history().len(), 2, "a cancelled turn leaves the history as it was");
    assert_eq!(session.history()[0].text, "first");

    // Cancelled from another thread.
    let cancel = CancelToken::new();
    let remote = cancel.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(60));
        remote.cancel();
    });
    let options = TurnOptions { cancel: Some(cancel), deadline: None };
    let err = session.turn_with("third", &options, |_| {}).unwrap_err();
    t.join().unwrap();
    assert!(matches!(err, EngineError::Interrupted { why: Interrupted::Cancelled, .. }), "{err}");
    assert_eq!(session.history().len(), 2);
    assert!(err.to_string().contains("cancelled"), "{err}");

    // No later stage ran in either cancelled turn; the session still works.
    assert!(PROBED.lock().unwrap().iter().all(|t| t != "second" && t != "third"));
    session.turn("fourth").unwrap();
    assert_eq!(session.history().len(), 4);
}

#[test]
fn a_deadline_stops_a_slow_turn() {
    let engine = speaker_engine();
    let mut session = engine.session();
    let options = TurnOptions { cancel: None, deadline: Some(Duration::from_millis(50)) };
    let err = session.turn_with("hi", &options, |_| {}).unwrap_err();
    assert!(matches!(err, EngineError::Interrupted { why: Interrupted::Deadline, .. }), "{err}");
    assert!(session.history().is_empty());
}

#[test]
fn lua_stages_emit_events_and_stop_when_cancelled() {
    let d = temp_recipes("lua");
    write(
        &d,
        "talk.lua",
        r#"
function run(turn)
  emit("token", "Hi")
  emit("note", "thinking")
  emit("score", { x = 1 })
  emit("token", 42)
  if turn.user.text == "loop" then
    while true do end
  end
  turn.response = "done"
end
"#,
    );
    let recipe = write(
        &d,
        "lua.toml",
        r#"
[recipe]
name = "lua-events"
pipeline = ["talk"]
[stages.talk]
use = "lua"
with = { script = "talk.lua", writes = ["response"], reads = ["user.text"], instruction_budget = 100000000000 }
"#,
    );
    let engine = Engine::from_recipe_with(recipe, &registry()).unwrap();
    let mut session = engine.session();
    let mut events = Vec::new();
    let out = session.turn_with("hello", &TurnOptions::default(), |e| events.push(e.event)).unwrap();
    assert_eq!(out.response(), Some("done"));
    assert_eq!(
        events,
        [
            Event::Token { text: "Hi".into() },
            Event::Note { text: "thinking".into() },
            Event::Custom { name: "score".into(), value: serde_json::json!({ "x": 1 }) },
            Event::Token { text: "42".into() },
        ]
    );

    // An endless loop with a huge budget stops when the caller cancels.
    let cancel = CancelToken::new();
    let options = TurnOptions { cancel: Some(cancel.clone()), deadline: None };
    let start = Instant::now();
    let err = session
        .turn_with("loop", &options, |e| {
            if matches!(e.event, Event::Token { .. }) {
                cancel.cancel();
            }
        })
        .unwrap_err();
    assert!(matches!(err, EngineError::Interrupted { why: Interrupted::Cancelled, .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2), "stopped after {:?}", start.elapsed());
    assert_eq!(session.history().len(), 2);
}

#[test]
fn factories_see_which_fields_the_recipe_provides() {
    let d = temp_recipes("provides");
    write(
        &d,
        "global.lua",
        "function run(turn) turn.global_entities = { { entity = 1, source = 2, weight = 0.5 } } end",
    );
    let with = |enabled: bool| {
        format!(
            r#"
[recipe]
name = "probe-{enabled}"
pipeline = ["global", "probe"]
[stages.global]
use = "lua"
enabled = {enabled}
with = {{ script = "global.lua", writes = ["global_entities"] }}
[stages.probe]
use = "probe"
"#
        )
    };
    for enabled in [true, false] {
        let p = write(&d, &format!("p{enabled}.toml"), &with(enabled));
        // An optional read is no data-flow error when nothing writes it.
        let engine = Engine::from_recipe_with(p, &registry()).unwrap();
        let out = engine.session().turn("x").unwrap();
        assert_eq!(out.turn.ext["sees_global"], serde_json::json!(enabled));
    }
}

#[test]
fn replay_runs_dialogues_as_sessions_would() {
    let d = temp_recipes("replay");
    let p = write(&d, "speak.toml", &SPEAKER.replace("delay_ms = 40", "delay_ms = 0"));
    let engine = Engine::from_recipe_with(p, &registry()).unwrap();
    let script = |texts: &[&str]| -> Vec<Utterance> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Utterance::new(if i % 2 == 0 { Role::Seeker } else { Role::Recommender }, *t))
            .collect()
    };
    let scripts = vec![script(&["a", "b", "c"]), script(&["x"]), script(&[])];
    let mut progress = Vec::new();
    let out = engine.replay(&scripts, 1, &mut |n| progress.push(n)).unwrap();
    assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1, 0]);
    // The second seeker turn of dialogue 0 sees "a", the pipeline's response to it... no:
    // a replay keeps the recorded recommender utterance ("b"), as the dialogue happened.
    let second = &out[0][1];
    assert_eq!(second.user.text, "c");
    let hist: Vec<&str> = second.history.iter().map(|u| u.text.as_str()).collect();
    assert_eq!(hist, ["a", "b"]);
    assert_eq!(progress, [1, 2, 3]);
}

fn vocab_recipe(d: &Path, name: &str) -> PathBuf {
    write(&d.join(".."), "dialogues.txt", "I loved Alien|Try Aliens|Great\nAny comedies?");
    write(
        d,
        &format!("{name}.toml"),
        &format!(
            r#"
[recipe]
name = "{name}"
pipeline = ["speak", "vocab"]
[stages.speak]
use = "speaker"
with = {{ words = ["ok"] }}
[stages.vocab]
use = "vocab"
with = {{ data = "../dialogues.txt" }}
"#
        ),
    )
}

#[test]
fn train_recipe_trains_once_then_says_up_to_date_and_notices_changed_data() {
    let d = temp_recipes("train");
    let recipe = Recipe::load(vocab_recipe(&d, "voc"), &registry()).unwrap();
    assert_eq!(recipe.run_dir(), d.parent().unwrap().join("runs").join("voc"));
    let first = train_recipe(&recipe, &TrainOptions::default()).unwrap();
    let [TrainOutcome::Trained { stage, report, why, .. }] = first.as_slice() else { panic!("{first:?}") };
    assert_eq!(stage, "vocab");
    assert!(why.contains("not trained"), "{why}");
    // Histories of the replayed seeker turns: [], [I loved Alien, Try Aliens], [].
    assert_eq!(report.metrics["histories"], serde_json::json!([0, 2, 0]));
    assert!(d.join("../runs/voc/vocab/vocab.txt").is_file());

    let start = Instant::now();
    let again = train_recipe(&recipe, &TrainOptions::default()).unwrap();
    assert!(matches!(again.as_slice(), [TrainOutcome::UpToDate { .. }]), "{again:?}");
    assert!(again[0].to_string().contains("up to date"), "{}", again[0]);
    assert!(start.elapsed() < Duration::from_secs(2));

    // The data grew: the stage is out of date and trains again.
    std::fs::write(d.join("../dialogues.txt"), "I loved Alien|Try Aliens|Great\nAny comedies?\nHorror?").unwrap();
    let status = recipe_status(&recipe).unwrap();
    assert!(matches!(&status[0].1, TrainStatus::Stale(_)), "{status:?}");
    let third = train_recipe(&recipe, &TrainOptions::default()).unwrap();
    assert!(matches!(third.as_slice(), [TrainOutcome::Trained { .. }]), "{third:?}");

    // A changed upstream stage makes it stale too.
    let p = d.join("voc.toml");
    std::fs::write(&p, std::fs::read_to_string(&p).unwrap().replace(r#"["ok"]"#, r#"["fine"]"#)).unwrap();
    let recipe = Recipe::load(&p, &registry()).unwrap();
    assert!(matches!(&recipe_status(&recipe).unwrap()[0].1, TrainStatus::Stale(_)));

    // --force retrains an up-to-date stage; --stage names stages by id.
    train_recipe(&recipe, &TrainOptions::default()).unwrap();
    let forced = train_recipe(&recipe, &TrainOptions { force: true, ..Default::default() }).unwrap();
    assert!(matches!(forced.as_slice(), [TrainOutcome::Trained { why, .. }] if why == "forced"), "{forced:?}");
    let err = train_recipe(&recipe, &TrainOptions { stage: Some("speak".into()), ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("has nothing to train; trainable stages of recipe \"voc\": \"vocab\""), "{err}");
    let err = train_recipe(&recipe, &TrainOptions { stage: Some("nope".into()), ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("has no stage \"nope\""), "{err}");
}

#[test]
fn a_recipe_that_extends_another_trains_into_its_own_run_dir() {
    let d = temp_recipes("extends");
    vocab_recipe(&d, "base");
    let child = write(&d, "child.toml", "[recipe]\nname = \"child\"\nextends = \"base.toml\"\n");
    let base = Recipe::load(d.join("base.toml"), &registry()).unwrap();
    train_recipe(&base, &TrainOptions::default()).unwrap();
    let child = Recipe::load(child, &registry()).unwrap();
    let out = train_recipe(&child, &TrainOptions::default()).unwrap();
    assert!(matches!(out.as_slice(), [TrainOutcome::Trained { .. }]), "the child has its own artefacts: {out:?}");
    assert!(d.join("../runs/child/vocab/vocab.txt").is_file());
    assert!(d.join("../runs/base/vocab/vocab.txt").is_file());
}

#[test]
fn evaluation_goes_through_the_same_contract() {
    let d = temp_recipes("eval");
    let recipe = Recipe::load(vocab_recipe(&d, "ev"), &registry()).unwrap();
    train_recipe(&recipe, &TrainOptions::default()).unwrap();
    let reports = ecr_engine::train::evaluate_recipe(&recipe, Some("vocab"), &Default::default()).unwrap();
    assert_eq!(reports[0].0, "vocab");
    assert_eq!(reports[0].1.metrics["words"], serde_json::json!(6));
}

#[test]
fn engines_built_over_one_resource_set_share_it() {
    use ecr_engine::{ResourceKey, Resources};
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct Big;
    impl ResourceKey for Big {
        type Value = Mutex<Vec<u8>>;
        fn create(&self, _: &Resources) -> Result<Self::Value, BoxError> {
            Ok(Mutex::new(vec![0; 1024]))
        }
    }
    let res = Resources::new();
    let d = temp_recipes("res");
    let r1 = Recipe::load(write(&d, "a.toml", SPEAKER), &registry()).unwrap().with_resources(&res);
    let r2 = Recipe::load(write(&d, "b.toml", SPEAKER), &registry()).unwrap().with_resources(&res);
    let a: Arc<Mutex<Vec<u8>>> = r1.stages()[0].context().resources().get(&Big).unwrap();
    let b = r2.stages()[1].context().resources().get(&Big).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
}

#[test]
fn a_trainer_trained_on_some_fields_ignores_changes_to_stages_that_do_not_write_them() {
    let d = temp_recipes("narrow");
    write(&d.join(".."), "dialogues.txt", "I loved Alien|Try Aliens|Great");
    let recipe_text = |words: &str, tag: &str, responses_only: bool| {
        format!(
            r#"
[recipe]
name = "narrow"
pipeline = ["speak", "probe", "vocab"]
[stages.speak]
use = "speaker"
with = {{ words = ["{words}"] }}
[stages.probe]
use = "probe"
with = {{ tag = "{tag}" }}
[stages.vocab]
use = "vocab"
with = {{ data = "../dialogues.txt", responses_only = {responses_only} }}
"#
        )
    };
    let load = |text: String| Recipe::load(write(&d, "narrow.toml", &text), &registry()).unwrap();
    let status = |r: &Recipe| recipe_status(r).unwrap().remove(0).1;

    let recipe = load(recipe_text("ok", "a", true));
    train_recipe(&recipe, &TrainOptions::default()).unwrap();
    assert!(matches!(status(&recipe), TrainStatus::UpToDate(_)));
    let before = stage_fingerprint(&recipe, "vocab").unwrap();

    // The probe writes no response: the artefact stays valid, but what the stage computes
    // downstream is still identified by the whole upstream.
    let retagged = load(recipe_text("ok", "b", true));
    assert!(matches!(status(&retagged), TrainStatus::UpToDate(_)), "{:?}", status(&retagged));
    assert_ne!(stage_fingerprint(&retagged, "vocab").unwrap(), before);

    // The speaker writes the responses: stale.
    let reworded = load(recipe_text("fine", "b", true));
    assert!(matches!(status(&reworded), TrainStatus::Stale(_)), "{:?}", status(&reworded));

    // Without the narrowing, any upstream change makes it stale.
    let whole = load(recipe_text("ok", "a", false));
    train_recipe(&whole, &TrainOptions::default()).unwrap();
    let whole_retagged = load(recipe_text("ok", "b", false));
    assert!(matches!(status(&whole_retagged), TrainStatus::Stale(_)), "{:?}", status(&whole_retagged));
}

#[test]
fn training_through_a_stage_leaves_the_stages_after_it_alone() {
    let d = temp_recipes("through");
    write(&d.join(".."), "dialogues.txt", "I loved Alien|Try Aliens");
    let text = r#"
[recipe]
name = "two"
pipeline = ["speak", "first", "second"]
[stages.speak]
use = "speaker"
with = { words = ["ok"] }
[stages.first]
use = "vocab"
with = { data = "../dialogues.txt" }
[stages.second]
use = "vocab"
with = { data = "../dialogues.txt", lowercase = true }
"#;
    let recipe = Recipe::load(write(&d, "two.toml", text), &registry()).unwrap();
    let through = TrainOptions { through: Some("first".into()), ..Default::default() };
    let out = train_recipe(&recipe, &through).unwrap();
    assert!(matches!(out.as_slice(), [TrainOutcome::Trained { stage, .. }] if stage == "first"), "{out:?}");
    let status = recipe_status(&recipe).unwrap();
    assert!(matches!(&status[1], (id, TrainStatus::Missing(_)) if id == "second"), "{status:?}");
    let all = train_recipe(&recipe, &TrainOptions::default()).unwrap();
    assert!(matches!(all.as_slice(), [TrainOutcome::UpToDate { .. }, TrainOutcome::Trained { .. }]), "{all:?}");
}
