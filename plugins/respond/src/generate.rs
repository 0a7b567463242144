//! The `generator` stage: the response, generated from the prompt by
//! SmolLM2 ([`ecr_llm`]), streamed token by token as [`ecr_engine::Event::Token`]
//! events while the turn runs, stopped when the caller cancels.
//!
//! The prompt builder ends the prompt inside the assistant's turn with ECR's
//! opening sentence (`ext.response_prefix`); the response is that prefix and
//! the model's continuation, and the stream starts with the prefix, so the
//! streamed pieces join to exactly the final response. The model is an engine
//! resource ([`LlmKey`]): loaded once, shared by every session. Our fast
//! decoder is the default; `decoder = "candle"` picks candle's for comparison.

use crate::finetune::{ADAPTER_FILE, FinetuneConfig};
use crate::knowledge::info_relations;
use crate::stage::{RESPONSE_PREFIX, REVIEW_ENTITIES};
use ecr_engine::{
    BoxError, BuildContext, ConfigIssue, Field, ResourceKey, Resources, Stage, StageFactory, StageIo, Turn, TurnContext,
};
use ecr_llm::lora::Adapter;
use ecr_llm::{GenerateParams, Llm, LoadOptions, SamplingParams, Spared, StopReason};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

/// The shipped model, relative to a recipe in `recipes/`.
pub const DEFAULT_MODEL: &str = "../models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// A loaded language model, as an engine resource (by file, load options and adapter).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LlmKey {
    /// The GGUF file.
    pub path: PathBuf,
    /// The load options, as canonical JSON (so the key can be hashed).
    pub options: String,
    /// A LoRA adapter file applied beside the weights, and the shape it must have (JSON).
    pub adapter: Option<(PathBuf, String)>,
}

impl LlmKey {
    /// The key of `path` loaded with `options`.
    pub fn new(path: PathBuf, options: &LoadOptions) -> Self {
        LlmKey { path, options: serde_json::to_string(options).unwrap_or_default(), adapter: None }
    }

    /// The same model with the adapter file `adapter` of shape `lora`.
    pub fn with_adapter(mut self, adapter: PathBuf, lora: &ecr_llm::lora::LoraConfig) -> Self {
        self.adapter = Some((adapter, serde_json::to_string(lora).unwrap_or_default()));
        self
    }
}

impl ResourceKey for LlmKey {
    type Value = Llm;
    fn create(&self, _: &Resources) -> Result<Llm, BoxError> {
        let options: LoadOptions = serde_json::from_str(&self.options)?;
        Ok(match &self.adapter {
            Some((file, lora)) => {
                let lora: ecr_llm::lora::LoraConfig = serde_json::from_str(lora)?;
                Llm::load_with_adapter(&self.path, &options, file, Some(&lora))?
            }
            None => Llm::load(&self.path, &options)?,
        })
    }
}

/// Configuration of `generator` (`[stages.<id>.with]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorConfig {
    /// The GGUF model file (written by `models/fetch.sh`).
    pub model: String,
    /// Which decoder and how (`decoder = "fast"` or `"candle"`, `threads`, ...).
    pub load: LoadOptions,
    /// Max and min new tokens, sampling (greedy or seeded temperature/top-p, no-repeat-n-gram), stop
    /// sequences.
    pub generate: GenerateParams,
    /// Fine-tune a LoRA adapter on the review database (`ecr train`) and generate with it; absent
    /// or `enabled = false`: the base model, prompted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneConfig>,
    /// The adapter's directory (default `runs/<recipe>/<stage id>/`), e.g. another recipe's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Whether the repetition rules (`no_repeat_ngram`, `repetition_penalty`) spare the names the
    /// prompt shows (the candidate movies, the facts' heads and tails but the plot, the review
    /// entities): a name written a second time is then written the same way, not deformed to
    /// escape the rules ([`ecr_llm::Spared`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub spare_names: bool,
}

impl GeneratorConfig {
    /// The fine-tuning settings when the recipe fine-tunes (present and enabled).
    pub fn finetune(&self) -> Option<&FinetuneConfig> {
        self.finetune.as_ref().filter(|f| f.enabled)
    }

    /// The adapter file in `ctx` (whether or not it exists).
    pub fn adapter_file(&self, ctx: &BuildContext) -> PathBuf {
        ctx.resolve_or_stage_dir(self.adapter.as_deref(), "").join(ADAPTER_FILE)
    }

    /// The model's resource key in `ctx`: with the adapter when the recipe fine-tunes.
    pub fn llm_key(&self, ctx: &BuildContext) -> LlmKey {
        let key = LlmKey::new(ctx.resolve(&self.model), &self.load);
        match self.finetune() {
            Some(f) => key.with_adapter(self.adapter_file(ctx), &f.lora),
            None => key,
        }
    }
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        let sampling = SamplingParams { no_repeat_ngram: 3, ..SamplingParams::default() };
        GeneratorConfig {
            model: DEFAULT_MODEL.into(),
            load: LoadOptions::default(),
            generate: GenerateParams { max_new_tokens: 60, min_new_tokens: 20, sampling, ..GenerateParams::default() },
            finetune: None,
            adapter: None,
            spare_names: false,
        }
    }
}

/// The factory of `generator`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GeneratorFactory;

/// The running `generator` stage.
pub struct GeneratorStage {
    llm: Arc<Llm>,
    params: GenerateParams,
    spare_names: bool,
}

impl GeneratorStage {
    /// A stage over a loaded model; `spare_names` as [`GeneratorConfig::spare_names`].
    pub fn new(llm: Arc<Llm>, params: GenerateParams, spare_names: bool) -> Self {
        GeneratorStage { llm, params, spare_names }
    }

    /// The names the repetition rules spare in this turn ([`prompt_names`]), when configured.
    fn spared_names(&self, turn: &Turn, prompt: &str) -> Result<Spared, BoxError> {
        if !self.spare_names {
            return Ok(Spared::default());
        }
        Ok(self.llm.spared_names(&prompt_names(turn, prompt))?)
    }
}

/// The names of `turn` that `prompt` shows: the candidates', the facts' (heads, and tails but
/// plots, which are sentences) and the review entities', each once, in that order.
pub fn prompt_names<'t>(turn: &'t Turn, prompt: &str) -> Vec<&'t str> {
    let entities = turn.ext.get(REVIEW_ENTITIES).and_then(|v| v.as_array());
    let mut names: Vec<&str> = Vec::new();
    let all = turn
        .candidates
        .iter()
        .map(|c| c.name.as_str())
        .chain(turn.facts.iter().map(|f| f.head.as_str()))
        .chain(turn.facts.iter().filter(|f| f.relation != info_relations::PLOT).map(|f| f.tail.as_str()))
        .chain(entities.into_iter().flatten().filter_map(|v| v.as_str()));
    for n in all {
        if !n.trim().is_empty() && prompt.contains(n) && !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

impl StageFactory for GeneratorFactory {
    type Config = GeneratorConfig;

    fn name(&self) -> &'static str {
        "generator"
    }

    fn description(&self) -> &'static str {
        "the response: SmolLM2 continues the prompt, streaming each token (fast decoder by default)"
    }

    fn io(&self, config: &Self::Config) -> StageIo {
        let mut optional = vec![Field::Ext(RESPONSE_PREFIX.into())];
        if config.spare_names {
            optional.extend([Field::Candidates, Field::Facts, Field::Ext(REVIEW_ENTITIES.into())]);
        }
        StageIo::new([Field::Prompt], [Field::Response]).with_optional(optional)
    }

    fn check(&self, config: &Self::Config, ctx: &BuildContext) -> Vec<ConfigIssue> {
        let path = ctx.resolve(&config.model);
        let mut issues: Vec<ConfigIssue> = (!path.is_file())
            .then(|| {
                ConfigIssue::new(
                    "model",
                    format!("{} does not exist: run models/fetch.sh, or fix the path", path.display()),
                )
            })
            .into_iter()
            .collect();
        if config.generate.max_new_tokens == 0 {
            issues.push(ConfigIssue::new("generate.max_new_tokens", "must be at least 1"));
        }
        if config.generate.min_new_tokens > config.generate.max_new_tokens {
            issues.push(ConfigIssue::new(
                "generate.min_new_tokens",
                format!(
                    "{} is more than max_new_tokens ({}): lower it or raise max_new_tokens",
                    config.generate.min_new_tokens, config.generate.max_new_tokens
                ),
            ));
        }
        let penalty = config.generate.sampling.repetition_penalty;
        if !(penalty.is_finite() && penalty > 0.0) {
            issues.push(ConfigIssue::new(
                "generate.sampling.repetition_penalty",
                format!("{penalty}: must be a positive number (1 = off, above 1 discourages repeats)"),
            ));
        }
        if let Some(f) = config.finetune() {
            if let Err((k, m)) = f.lora.validate("finetune.lora.") {
                issues.push(ConfigIssue::new(k, m));
            }
            if let Err(e) = f.train.validate("finetune.train.") {
                issues.push(ConfigIssue::new("finetune.train", e.to_string()));
            }
            if !(0.0..=1.0).contains(&f.inject) {
                issues.push(ConfigIssue::new("finetune.inject", "a probability: expected 0 to 1"));
            }
            if !(0.0..=1.0).contains(&f.similar_share) {
                issues.push(ConfigIssue::new("finetune.similar_share", "a share of the samples: expected 0 to 1"));
            }
            if !(f.valid_share > 0.0 && f.valid_share < 1.0) {
                issues.push(ConfigIssue::new("finetune.valid_share", "expected more than 0 and less than 1"));
            }
            if !(f.unlikelihood.is_finite() && f.unlikelihood >= 0.0) {
                issues.push(ConfigIssue::new(
                    "finetune.unlikelihood",
                    "a loss weight: expected 0 (off) or more (Welleck et al. use 1.0)",
                ));
            }
            if !(0.0..=1.0).contains(&f.itf) {
                issues.push(ConfigIssue::new(
                    "finetune.itf",
                    "the inverse token frequency exponent λ: expected 0 (off) to 1",
                ));
            }
            if f.max_target_tokens == 0 {
                issues.push(ConfigIssue::new("finetune.max_target_tokens", "must be at least 1"));
            }
            if config.load.decoder == ecr_llm::DecoderKind::Candle {
                issues.push(ConfigIssue::new("load.decoder", "an adapter needs decoder = \"fast\""));
            }
        }
        issues
    }

    fn build(&self, config: Self::Config, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        if config.finetune().is_some() && !config.adapter_file(ctx).is_file() {
            return Err(format!(
                "{} does not exist: train the adapter with `ecr train -r {} --stage {}`",
                config.adapter_file(ctx).display(),
                ctx.recipe_path().display(),
                ctx.stage_id()
            )
            .into());
        }
        let llm = ctx.resources().get(&config.llm_key(ctx))?;
        Ok(Box::new(GeneratorStage::new(llm, config.generate, config.spare_names)))
    }

    fn trainer(
        &self,
        config: Self::Config,
        ctx: &BuildContext,
    ) -> Result<Option<Box<dyn ecr_engine::Trainable>>, BoxError> {
        Ok(Some(Box::new(ResponseEval::new(config, ctx))))
    }
}

impl Stage for GeneratorStage {
    fn run(&self, turn: &mut Turn, cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        let _span = tracing::debug_span!("generator").entered();
        let Some(prompt) = turn.prompt.as_deref() else {
            return Err("no prompt: a prompt_builder stage must run before the generator".into());
        };
        let prefix = turn.ext.get(RESPONSE_PREFIX).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        if !prefix.is_empty() {
            cx.token(prefix.clone());
        }
        let spared = self.spared_names(turn, prompt)?;
        let out = self.llm.generate_sparing(prompt, &self.params, &spared, |piece| {
            cx.token(piece);
            if cx.is_cancelled() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })?;
        if out.stop == StopReason::Cancelled {
            cx.check_cancelled()?;
        }
        tracing::debug!(
            tokens = out.tokens.len(),
            prompt_tokens = out.prompt_tokens,
            first_token_ms = out.timings.first_token_ms,
            "generated"
        );
        turn.response = Some(format!("{prefix}{}", out.text));
        Ok(())
    }
}

/// `ecr eval --responses N` for the generator: the adapter (if the recipe fine-tunes) is trained
/// on the review database, and evaluation generates the responses of the first N ReDial
/// recommendation turns of the test split (or of the validation split, `--split valid`, to choose
/// settings on) through the recipe's own upstream stages (recommender, retriever, prompt builder
/// included) and scores them.
pub struct ResponseEval {
    config: GeneratorConfig,
    ctx: BuildContext,
}

impl ResponseEval {
    /// The evaluator of the stage configured by `config` in `ctx`.
    pub fn new(config: GeneratorConfig, ctx: &BuildContext) -> Self {
        ResponseEval { config, ctx: ctx.clone() }
    }

    /// What the adapter is trained from: the fine-tuning configuration, the base model, the
    /// upstream stages that write the prompt ([`ecr_engine::Trainable::trained_on`]) and the
    /// contents of the data files the samples come from (reviews, movie list, KG), so that a
    /// grown review file makes the adapter stale.
    fn trained_from(&self, ft: &FinetuneConfig, upstream: &str) -> Result<String, BoxError> {
        let data = self.ctx.data_dir()?;
        let reviews = match &ft.reviews.reviews_file {
            Some(f) => self.ctx.resolve(f),
            None => data.join("reviews/imdb_reviews.jsonl"),
        };
        let mut fp =
            ecr_engine::Fingerprint::new().str(&serde_json::to_string(ft)?).str(&self.config.model).str(upstream);
        for file in [
            reviews,
            data.join("redial/movie_info.json"),
            data.join("kg/entity2id.json"),
            data.join("kg/dbpedia_subkg.json"),
        ] {
            fp = fp.file(&file)?;
        }
        Ok(fp.hex())
    }
}

impl ecr_engine::Trainable for ResponseEval {
    fn status(&self, upstream: &str) -> Result<ecr_engine::TrainStatus, BoxError> {
        use ecr_engine::TrainStatus;
        let Some(ft) = self.config.finetune() else {
            return Ok(TrainStatus::UpToDate("nothing to train: the base model, prompted".into()));
        };
        let file = self.config.adapter_file(&self.ctx);
        let Some(info) = Adapter::read_info(&file) else {
            return Ok(TrainStatus::Missing(format!("no adapter at {}", file.display())));
        };
        if info["trained_from"].as_str() != Some(self.trained_from(ft, upstream)?.as_str()) {
            return Ok(TrainStatus::Stale(
                "the finetune settings, the base model, the review data or the prompt stages changed".into(),
            ));
        }
        Ok(TrainStatus::UpToDate(format!(
            "adapter of {} samples, held-out perplexity {:.2} → {:.2}",
            info["train_samples"], info["valid_perplexity_base"], info["valid_perplexity_tuned"]
        )))
    }

    fn fingerprint(&self) -> Option<String> {
        match self.config.finetune() {
            None => Some(self.config.model.clone()),
            Some(_) => Adapter::read_info(&self.config.adapter_file(&self.ctx)).map(|i| i["trained_from"].to_string()),
        }
    }

    fn train(&self, cx: &ecr_engine::TrainContext<'_>) -> Result<ecr_engine::TrainReport, BoxError> {
        let Some(ft) = self.config.finetune() else {
            return Ok(ecr_engine::TrainReport {
                summary: "nothing to train".into(),
                metrics: serde_json::Value::Null,
            });
        };
        let res = ecr_data::prepare::Resources::from_shared(
            self.ctx.resources(),
            &self.ctx.data_dir()?,
            &ecr_data::LinkerOptions::default(),
        )?;
        let encoder =
            self.ctx.resources().get(&ecr_neural::text::TextEncoderKey(self.ctx.resolve(&ft.reviews.model_dir)))?;
        let (db, _) = crate::stage::open_review_db(&ft.reviews, &res, &encoder, &self.ctx, cx.options.progress)?;
        let index = crate::knowledge::KnowledgeIndex::new(&res.catalogue, &res.kg, &res.linker);
        let fields = crate::finetune::sample_fields(&db, &res, &index, ft);
        let file = self.config.adapter_file(&self.ctx);
        let dir = file.parent().map(PathBuf::from).unwrap_or_default();
        let m = crate::finetune::train_adapter(
            ft,
            &self.ctx.resolve(&self.config.model),
            &self.config.load,
            &fields,
            cx.upstream,
            &dir,
            &self.trained_from(ft, cx.upstream_fingerprint)?,
            cx.options.progress,
        )?;
        std::fs::write(dir.join("metrics.json"), serde_json::to_string_pretty(&m)?)?;
        Ok(ecr_engine::TrainReport {
            summary: format!(
                "LoRA adapter ({} parameters) on {} reviews ({} held out), held-out perplexity {:.2} → {:.2}, {:.0} s",
                m["adapter_params"],
                m["train_samples"],
                m["valid_samples"],
                m["valid_perplexity_base"].as_f64().unwrap_or(f64::NAN),
                m["valid_perplexity_tuned"].as_f64().unwrap_or(f64::NAN),
                m["seconds"].as_f64().unwrap_or(0.0)
            ),
            metrics: m,
        })
    }

    /// The adapter learns from samples rendered by the prompt builder, with their own movie and
    /// knowledge: it depends on the stages that write the prompt, not on the recommender, so the
    /// recipes that differ only in recommendation share it.
    fn trained_on(&self) -> Option<Vec<Field>> {
        Some(vec![Field::Prompt, Field::Ext(RESPONSE_PREFIX.into())])
    }

    fn evaluate(&self, cx: &ecr_engine::TrainContext<'_>) -> Result<ecr_engine::EvalReport, BoxError> {
        use crate::metrics::{FactChecker, RecommendedMovie, ResponseRecord, write_jsonl, write_markdown_sample};
        use ecr_data::keys::{CatalogueKey, KgKey, LinkerKey};
        let n = cx.options.responses.unwrap_or(50);
        let dir = self.ctx.data_dir()?;
        let splits = ecr_data::replay::RedialSplits::load(&dir, self.ctx.data_sample())?;
        let kg = self.ctx.resources().get(&KgKey(dir.clone()))?;
        let catalogue = self.ctx.resources().get(&CatalogueKey(dir.clone()))?;
        let linker = self.ctx.resources().get(&LinkerKey { dir, options: Default::default() })?;
        let movie_entity: std::collections::HashMap<u32, u32> =
            ecr_data::kg::link_movies(&catalogue, &kg).into_iter().map(|(m, (e, _))| (m, e)).collect();
        // The same replay (and cache) as the recommender's trainer: train, valid, test.
        let all: Vec<&ecr_data::Conversation> = splits.train.iter().chain(&splits.valid).chain(&splits.test).collect();
        let scripts: Vec<Vec<ecr_engine::Utterance>> = all.iter().map(|c| ecr_data::replay::script(c).0).collect();
        let replayed = cx.replay_shaping(&scripts, &splits.fingerprint, &mut |_, _| {})?;
        let split = cx.options.split;
        let (convs, from) = match split {
            ecr_engine::EvalSplit::Test => (&splits.test, splits.train.len() + splits.valid.len()),
            ecr_engine::EvalSplit::Valid => (&splits.valid, splits.train.len()),
        };
        let gold = ecr_neural::recommend::trainer::RecTrainer::gold_turns(
            convs,
            &replayed[from..from + convs.len()],
            &movie_entity,
        );
        let mut chosen: Vec<_> = gold.into_iter().take(n).collect();
        let mut turns: Vec<Turn> = chosen.iter_mut().map(|g| std::mem::take(&mut g.turn)).collect();
        // The gold feedback is training knowledge: the response turn does not see it.
        turns.iter_mut().for_each(|t| t.feedback.clear());
        cx.run_rest(&mut turns)?;
        let llm = self.ctx.resources().get(&self.config.llm_key(&self.ctx))?;
        let stage = GeneratorStage::new(llm, self.config.generate.clone(), self.config.spare_names);
        let bar = ecr_data::progress::bar(cx.options.progress, "generating responses");
        bar.set_length(turns.len() as u64);
        let mut records = Vec::new();
        let golds = gold_responses(convs, &linker, n);
        let mut times = Vec::new();
        for (i, t) in turns.iter_mut().enumerate() {
            let start = std::time::Instant::now();
            stage.run(t, &mut TurnContext::detached("generate"))?;
            times.push(start.elapsed().as_secs_f64());
            let write = |u: &ecr_engine::Utterance| linker.write_out_movies(&u.text);
            records.push(ResponseRecord {
                id: format!("{}:{i}", split.name()),
                context: t.history.iter().chain(std::iter::once(&t.user)).map(write).collect(),
                movie: t.candidates.first().map(|c| RecommendedMovie { item: c.item, name: c.name.clone() }),
                prompt: t.prompt.clone().unwrap_or_default(),
                passages: t.passages.clone(),
                facts: t.facts.clone(),
                response: t.response.clone().unwrap_or_default(),
                opening: t.ext.get(RESPONSE_PREFIX).and_then(|v| v.as_str()).unwrap_or_default().to_string(),
                gold: golds.get(i).cloned().unwrap_or_default(),
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        let index = crate::knowledge::KnowledgeIndex::new(&catalogue, &kg, &linker);
        let m = FactChecker::new(&kg, &catalogue, &linker, &index).metrics(&records);
        let out = self.ctx.stage_dir();
        std::fs::create_dir_all(&out)?;
        let responses_file = out.join(split.file_name("responses", "jsonl"));
        write_jsonl(&responses_file, &records)?;
        write_markdown_sample(&out.join(split.file_name("responses_sample", "md")), &records)?;
        let mut metrics = serde_json::to_value(&m)?;
        metrics["split"] = split.name().into();
        times.sort_by(f64::total_cmp);
        let q = |p: f64| times.get(((times.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
        metrics["generate_s_p50"] = q(0.5).into();
        metrics["generate_s_p95"] = q(0.95).into();
        // The adapter's held-out perplexity (base model vs fine-tuned), measured when it was trained.
        if let Some(info) =
            self.config.finetune().and_then(|_| Adapter::read_info(&self.config.adapter_file(&self.ctx)))
        {
            for k in ["valid_perplexity_base", "valid_perplexity_tuned", "train_samples", "valid_samples"] {
                metrics[k] = info[k].clone();
            }
        }
        Ok(ecr_engine::EvalReport {
            text: format!(
                "{} responses (written to {}): {}\ngeneration p50 {:.2} s, p95 {:.2} s",
                records.len(),
                responses_file.display(),
                serde_json::to_string(&m)?,
                q(0.5),
                q(0.95)
            ),
            metrics,
        })
    }
}

/// The gold responses of the first `n` recommendation turns of `convs` with a KG
/// movie, in the order [`ecr_neural::recommend::trainer::RecTrainer::gold_turns`] yields them.
fn gold_responses(convs: &[ecr_data::Conversation], linker: &ecr_data::Linker, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for conv in convs {
        let (utterances, _) = ecr_data::replay::script(conv);
        let mut seekers = 0;
        for u in &utterances {
            match u.role {
                ecr_engine::Role::Seeker => seekers += 1,
                ecr_engine::Role::Recommender if seekers > 0 => {
                    let gold = ecr_data::linker::at_mentions(&u.text, |m| linker.movie_entity(m).is_some());
                    if !gold.is_empty() {
                        out.push(linker.write_out_movies(&u.text));
                        if out.len() == n {
                            return out;
                        }
                    }
                }
                ecr_engine::Role::Recommender => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecr_engine::{Candidate, Fact};

    #[test]
    fn the_spared_names_are_those_the_prompt_shows_and_never_a_plot() {
        let fact = |relation: &str, tail: &str| Fact {
            head: "Blended (film)".into(),
            relation: relation.into(),
            tail: tail.into(),
        };
        let mut turn = Turn {
            candidates: vec![
                Candidate { item: 1, name: "Blended (film)".into(), score: 2.0 },
                Candidate { item: 2, name: "Jaws (1975)".into(), score: 1.0 },
            ],
            facts: vec![
                fact(info_relations::PLOT, "A man and a woman are stuck together at a resort."),
                fact("starring", "Adam Sandler"),
                fact("starring", "Adam Sandler"),
                fact("director", "Frank Coraci"),
            ],
            ..Turn::default()
        };
        turn.ext.insert(REVIEW_ENTITIES.into(), serde_json::json!(["Drew Barrymore", "Africa"]));
        let prompt = "Movie Name: Blended (film)\nRelated Entities: Drew Barrymore\nRelated Knowledge: A man and a \
                      woman are stuck together at a resort. Blended (film) stars Adam Sandler. Blended (film) was \
                      directed by Frank Coraci.";
        // Jaws is a candidate the prompt does not show; Africa an entity it left out; the plot a
        // sentence, not a name.
        assert_eq!(
            prompt_names(&turn, prompt),
            vec!["Blended (film)", "Adam Sandler", "Frank Coraci", "Drew Barrymore"]
        );
    }
}
