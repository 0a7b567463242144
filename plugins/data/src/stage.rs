//! The `entity_linker` built-in stage: links `user.text` into `user.entities`
//! and, by default, also the history utterances that have no entities yet
//! (system responses, or a history given from outside), so that later stages
//! (local emotion) see the entities of every turn.
//!
//! The catalogue, KG and automaton are engine resources ([`crate::keys`]):
//! loaded once per engine and shared by every stage and session.

use crate::linker::LinkerOptions;
use crate::prepare::Resources;
use ecr_engine::{BoxError, BuildContext, ConfigIssue, Field, Stage, StageFactory, StageIo, Turn, TurnContext};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

fn yes() -> bool {
    true
}

/// Configuration of `entity_linker` (`[stages.<id>.with]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityLinkerConfig {
    /// Extra stop words: names made of these words do not link on their own.
    #[serde(default)]
    pub stop_words: Vec<String>,
    /// Extra aliases: surface form → DBpedia resource name (the URI's last
    /// segment, e.g. `"sci fi" = "Science_fiction"`).
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Link movie titles typed without `@<id>` (with or without the year).
    #[serde(default = "yes")]
    pub titles: bool,
    /// Link KG entities (people, genres, companies, ...) by name.
    #[serde(default = "yes")]
    pub entities: bool,
    /// Use the built-in genre aliases (`comedies` → Comedy, ...).
    #[serde(default = "yes")]
    pub builtin_aliases: bool,
    /// Also link history utterances whose `entities` are empty.
    #[serde(default = "yes")]
    pub link_history: bool,
}

impl Default for EntityLinkerConfig {
    fn default() -> Self {
        EntityLinkerConfig {
            stop_words: Vec::new(),
            aliases: BTreeMap::new(),
            titles: true,
            entities: true,
            builtin_aliases: true,
            link_history: true,
        }
    }
}

impl EntityLinkerConfig {
    fn options(&self) -> LinkerOptions {
        LinkerOptions {
            titles: self.titles,
            entities: self.entities,
            aliases: self.builtin_aliases,
            extra_stop_words: self.stop_words.clone(),
            extra_aliases: self.aliases.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            common_words: Default::default(),
        }
    }

    /// The data directory: the engine's one rule ([`BuildContext::data_dir`]).
    fn dir(&self, ctx: &BuildContext) -> Result<PathBuf, String> {
        ctx.data_dir().map_err(|e| e.to_string())
    }
}

/// The factory of `entity_linker`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntityLinkerFactory;

/// The running `entity_linker` stage.
pub struct EntityLinkerStage {
    res: Arc<Resources>,
    link_history: bool,
}

impl StageFactory for EntityLinkerFactory {
    type Config = EntityLinkerConfig;

    fn name(&self) -> &'static str {
        "entity_linker"
    }

    fn description(&self) -> &'static str {
        "links movies (@id or typed titles) and KG entities in user.text into user.entities"
    }

    fn io(&self, config: &Self::Config) -> StageIo {
        if config.link_history {
            StageIo::new([Field::UserText, Field::History], [Field::UserEntities, Field::History])
        } else {
            StageIo::new([Field::UserText], [Field::UserEntities])
        }
    }

    fn check(&self, config: &Self::Config, ctx: &BuildContext) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        match config.dir(ctx) {
            Err(e) => issues.push(ConfigIssue::new("", e)),
            Ok(dir) => {
                for f in ["redial/movies_with_mentions.csv", "redial/movie_entity.json", "kg/entity2id.json"] {
                    if !dir.join(f).is_file() {
                        issues.push(ConfigIssue::new(
                            "",
                            format!(
                                "the data directory {} has no {f}: set ECR_DATA_DIR to the shared data directory",
                                dir.display()
                            ),
                        ));
                    }
                }
            }
        }
        for (k, v) in &config.aliases {
            if k.trim().is_empty() || v.trim().is_empty() || v.contains(' ') {
                issues.push(ConfigIssue::new(
                    format!("aliases.{k}"),
                    format!("alias {k:?} = {v:?}: expected a non-empty surface form and a DBpedia resource name like \"Science_fiction\""),
                ));
            }
        }
        issues
    }

    fn build(&self, config: Self::Config, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        let dir = config.dir(ctx)?;
        let res = Arc::new(Resources::from_shared(ctx.resources(), &dir, &config.options())?);
        let unknown: Vec<String> = res
            .linker
            .unknown_aliases()
            .iter()
            .filter(|(s, _)| config.aliases.contains_key(s))
            .map(|(s, r)| format!("{s:?} = {r:?}"))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "aliases {}: no such entity in {}/kg/entity2id.json (write the URI's last segment, e.g. \"Science_fiction\")",
                unknown.join(", "),
                dir.display()
            )
            .into());
        }
        Ok(Box::new(EntityLinkerStage { res, link_history: config.link_history }))
    }
}

impl Stage for EntityLinkerStage {
    fn run(&self, turn: &mut Turn, _cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        let linker = &self.res.linker;
        turn.user.entities = linker.link(&turn.user.text);
        if self.link_history {
            for u in turn.history.iter_mut().filter(|u| u.entities.is_empty()) {
                u.entities = linker.link(&u.text);
            }
        }
        tracing::trace!(entities = turn.user.entities.len(), "linked");
        Ok(())
    }
}

impl EntityLinkerStage {
    /// The shared resources (catalogue, KG, linker) this stage uses.
    pub fn resources(&self) -> &Arc<Resources> {
        &self.res
    }
}
