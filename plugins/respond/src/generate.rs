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

use crate::stage::RESPONSE_PREFIX;
use ecr_engine::{
    BoxError, BuildContext, ConfigIssue, Field, ResourceKey, Resources, Stage, StageFactory, StageIo, Turn, TurnContext,
};
use ecr_llm::{GenerateParams, Llm, LoadOptions, SamplingParams, StopReason};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

/// The shipped model, relative to a recipe in `recipes/`.
pub const DEFAULT_MODEL: &str = "../models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// A loaded language model, as an engine resource (by file and load options).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LlmKey {
    /// The GGUF file.
    pub path: PathBuf,
    /// The load options, as canonical JSON (so the key can be hashed).
    pub options: String,
}

impl LlmKey {
    /// The key of `path` loaded with `options`.
    pub fn new(path: PathBuf, options: &LoadOptions) -> Self {
        LlmKey { path, options: serde_json::to_string(options).unwrap_or_default() }
    }
}

impl ResourceKey for LlmKey {
    type Value = Llm;
    fn create(&self, _: &Resources) -> Result<Llm, BoxError> {
        let options: LoadOptions = serde_json::from_str(&self.options)?;
        Ok(Llm::load(&self.path, &options)?)
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
    /// Max new tokens, sampling (greedy or seeded temperature/top-p, no-repeat-n-gram), stop sequences.
    pub generate: GenerateParams,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        let sampling = SamplingParams { no_repeat_ngram: 3, ..SamplingParams::default() };
        GeneratorConfig {
            model: DEFAULT_MODEL.into(),
            load: LoadOptions::default(),
            generate: GenerateParams { max_new_tokens: 60, sampling, ..GenerateParams::default() },
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
}

impl GeneratorStage {
    /// A stage over a loaded model.
    pub fn new(llm: Arc<Llm>, params: GenerateParams) -> Self {
        GeneratorStage { llm, params }
    }
}

impl StageFactory for GeneratorFactory {
    type Config = GeneratorConfig;

    fn name(&self) -> &'static str {
        "generator"
    }

    fn description(&self) -> &'static str {
        "the response: SmolLM2 continues the prompt, streaming each token (fast decoder by default)"
    }

    fn io(&self, _config: &Self::Config) -> StageIo {
        StageIo::new([Field::Prompt], [Field::Response]).with_optional([Field::Ext(RESPONSE_PREFIX.into())])
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
        issues
    }

    fn build(&self, config: Self::Config, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        let llm = ctx.resources().get(&LlmKey::new(ctx.resolve(&config.model), &config.load))?;
        Ok(Box::new(GeneratorStage::new(llm, config.generate)))
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
        let out = self.llm.generate(prompt, &self.params, |piece| {
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
