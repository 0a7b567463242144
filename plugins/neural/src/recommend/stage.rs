//! The `recommender` stage: scores the item set for a turn and writes the top
//! items into `turn.candidates`, with explanation data in `turn.ext.explain`:
//! the context entities with their emotions and attention, and per top item its
//! score split into each entity's local and global parts, their emotion parts,
//! the text part and the biases ([`super::model::Recommender::explain`]).
//!
//! The branches come from the recipe: the emotion table exists when an
//! earlier enabled stage writes `local_emotions`, the global branch when one
//! writes `global_entities` ([`RecommenderConfig::branches`]). The stage is
//! trainable ([`super::trainer::RecTrainer`]).

use super::features::features_of;
use super::model::{ItemAttribution, Recommender, SlotPart};
use super::{Branches, ModelConfig};
use crate::cache::{EmbeddingCache, embed_cached};
use crate::checkpoint::{self, CheckpointMeta};
use crate::fit::{FitConfig, Params};
use crate::text::{MINILM_DIR, TextEncoder, TextEncoderKey};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use ecr_data::Kg;
use ecr_data::keys::{KgKey, MovieTitles, MovieTitlesKey};
use ecr_engine::{
    BoxError, BuildContext, Candidate, ConfigIssue, Field, Stage, StageFactory, StageIo, Trainable, Turn, TurnContext,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Configuration of `recommender` (`[stages.<id>.with]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecommenderConfig {
    /// The MiniLM directory (`text = true`).
    pub model_dir: String,
    /// The embedding cache directory.
    pub cache_dir: String,
    /// The checkpoint directory; default `runs/<recipe>/<stage id>/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Read the dialogue text (MiniLM utterance embeddings).
    pub text: bool,
    /// Use the user's emotions towards entities when an earlier stage writes
    /// `local_emotions` (the model has no emotion table otherwise).
    pub emotions: bool,
    /// Use the global branch when an earlier stage writes `global_entities`.
    pub global: bool,
    /// Weight the loss by m(f) when an earlier stage (a feedback mapping) weighs `feedback`.
    pub reweight: bool,
    /// Candidates written.
    pub top_k: usize,
    /// Model shape.
    pub model: ModelConfig,
    /// Training hyper-parameters.
    pub train: FitConfig,
    /// ECR's pre-training before the recommendation training (off by default).
    pub pretrain: PretrainConfig,
}

/// `[stages.<id>.with.pretrain]`: ECR's "emotional semantic fusion" pre-training (§3.8), before
/// the recommendation training and from the same initialisation: every entity and movie an
/// utterance of a training dialogue mentions is a target ranked over the whole KG (unweighted),
/// given what was said before it, so the entity table and the fusion learn from every mention,
/// not only from the gold movies. Weight decay, warm-up and seed are `train`'s.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    /// Passes over the pre-training examples (0: no pre-training).
    pub epochs: usize,
    /// Examples per step. A step costs about the same at any batch size (the R-GCN encodes the
    /// whole KG each step), and there are several times more pre-training examples than
    /// recommendation ones: a larger batch keeps the step count, and so the time, down.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig { epochs: 0, batch_size: 512, lr: 2e-3 }
    }
}

impl PretrainConfig {
    /// The fit settings: `train`'s, with this pass count, batch size and learning rate.
    pub fn fit_config(&self, train: &FitConfig) -> FitConfig {
        FitConfig { epochs: self.epochs, batch_size: self.batch_size, lr: self.lr, ..train.clone() }
    }
}

impl Default for RecommenderConfig {
    fn default() -> Self {
        RecommenderConfig {
            model_dir: format!("../models/{MINILM_DIR}"),
            cache_dir: "../.cache/embeddings".into(),
            checkpoint: None,
            text: true,
            emotions: true,
            global: true,
            reweight: true,
            top_k: 10,
            model: ModelConfig::default(),
            train: FitConfig { epochs: 4, batch_size: 64, lr: 1e-3, weight_decay: 0.01, warmup: 0.05, seed: 42 },
            pretrain: PretrainConfig::default(),
        }
    }
}

impl RecommenderConfig {
    /// The model's branches in `ctx`: a branch exists when the config allows
    /// it and the recipe's earlier enabled stages provide its input.
    pub fn branches(&self, ctx: &BuildContext) -> Branches {
        Branches {
            text: self.text,
            emotions: self.emotions && ctx.provides(&Field::LocalEmotions),
            global: self.global && ctx.provides(&Field::GlobalEntities),
            reweight: self.reweight && ctx.provides(&Field::Feedback),
        }
    }

    /// The checkpoint directory in `ctx`.
    pub fn checkpoint_dir(&self, ctx: &BuildContext) -> PathBuf {
        ctx.resolve_or_stage_dir(self.checkpoint.as_deref(), "")
    }
}

/// The checkpoint metadata a model of `config` with `branches` over `kg` and
/// `items` must carry (reweighting changes the training, not the model: it
/// is recorded by the trainer, not compared here).
pub fn expected_meta(
    config: &RecommenderConfig,
    branches: Branches,
    items: &[u32],
    kg: &Kg,
    encoder: Option<&str>,
) -> crate::Result<CheckpointMeta> {
    let model = Branches { reweight: false, ..branches };
    CheckpointMeta::new("recommender", &(config.model, model))?
        .vocabulary("items", &items)?
        .vocabulary("kg", &(kg.len(), kg.triple_count()))?
        .encoder(encoder)
        .require("branches", model)
}

/// The item set of `kg` in score order.
pub fn item_set(kg: &Kg) -> Vec<u32> {
    let mut items: Vec<u32> = kg.items.iter().copied().collect();
    items.sort_unstable();
    items
}

/// The running stage.
pub struct RecommenderStage {
    model: Recommender,
    entities: Tensor,
    encoder: Option<Arc<TextEncoder>>,
    cache: Option<Mutex<EmbeddingCache>>,
    config: RecommenderConfig,
    branches: Branches,
    names: Arc<Kg>,
    titles: Arc<MovieTitles>,
    device: Device,
}

impl RecommenderStage {
    /// Load a trained model from `dir`.
    pub fn load(parts: RecommenderParts, dir: &Path) -> Result<Self, BoxError> {
        let RecommenderParts { config, branches, kg, titles, encoder, cache, device } = parts;
        let items = item_set(&kg);
        let vm = VarMap::new();
        let mut p = Params::new(&vm, &device, 0);
        let dim = encoder.as_ref().map_or(384, |e| e.dim());
        let model = Recommender::new(&mut p, &kg, &items, config.model, branches, dim)?;
        let meta = expected_meta(&config, branches, &items, &kg, encoder.as_ref().map(|e| e.id()))?;
        checkpoint::load(dir, &vm, &meta, &device)?;
        let entities = model.entity_table()?.detach();
        Ok(RecommenderStage {
            model,
            entities,
            encoder,
            cache: cache.map(Mutex::new),
            config,
            branches,
            names: kg,
            titles,
            device,
        })
    }
}

/// What a recommender stage (or its trainer) is made of.
pub struct RecommenderParts {
    /// The stage's configuration.
    pub config: RecommenderConfig,
    /// The branches the recipe provides.
    pub branches: Branches,
    /// The KG.
    pub kg: Arc<Kg>,
    /// Catalogue titles, to write `@<id>` out before embedding text.
    pub titles: Arc<MovieTitles>,
    /// MiniLM, when the model reads text.
    pub encoder: Option<Arc<TextEncoder>>,
    /// Its embedding cache.
    pub cache: Option<EmbeddingCache>,
    /// Where the model's tensors live ([`super::model_device`]).
    pub device: Device,
}

impl RecommenderParts {
    /// The parts of the stage configured by `config` in `ctx`, from the engine's resources.
    pub fn of(config: RecommenderConfig, ctx: &BuildContext) -> Result<Self, BoxError> {
        let dir = ctx.data_dir()?;
        let kg = ctx.resources().get(&KgKey(dir.clone()))?;
        let titles = ctx.resources().get(&MovieTitlesKey(dir))?;
        let (encoder, cache) = if config.text {
            let enc = ctx.resources().get(&TextEncoderKey(ctx.resolve(&config.model_dir)))?;
            let cache = EmbeddingCache::for_encoder(&ctx.resolve(&config.cache_dir), &enc)?;
            (Some(enc), Some(cache))
        } else {
            (None, None)
        };
        let branches = config.branches(ctx);
        let device = super::model_device(ctx)?;
        Ok(RecommenderParts { config, branches, kg, titles, encoder, cache, device })
    }
}

impl Stage for RecommenderStage {
    fn run(&self, turn: &mut Turn, _cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        let _span = tracing::debug_span!("recommender").entered();
        let c = &self.config;
        let b = self.branches;
        let f = features_of(turn, b.emotions, b.global, c.model.max_entities, c.model.max_utterances, &self.titles);
        let (table, rows): (Tensor, Vec<String>) = match &self.encoder {
            Some(enc) => {
                let texts: Vec<String> = f.utterances.iter().map(|u| u.0.clone()).collect();
                let mut guard = self.cache.as_ref().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
                let vecs = embed_cached(enc, guard.as_deref_mut(), &texts, false)?;
                let mut flat = vec![0f32; enc.dim()];
                vecs.iter().for_each(|v| flat.extend_from_slice(v));
                (Tensor::from_vec(flat, (texts.len() + 1, enc.dim()), &self.device)?, texts)
            }
            None => (Tensor::zeros((1, 384), candle_core::DType::F32, &self.device)?, vec![]),
        };
        let row = |t: &str| rows.iter().position(|r| r == t).map_or(0, |i| i as u32 + 1);
        let batch = self.model.batch(&[&f], &row)?;
        let x = self.model.explain(&self.entities, &table, &batch, c.top_k)?;
        let items = self.model.items();
        let name = |e: u32| self.names.name(e).unwrap_or("?").to_string();
        turn.candidates = x
            .top
            .iter()
            .map(|t| Candidate { item: items[t.item], name: name(items[t.item]), score: t.score })
            .collect();
        let l = f.slots.len().max(1);
        let att = self.model.attention(&x.alpha, f.slots.len(), l);
        let slots: Vec<serde_json::Value> = f
            .slots
            .iter()
            .enumerate()
            .map(|(j, s)| {
                serde_json::json!({
                    "entity": s.entity,
                    "name": name(s.entity),
                    "emotions": s.emotions.iter().map(|(e, p)| (ecr_engine::Emotion::from_index(*e).map_or("pad", |x| x.name()), p)).collect::<Vec<_>>(),
                    "local_attention": att.local.get(j),
                    "global_attention": att.global.get(j),
                })
            })
            .collect();
        let local: f32 = att.local.iter().sum();
        let global: f32 = att.global.iter().sum();
        turn.ext.insert(
            "explain".into(),
            serde_json::json!({
                "slots": slots,
                "local_share": local,
                "global_share": global,
                "items": x.top.iter().map(|t| item_explanation(t, f.slots.len())).collect::<Vec<_>>(),
            }),
        );
        Ok(())
    }
}

/// One top item's score split into its slots' parts (`slot` indexes `explain.slots`, the padding
/// slots left out; the global branch's part of a slot is listed apart), the text's part (where
/// the model has one) and the biases, for `ext.explain.items`.
fn item_explanation(t: &ItemAttribution, slots: usize) -> serde_json::Value {
    let part = |j: usize, branch: &str, p: &SlotPart| serde_json::json!({ "slot": j, "branch": branch, "score": p.total, "emotions": p.emotions });
    let local = t.local.iter().take(slots).enumerate().map(|(j, p)| part(j, "local", p));
    let global = t.global.iter().take(slots).enumerate().map(|(j, p)| part(j, "global", p));
    let mut x = serde_json::json!({
        "item": t.item,
        "score": t.score,
        "parts": local.chain(global).collect::<Vec<_>>(),
        "local": t.local_total(),
        "global": t.global_total(),
        "emotions": t.emotions_total(),
        "bias": t.bias,
    });
    if let Some(text) = t.text {
        x["text"] = text.into();
    }
    x
}

/// The factory of `recommender`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecommenderFactory;

impl StageFactory for RecommenderFactory {
    type Config = RecommenderConfig;

    fn name(&self) -> &'static str {
        "recommender"
    }

    fn description(&self) -> &'static str {
        "ECR's emotion-aware recommender: R-GCN entities, context text, local/global emotions; ranks the item set"
    }

    fn io(&self, _c: &Self::Config) -> StageIo {
        StageIo::new(
            [Field::History, Field::UserText, Field::UserEntities],
            [Field::Candidates, Field::Ext("explain".into())],
        )
        .with_optional([Field::LocalEmotions, Field::GlobalEntities, Field::Feedback])
    }

    fn check(&self, c: &Self::Config, _ctx: &BuildContext) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if c.top_k == 0 {
            issues.push(ConfigIssue::new("top_k", "must be at least 1"));
        }
        if c.model.dim == 0 || c.model.bases == 0 || c.model.max_entities == 0 || c.model.max_utterances == 0 {
            issues.push(ConfigIssue::new("model", "dim, bases, max_entities and max_utterances must be at least 1"));
        }
        if let Err(e) = c.train.validate("train.") {
            issues.push(ConfigIssue::new("train", e.to_string()));
        }
        if c.pretrain.epochs > 0
            && let Err(e) = c.pretrain.fit_config(&c.train).validate("pretrain.")
        {
            issues.push(ConfigIssue::new("pretrain", e.to_string()));
        }
        issues
    }

    fn build(&self, config: Self::Config, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        let dir = config.checkpoint_dir(ctx);
        let stage = RecommenderStage::load(RecommenderParts::of(config, ctx)?, &dir).map_err(|e| {
            format!("{e} (stage {:?}: `ecr train -r {}` trains it)", ctx.stage_id(), ctx.recipe_path().display())
        })?;
        Ok(Box::new(stage))
    }

    fn trainer(&self, config: Self::Config, ctx: &BuildContext) -> Result<Option<Box<dyn Trainable>>, BoxError> {
        Ok(Some(Box::new(super::trainer::RecTrainer::new(config, ctx))))
    }
}
