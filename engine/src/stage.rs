//! Stages and their factories.
//!
//! A [`Stage`] is the running value that changes a [`Turn`]; a
//! [`StageFactory`] turns the stage's typed configuration (the recipe's
//! `[stages.<id>.with]` table) into one. Factories are registered by name in
//! a [`Registry`](crate::registry::Registry); the recipe's `use` key picks one.

use crate::turn::{Field, Turn};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The error type stages and factories return: any error that can cross threads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a stage reads from and writes to the [`Turn`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StageIo {
    /// Fields the stage reads; an earlier enabled stage (or the session) must write each.
    pub reads: Vec<Field>,
    /// Fields the stage writes.
    pub writes: Vec<Field>,
}

impl StageIo {
    /// Declare reads and writes.
    pub fn new(reads: impl IntoIterator<Item = Field>, writes: impl IntoIterator<Item = Field>) -> Self {
        StageIo { reads: reads.into_iter().collect(), writes: writes.into_iter().collect() }
    }
}

/// One step of the turn pipeline, built once per engine and shared by all sessions.
pub trait Stage: Send + Sync {
    /// Read and change the turn. An error fails this turn only; the engine
    /// and other sessions go on.
    fn run(&self, turn: &mut Turn) -> Result<(), BoxError>;
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
/// and resources shared by all stages of one engine (a model loaded once).
#[derive(Clone)]
pub struct BuildContext {
    recipe_path: PathBuf,
    stage_id: String,
    /// For a stage whose config comes partly from a recipe it `extends`: the
    /// directory of the file that wrote each string value of its `with` table.
    path_bases: Arc<HashMap<String, PathBuf>>,
    shared: Arc<Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>>,
}

impl BuildContext {
    /// A context for the stage `stage_id` of the recipe at `recipe_path`.
    pub fn new(recipe_path: impl Into<PathBuf>, stage_id: impl Into<String>) -> Self {
        BuildContext {
            recipe_path: recipe_path.into(),
            stage_id: stage_id.into(),
            path_bases: Default::default(),
            shared: Default::default(),
        }
    }

    /// The same resources, for another stage.
    pub fn for_stage(&self, stage_id: &str) -> Self {
        BuildContext { stage_id: stage_id.to_string(), path_bases: Default::default(), ..self.clone() }
    }

    /// The same context, resolving each listed string value against its own
    /// directory (the recipe loader passes where each `with` value was written).
    pub fn with_path_bases(&self, bases: HashMap<String, PathBuf>) -> Self {
        BuildContext { path_bases: Arc::new(bases), ..self.clone() }
    }

    /// The recipe file.
    pub fn recipe_path(&self) -> &Path {
        &self.recipe_path
    }

    /// The directory relative paths resolve against.
    pub fn recipe_dir(&self) -> &Path {
        self.recipe_path.parent().unwrap_or(Path::new("."))
    }

    /// The stage's id in the recipe.
    pub fn stage_id(&self) -> &str {
        &self.stage_id
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

    /// A resource shared by all stages of the engine, created on first use
    /// under `key` (e.g. the text encoder that two stages need).
    pub fn shared<T, F>(&self, key: &str, init: F) -> Result<Arc<T>, BoxError>
    where
        T: Any + Send + Sync,
        F: FnOnce() -> Result<T, BoxError>,
    {
        // Hold the lock while creating so the resource is created once.
        let mut map = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = map.get(key) {
            return Arc::clone(v)
                .downcast::<T>()
                .map_err(|_| format!("shared resource {key:?} was created with another type").into());
        }
        let v = Arc::new(init()?);
        map.insert(key.to_string(), v.clone() as Arc<dyn Any + Send + Sync>);
        Ok(v)
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
}
