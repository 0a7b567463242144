//! The registry of stage factories, keyed by the name recipes write in `use`.

use crate::stage::{BoxError, BuildContext, ConfigIssue, Stage, StageFactory, StageIo};
use crate::train::Trainable;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A stage configuration that was deserialized and is ready to check and build.
pub trait PreparedStage: Send + Sync {
    /// What the configured stage reads and writes.
    fn io(&self) -> StageIo;
    /// Checks that need no heavy resources.
    fn check(&self, ctx: &BuildContext) -> Vec<ConfigIssue>;
    /// The configuration with defaults filled in, for `ecr recipe show`.
    fn resolved(&self) -> toml::Value;
    /// Build the running stage.
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError>;
    /// The stage's trainer, if its kind learns from data.
    fn trainer(&self, ctx: &BuildContext) -> Result<Option<Box<dyn Trainable>>, BoxError>;
}

/// A factory with its config type erased, as the registry stores it.
pub trait ErasedFactory: Send + Sync {
    /// The name recipes write in `use`.
    fn name(&self) -> &'static str;
    /// One line on what the stage does.
    fn description(&self) -> &'static str;
    /// Deserialize the `with` table into the factory's typed config.
    ///
    /// The error is the deserializer's message and the dotted path of the key
    /// it is about (empty for the table itself).
    fn prepare(&self, with: toml::Value) -> Result<Box<dyn PreparedStage>, (String, String)>;
}

struct Prepared<F: StageFactory> {
    factory: Arc<F>,
    config: F::Config,
}

impl<F: StageFactory> PreparedStage for Prepared<F> {
    fn io(&self) -> StageIo {
        self.factory.io(&self.config)
    }
    fn check(&self, ctx: &BuildContext) -> Vec<ConfigIssue> {
        self.factory.check(&self.config, ctx)
    }
    fn resolved(&self) -> toml::Value {
        toml::Value::try_from(&self.config)
            .unwrap_or_else(|e| toml::Value::String(format!("<config cannot be shown: {e}>")))
    }
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        self.factory.build(self.config.clone(), ctx)
    }
    fn trainer(&self, ctx: &BuildContext) -> Result<Option<Box<dyn Trainable>>, BoxError> {
        self.factory.trainer(self.config.clone(), ctx)
    }
}

struct Erased<F: StageFactory>(Arc<F>);

impl<F: StageFactory> ErasedFactory for Erased<F> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn description(&self) -> &'static str {
        self.0.description()
    }
    fn prepare(&self, with: toml::Value) -> Result<Box<dyn PreparedStage>, (String, String)> {
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(with, &mut track);
        match <F::Config as serde::Deserialize>::deserialize(de) {
            Ok(config) => Ok(Box::new(Prepared { factory: Arc::clone(&self.0), config })),
            Err(e) => {
                let path = track.path().to_string();
                let path = if path == "." { String::new() } else { path };
                Err((e.to_string(), path))
            }
        }
    }
}

/// Error when registering a factory.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Two factories claim the same name.
    #[error("a stage factory named {0:?} is already registered: pick another name")]
    Duplicate(String),
}

/// Stage factories by name. Hosts choose what to register; the engine
/// registers `lua` and `dylib` itself.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<&'static str, Arc<dyn ErasedFactory>>,
}

impl Registry {
    /// A registry with the engine's own factories: `lua` and `dylib`.
    pub fn new() -> Self {
        let mut r = Registry::default();
        r.register(crate::lua::LuaFactory).expect("fresh registry");
        r.register(crate::dylib::DylibFactory).expect("fresh registry");
        r
    }

    /// Register a factory under its name; a duplicate name is an error.
    pub fn register<F: StageFactory>(&mut self, factory: F) -> Result<&mut Self, RegistryError> {
        let name = factory.name();
        if self.factories.contains_key(name) {
            return Err(RegistryError::Duplicate(name.to_string()));
        }
        self.factories.insert(name, Arc::new(Erased(Arc::new(factory))));
        Ok(self)
    }

    /// The factory registered under `name`.
    pub fn get(&self, name: &str) -> Option<&dyn ErasedFactory> {
        self.factories.get(name).map(|f| f.as_ref())
    }

    /// Registered names with their descriptions, sorted by name.
    pub fn list(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.factories.values().map(|f| (f.name(), f.description()))
    }

    /// The registered name nearest to `name`, if it is close enough to be a typo.
    pub fn suggest(&self, name: &str) -> Option<&'static str> {
        self.factories
            .keys()
            .map(|&k| (k, edit_distance(&name.to_lowercase(), k)))
            .filter(|&(k, d)| d <= 2.max(k.len() / 3))
            .min_by_key(|&(_, d)| d)
            .map(|(k, _)| k)
    }
}

/// Levenshtein distance over chars.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("entity_linkr", "entity_linker"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("lua", "lua"), 0);
    }
}
