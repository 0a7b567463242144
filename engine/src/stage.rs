//! Stages and their factories.
//!
//! A [`Stage`] is the running value that changes a [`Turn`]; a
//! [`StageFactory`] turns the stage's typed configuration (the recipe's
//! `[stages.<id>.with]` table) into one. Factories are registered by name in
//! a [`Registry`](crate::registry::Registry); the recipe's `use` key picks one.

use crate::resources::Resources;
use crate::train::Trainable;
use crate::turn::{Field, Turn};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The error type stages and factories return: any error that can cross threads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a stage reads from and writes to the [`Turn`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StageIo {
    /// Fields the stage reads; an earlier enabled stage (or the session) must write each.
    pub reads: Vec<Field>,
    /// Fields the stage reads when an earlier enabled stage writes them, and
    /// does without otherwise (the factory sees which: [`BuildContext::provides`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub optional_reads: Vec<Field>,
    /// Fields the stage writes.
    pub writes: Vec<Field>,
}

impl StageIo {
    /// Declare reads and writes.
    pub fn new(reads: impl IntoIterator<Item = Field>, writes: impl IntoIterator<Item = Field>) -> Self {
        StageIo { reads: reads.into_iter().collect(), optional_reads: Vec::new(), writes: writes.into_iter().collect() }
    }

    /// The same, also reading `optional` when the recipe provides them.
    pub fn with_optional(mut self, optional: impl IntoIterator<Item = Field>) -> Self {
        self.optional_reads.extend(optional);
        self
    }
}

/// One step of the turn pipeline, built once per engine and shared by all sessions.
pub trait Stage: Send + Sync {
    /// Read and change the turn. `cx` delivers events to the caller while the
    /// turn runs and says whether the caller cancelled. An error fails this
    /// turn only; the engine and other sessions go on.
    fn run(&self, turn: &mut Turn, cx: &mut TurnContext<'_>) -> Result<(), BoxError>;

    /// Run outside any engine (tests, tools): events are dropped and nothing cancels.
    fn run_detached(&self, turn: &mut Turn) -> Result<(), BoxError> {
        self.run(turn, &mut TurnContext::detached(""))
    }

    /// Run over several independent turns (other dialogues), e.g. when a
    /// recipe's stages are replayed over a whole dataset. The default runs
    /// them one by one; a neural stage batches them.
    fn run_batch(&self, turns: &mut [Turn], cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        for t in turns {
            cx.check_cancelled()?;
            self.run(t, cx)?;
        }
        Ok(())
    }
}

/// Something a stage tells the caller while the turn runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A piece of generated text (a decoded token), in order.
    Token {
        /// The text, valid UTF-8 (a multi-byte character is never split).
        text: String,
    },
    /// A human-readable note ("loading the model", "no reviews for this movie").
    Note {
        /// The note.
        text: String,
    },
    /// A field's value before the stage finishes (e.g. candidates as soon as
    /// they are scored).
    Partial {
        /// The field.
        field: Field,
        /// Its value in the turn's serde form.
        value: serde_json::Value,
    },
    /// Anything else, named by the stage (a Lua `emit("score", 3)`).
    Custom {
        /// The stage's name for it.
        name: String,
        /// The value.
        value: serde_json::Value,
    },
}

/// An [`Event`] with the id of the stage that emitted it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TurnEvent {
    /// The stage id in the recipe.
    pub stage: String,
    /// What it said.
    #[serde(flatten)]
    pub event: Event,
}

/// Lets a caller stop a running turn from another thread. Cheap to clone;
/// all clones share one flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the turn to stop: the running stage sees it at its next check, and
    /// the engine runs no further stage.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// The shared flag (what dylib stages get as a pointer).
    pub fn flag(&self) -> &AtomicBool {
        &self.0
    }
}

/// Why a turn stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Interrupted {
    /// The caller cancelled.
    #[error("the turn was cancelled")]
    Cancelled,
    /// The turn's deadline passed.
    #[error("the turn ran past its deadline")]
    Deadline,
}

/// What a stage's [`Stage::run`] gets besides the turn: the caller's event
/// sink, cancellation and deadline.
pub struct TurnContext<'a> {
    stage: &'a str,
    sink: Option<&'a mut dyn FnMut(TurnEvent)>,
    cancel: Option<&'a CancelToken>,
    deadline: Option<Instant>,
}

impl<'a> TurnContext<'a> {
    /// A context for `stage` delivering events to `sink`.
    pub fn new(
        stage: &'a str,
        sink: Option<&'a mut dyn FnMut(TurnEvent)>,
        cancel: Option<&'a CancelToken>,
        deadline: Option<Instant>,
    ) -> Self {
        TurnContext { stage, sink, cancel, deadline }
    }

    /// A context that drops events and is never cancelled (tests, batch jobs).
    pub fn detached(stage: &'a str) -> Self {
        TurnContext { stage, sink: None, cancel: None, deadline: None }
    }

    /// The id of the running stage.
    pub fn stage(&self) -> &str {
        self.stage
    }

    /// Deliver `event` to the caller now.
    pub fn emit(&mut self, event: Event) {
        if let Some(sink) = self.sink.as_mut() {
            sink(TurnEvent { stage: self.stage.to_string(), event });
        }
    }

    /// Emit a generated piece of text.
    pub fn token(&mut self, text: impl Into<String>) {
        self.emit(Event::Token { text: text.into() });
    }

    /// Emit a note.
    pub fn note(&mut self, text: impl Into<String>) {
        self.emit(Event::Note { text: text.into() });
    }

    /// Whether the caller cancelled or the deadline passed.
    pub fn interrupted(&self) -> Option<Interrupted> {
        if self.cancel.is_some_and(CancelToken::is_cancelled) {
            Some(Interrupted::Cancelled)
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(Interrupted::Deadline)
        } else {
            None
        }
    }

    /// Whether the stage should stop now.
    pub fn is_cancelled(&self) -> bool {
        self.interrupted().is_some()
    }

    /// `Err` (an [`Interrupted`]) when the stage should stop; use with `?`
    /// between units of work (e.g. generated tokens).
    pub fn check_cancelled(&self) -> Result<(), BoxError> {
        match self.interrupted() {
            Some(i) => Err(Box::new(i)),
            None => Ok(()),
        }
    }

    /// The cancellation token, if the caller gave one.
    pub fn cancel_token(&self) -> Option<&CancelToken> {
        self.cancel
    }

    /// The turn's deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// A problem with one key of a stage's configuration, found before building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The key inside `with` (dotted for nested keys, e.g. `script`).
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl ConfigIssue {
    /// An issue with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigIssue { key: key.into(), message: message.into() }
    }

    /// The usual check that a configured file exists; `None` when it does.
    pub fn missing_file(key: &str, path: &Path) -> Option<Self> {
        (!path.is_file()).then(|| {
            ConfigIssue::new(
                key,
                format!(
                    "file {} does not exist: fix the path (relative paths resolve against the recipe's directory)",
                    path.display()
                ),
            )
        })
    }
}

/// What a factory may use while checking and building: where the recipe is,
/// which fields earlier stages provide, the run and data directories, and the
/// resources shared by all stages of one engine.
#[derive(Clone)]
pub struct BuildContext {
    recipe_path: PathBuf,
    recipe_name: String,
    stage_id: String,
    /// For a stage whose config comes partly from a recipe it `extends`: the
    /// directory of the file that wrote each string value of its `with` table.
    path_bases: Arc<HashMap<String, PathBuf>>,
    /// Fields written before this stage runs (the session's and earlier enabled stages').
    provided: Arc<BTreeSet<Field>>,
    resources: Resources,
    data_sample: f64,
}

impl BuildContext {
    /// A context for the stage `stage_id` of the recipe `recipe_name` at `recipe_path`.
    pub fn new(recipe_path: impl Into<PathBuf>, recipe_name: impl Into<String>, stage_id: impl Into<String>) -> Self {
        BuildContext {
            recipe_path: recipe_path.into(),
            recipe_name: recipe_name.into(),
            stage_id: stage_id.into(),
            path_bases: Default::default(),
            provided: Arc::new(Field::GIVEN.iter().cloned().collect()),
            resources: Resources::new(),
            data_sample: 1.0,
        }
    }

    /// The same recipe and resources, for another stage.
    pub fn for_stage(&self, stage_id: &str) -> Self {
        BuildContext { stage_id: stage_id.to_string(), path_bases: Default::default(), ..self.clone() }
    }

    /// The same context, resolving each listed string value against its own
    /// directory (the recipe loader passes where each `with` value was written).
    pub fn with_path_bases(&self, bases: HashMap<String, PathBuf>) -> Self {
        BuildContext { path_bases: Arc::new(bases), ..self.clone() }
    }

    /// The same context, with `provided` as the fields written before the stage.
    pub fn with_provided(&self, provided: BTreeSet<Field>) -> Self {
        BuildContext { provided: Arc::new(provided), ..self.clone() }
    }

    /// The same context over another set of resources (a host sharing one set
    /// between several engines).
    pub fn with_resources(&self, resources: Resources) -> Self {
        BuildContext { resources, ..self.clone() }
    }

    /// The same context with `recipe.data_sample` set to `fraction`.
    pub fn with_data_sample(&self, fraction: f64) -> Self {
        BuildContext { data_sample: fraction, ..self.clone() }
    }

    /// `recipe.data_sample`: the fraction of each data split's dialogues that
    /// training and evaluation use (1, the default, means all). Quick recipes
    /// use less so that they train in minutes; the data layer picks the
    /// dialogues by a hash of their id, so a sample is stable as the data grows.
    pub fn data_sample(&self) -> f64 {
        self.data_sample
    }

    /// The recipe file.
    pub fn recipe_path(&self) -> &Path {
        &self.recipe_path
    }

    /// The recipe's name (`recipe.name`).
    pub fn recipe_name(&self) -> &str {
        &self.recipe_name
    }

    /// The directory relative paths resolve against.
    pub fn recipe_dir(&self) -> &Path {
        self.recipe_path.parent().unwrap_or(Path::new("."))
    }

    /// The stage's id in the recipe.
    pub fn stage_id(&self) -> &str {
        &self.stage_id
    }

    /// Whether an earlier enabled stage (or the session) writes `field`: a
    /// factory assembles optional parts from it (no global branch without
    /// `global_entities`).
    pub fn provides(&self, field: &Field) -> bool {
        self.provided.contains(field)
    }

    /// Every field written before this stage.
    pub fn provided(&self) -> &BTreeSet<Field> {
        &self.provided
    }

    /// The recipe's run directory, `runs/<recipe name>/` ([`crate::paths`]).
    pub fn run_dir(&self) -> PathBuf {
        crate::paths::run_dir(&self.recipe_path, &self.recipe_name)
    }

    /// The default place of this stage's trained artefacts: `<run dir>/<stage id>`.
    pub fn stage_dir(&self) -> PathBuf {
        self.run_dir().join(&self.stage_id)
    }

    /// The data directory ([`crate::paths`]: `$ECR_DATA_DIR`, else
    /// `shared/data` beside the recipe or the working directory).
    pub fn data_dir(&self) -> Result<PathBuf, BoxError> {
        Ok(crate::paths::data_dir_from(self.recipe_dir())?)
    }

    /// The compute device stages should use: `$ECR_DEVICE` (`cpu`, `cuda`,
    /// `cuda:1`, `metal`), else `cpu`. Neural plugins map it to their device type.
    pub fn device(&self) -> String {
        std::env::var("ECR_DEVICE").ok().filter(|d| !d.is_empty()).unwrap_or_else(|| "cpu".into())
    }

    /// Resolve a configured path against the directory of the recipe file
    /// that wrote it (the loaded recipe, or a recipe it `extends`).
    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        let p = path.as_ref();
        if p.is_absolute() {
            return p.to_path_buf();
        }
        let base = p.to_str().and_then(|s| self.path_bases.get(s)).map_or(self.recipe_dir(), PathBuf::as_path);
        base.join(p)
    }

    /// A configured path, or the default `<stage dir>/<default_name>` when unset.
    pub fn resolve_or_stage_dir(&self, path: Option<&str>, default_name: &str) -> PathBuf {
        match path {
            Some(p) => self.resolve(p),
            None if default_name.is_empty() => self.stage_dir(),
            None => self.stage_dir().join(default_name),
        }
    }

    /// The engine's shared resources ([`Resources::get`] creates one once).
    pub fn resources(&self) -> &Resources {
        &self.resources
    }
}

/// Creates a stage from its typed configuration. Register it in a
/// [`Registry`](crate::registry::Registry) under [`StageFactory::name`].
pub trait StageFactory: Send + Sync + 'static {
    /// The stage's configuration, deserialized from `[stages.<id>.with]`.
    /// Use `#[serde(deny_unknown_fields)]` and defaults for optional keys.
    type Config: DeserializeOwned + Serialize + Clone + Send + Sync + 'static;

    /// The name recipes write in `use`.
    fn name(&self) -> &'static str;

    /// One line on what the stage does.
    fn description(&self) -> &'static str;

    /// What the stage with this configuration reads and writes.
    fn io(&self, config: &Self::Config) -> StageIo;

    /// Checks that need no heavy resources (files exist, values in range).
    fn check(&self, _config: &Self::Config, _ctx: &BuildContext) -> Vec<ConfigIssue> {
        Vec::new()
    }

    /// Build the running stage (load models, compile scripts, ...).
    fn build(&self, config: Self::Config, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError>;

    /// For a stage that learns from data: its trainer, built from the same
    /// configuration (and the same model type `build` loads), so training and
    /// inference cannot drift apart. `None` (the default): nothing to train.
    fn trainer(&self, _config: Self::Config, _ctx: &BuildContext) -> Result<Option<Box<dyn Trainable>>, BoxError> {
        Ok(None)
    }
}
