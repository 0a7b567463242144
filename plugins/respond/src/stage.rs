//! The `retriever` and `prompt_builder` built-in stages.
//!
//! Both fetch the data layer's resources (catalogue, KG, linker) and the
//! MiniLM encoder once per engine and share them with the other stages.

use crate::clean::ReviewFilter;
use crate::prompt::{EstimateCounter, PromptBuilder, PromptConfig, PromptInput, TokenCounter};
use crate::retrieve::{RetrieveOptions, Retriever, World};
use crate::reviewdb::{DbSources, IndexParams, Opened, ReviewDb, ReviewDbParams};
use ecr_data::{LinkerOptions, Resources};
use ecr_engine::{BoxError, BuildContext, ConfigIssue, Field, Stage, StageFactory, StageIo, Turn, TurnContext};
use ecr_neural::TextEncoder;
use ecr_neural::text::TextEncoderKey;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// The extension field the retriever writes the review entities to.
pub const REVIEW_ENTITIES: &str = "review_entities";
/// The extension field the prompt builder writes the assistant prefix to
/// (the response starts with it; the generator continues it).
pub const RESPONSE_PREFIX: &str = "response_prefix";

/// The catalogue, KG and linker of the engine's data directory, shared with
/// every stage of the engine (the linker with its default options).
fn shared_resources(ctx: &BuildContext) -> Result<Arc<Resources>, BoxError> {
    Ok(Arc::new(Resources::from_shared(ctx.resources(), &ctx.data_dir()?, &LinkerOptions::default())?))
}

fn model_dir_issue(ctx: &BuildContext, model_dir: &str) -> Option<ConfigIssue> {
    let dir = ctx.resolve(model_dir);
    ["config.json", "tokenizer.json", "model.safetensors"].iter().find(|f| !dir.join(f).is_file()).map(|f| {
        ConfigIssue::new("model_dir", format!("{} has no {f}: run models/fetch.sh, or fix the path", dir.display()))
    })
}

/// Configuration of `retriever` (`[stages.<id>.with]`); relative paths
/// resolve against the recipe file that wrote them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrieverConfig {
    /// The reviews file (default: `reviews/imdb_reviews.jsonl` of the data directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviews_file: Option<PathBuf>,
    /// The MiniLM directory written by `models/fetch.sh`.
    pub model_dir: String,
    /// The shared on-disk embedding cache.
    pub embedding_cache: String,
    /// Where the review database is built and kept (one subdirectory per
    /// fingerprint); default: `reviews/` in the recipe's run directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_dir: Option<String>,
    /// Which reviews and sentences are kept (ECR's thresholds).
    pub filter: ReviewFilter,
    /// HNSW construction parameters.
    pub index: IndexParams,
    /// How many of the top candidates to retrieve for.
    pub items: usize,
    /// Review passages (off: the no-knowledge and no-reviews ablations).
    pub reviews: bool,
    /// Sentences of the movie's own reviews.
    pub k: usize,
    /// Sentences of similar movies' reviews when the movie has none.
    pub similar_k: usize,
    /// At most this many similar-movie sentences per film.
    pub per_movie: usize,
    /// HNSW search width.
    pub ef: usize,
    /// History utterances before the user's that make the dialogue context.
    pub context_turns: usize,
    /// KG and movie_info facts (off: the no-knowledge ablation).
    pub facts: bool,
    /// KG relations rendered as facts, in order.
    pub relations: Vec<String>,
    /// At most this many facts per item (0: no limit).
    pub max_facts: usize,
    /// At most this many review entities.
    pub entities: usize,
}

impl Default for RetrieverConfig {
    fn default() -> Self {
        let o = RetrieveOptions::default();
        RetrieverConfig {
            reviews_file: None,
            model_dir: format!("../models/{}", ecr_neural::text::MINILM_DIR),
            embedding_cache: "../.cache/embeddings".into(),
            index_dir: None,
            filter: ReviewFilter::default(),
            index: IndexParams::default(),
            items: o.items,
            reviews: o.reviews,
            k: o.k,
            similar_k: o.similar_k,
            per_movie: o.per_movie,
            ef: o.ef,
            context_turns: o.context_turns,
            facts: o.facts,
            relations: o.relations,
            max_facts: o.max_facts,
            entities: o.entities,
        }
    }
}

impl RetrieverConfig {
    /// The retrieval options.
    pub fn options(&self) -> RetrieveOptions {
        RetrieveOptions {
            items: self.items,
            reviews: self.reviews,
            k: self.k,
            similar_k: self.similar_k,
            per_movie: self.per_movie,
            ef: self.ef,
            context_turns: self.context_turns,
            facts: self.facts,
            relations: self.relations.clone(),
            max_facts: self.max_facts,
            entities: self.entities,
        }
    }

    /// The directory the review databases live in.
    pub fn index_dir(&self, ctx: &BuildContext) -> PathBuf {
        self.index_dir.as_ref().map_or_else(|| ctx.run_dir().join("reviews"), |d| ctx.resolve(d))
    }

    /// The database parameters.
    pub fn db_params(&self) -> ReviewDbParams {
        ReviewDbParams { filter: self.filter.clone(), index: self.index.clone() }
    }
}

/// Open (build on first use) the review database for `config`, with a
/// progress bar when `progress`.
pub fn open_review_db(
    config: &RetrieverConfig,
    res: &Resources,
    encoder: &TextEncoder,
    ctx: &BuildContext,
    progress: bool,
) -> Result<(ReviewDb, Opened), BoxError> {
    let reviews = match &config.reviews_file {
        Some(f) => ctx.resolve(f),
        None => ecr_data::paths::require_file(&res.dir, "reviews/imdb_reviews.jsonl")?,
    };
    let cache = ctx.resolve(&config.embedding_cache);
    let src = DbSources {
        reviews: &reviews,
        also_depends_on: vec![res.dir.join("redial/movie_info.json"), res.dir.join("kg/entity2id.json")],
        catalogue: &res.catalogue,
        linker: &res.linker,
        encoder,
        embedding_cache: Some(&cache),
        progress,
    };
    Ok(ReviewDb::open(&config.index_dir(ctx), &src, &config.db_params())?)
}

/// The factory of `retriever`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetrieverFactory;

/// The running `retriever` stage.
pub struct RetrieverStage {
    res: Arc<Resources>,
    encoder: Arc<TextEncoder>,
    retriever: Retriever,
}

impl RetrieverStage {
    /// A stage over loaded parts.
    pub fn new(res: Arc<Resources>, encoder: Arc<TextEncoder>, retriever: Retriever) -> Self {
        RetrieverStage { res, encoder, retriever }
    }

    /// The retriever.
    pub fn retriever(&self) -> &Retriever {
        &self.retriever
    }

    /// The shared resources as the retriever takes them.
    pub fn world(&self) -> World<'_> {
        World { kg: &self.res.kg, catalogue: &self.res.catalogue, linker: &self.res.linker, encoder: &self.encoder }
    }
}

impl StageFactory for RetrieverFactory {
    type Config = RetrieverConfig;

    fn name(&self) -> &'static str {
        "retriever"
    }

    fn description(&self) -> &'static str {
        "review sentences (HNSW over MiniLM embeddings) and KG/movie_info facts about the top candidates"
    }

    fn io(&self, _config: &Self::Config) -> StageIo {
        StageIo::new(
            [Field::Candidates, Field::History, Field::UserText],
            [Field::Passages, Field::Facts, Field::Ext(REVIEW_ENTITIES.into())],
        )
    }

    fn check(&self, config: &Self::Config, ctx: &BuildContext) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        match (ctx.data_dir(), &config.reviews_file) {
            (_, Some(f)) => issues.extend(ConfigIssue::missing_file("reviews_file", &ctx.resolve(f))),
            (Err(e), None) => issues.push(ConfigIssue::new("", e.to_string())),
            (Ok(dir), None) => {
                issues.extend(ConfigIssue::missing_file("reviews_file", &dir.join("reviews/imdb_reviews.jsonl")))
            }
        }
        issues.extend(model_dir_issue(ctx, &config.model_dir));
        if let Err((k, m)) = config.filter.validate() {
            issues.push(ConfigIssue::new(format!("filter.{k}"), m));
        }
        if config.index.max_connections < 2 || config.index.max_connections > 255 {
            issues.push(ConfigIssue::new("index.max_connections", "expected 2 to 255"));
        }
        if config.items == 0 {
            issues.push(ConfigIssue::new("items", "expected at least 1"));
        }
        issues
    }

    fn build(&self, config: Self::Config, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        let res = shared_resources(ctx)?;
        let encoder = ctx.resources().get(&TextEncoderKey(ctx.resolve(&config.model_dir)))?;
        let world = World { kg: &res.kg, catalogue: &res.catalogue, linker: &res.linker, encoder: &encoder };
        if !config.reviews {
            // No review passages: the database is not needed (nor built).
            let retriever = Retriever::facts_only(world, config.options());
            return Ok(Box::new(RetrieverStage::new(res.clone(), encoder.clone(), retriever)));
        }
        let (db, opened) = open_review_db(&config, &res, &encoder, ctx, true)?;
        if let Opened::Built(reason) = &opened {
            let s = db.stats();
            tracing::info!(
                "review database built ({reason}): {} sentences of {} reviews of {} movies in {:.1} s",
                s.sentences,
                s.kept_reviews,
                s.movies,
                s.total_s
            );
        }
        let retriever = Retriever::new(Arc::new(db), world, config.options())?;
        Ok(Box::new(RetrieverStage::new(res.clone(), encoder.clone(), retriever)))
    }
}

impl Stage for RetrieverStage {
    fn run(&self, turn: &mut Turn, _cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        let r = self.retriever.retrieve(self.world(), &turn.candidates, &turn.history, &turn.user.text)?;
        turn.passages = r.passages;
        turn.facts = r.facts;
        turn.ext.insert(REVIEW_ENTITIES.into(), serde_json::json!(r.entities));
        Ok(())
    }
}

/// Configuration of `prompt_builder`: the template and budget
/// ([`PromptConfig`]), and how many candidates the prompt names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptBuilderConfig {
    /// How many of the top candidates the prompt names.
    pub items: usize,
    /// The template, chat format and budget.
    pub template: PromptConfig,
}

impl Default for PromptBuilderConfig {
    fn default() -> Self {
        PromptBuilderConfig { items: 1, template: PromptConfig::default() }
    }
}

/// The factory of `prompt_builder`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PromptBuilderFactory;

/// The running `prompt_builder` stage.
pub struct PromptBuilderStage {
    res: Arc<Resources>,
    builder: PromptBuilder,
    items: usize,
    counter: Arc<dyn TokenCounter>,
}

impl PromptBuilderStage {
    /// The same stage counting tokens with `counter` (the generator's tokenizer).
    pub fn with_counter(self, counter: Arc<dyn TokenCounter>) -> Self {
        PromptBuilderStage { counter, ..self }
    }
}

impl StageFactory for PromptBuilderFactory {
    type Config = PromptBuilderConfig;

    fn name(&self) -> &'static str {
        "prompt_builder"
    }

    fn description(&self) -> &'static str {
        "the generator prompt from the recipe's template: movie, entities, facts, review sentences, dialogue, under a token budget"
    }

    fn io(&self, _config: &Self::Config) -> StageIo {
        // Knowledge is read when a stage before writes it; a recipe without a
        // retriever prompts with the movie and the dialogue only.
        StageIo::new(
            [Field::Candidates, Field::History, Field::UserText],
            [Field::Prompt, Field::Ext(RESPONSE_PREFIX.into())],
        )
        .with_optional([Field::Passages, Field::Facts, Field::Ext(REVIEW_ENTITIES.into())])
    }

    fn check(&self, config: &Self::Config, ctx: &BuildContext) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if let Err(e) = ctx.data_dir() {
            issues.push(ConfigIssue::new("", e.to_string()));
        }
        if let Err((k, m)) = config.template.validate() {
            issues.push(ConfigIssue::new(format!("template.{k}"), m));
        }
        if config.items == 0 {
            issues.push(ConfigIssue::new("items", "expected at least 1"));
        }
        issues
    }

    fn build(&self, config: Self::Config, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        let res = shared_resources(ctx)?;
        let builder = PromptBuilder::new(config.template)?;
        Ok(Box::new(PromptBuilderStage { res, builder, items: config.items, counter: Arc::new(EstimateCounter) }))
    }
}

impl Stage for PromptBuilderStage {
    fn run(&self, turn: &mut Turn, _cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        let linker = &self.res.linker;
        let entities: Vec<String> = match turn.ext.get(REVIEW_ENTITIES) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| format!("ext.{REVIEW_ENTITIES}: expected a list of names ({e})"))?,
        };
        // The model sees titles, not ReDial's @<id> mentions.
        let history: Vec<ecr_engine::Utterance> = turn
            .history
            .iter()
            .map(|u| ecr_engine::Utterance { text: linker.write_out_movies(&u.text), ..u.clone() })
            .collect();
        let user = linker.write_out_movies(&turn.user.text);
        let input = PromptInput {
            candidates: &turn.candidates,
            items: self.items,
            passages: &turn.passages,
            facts: &turn.facts,
            entities: &entities,
            history: &history,
            user: &user,
        };
        let p = self.builder.build(&input, self.counter.as_ref())?;
        if !p.dropped.is_empty() {
            tracing::debug!(dropped = ?p.dropped, tokens = p.tokens, "prompt trimmed to its budget");
        }
        turn.prompt = Some(p.text);
        turn.ext.insert(RESPONSE_PREFIX.into(), serde_json::json!(p.response_prefix));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_reject_unknown_keys_and_fill_defaults() {
        let c: RetrieverConfig = toml::from_str("k = 5\n[filter]\nmin_rating = 8").unwrap();
        assert_eq!((c.k, c.filter.min_rating, c.filter.min_words), (5, 8, 20));
        assert!(toml::from_str::<RetrieverConfig>("kk = 5").is_err());
        let p: PromptBuilderConfig = toml::from_str("[template]\nbudget = 300").unwrap();
        assert_eq!(p.template.budget, 300);
        assert!(toml::from_str::<PromptBuilderConfig>("[template]\nbudgett = 300").is_err());
    }
}
