//! ECR's emotion-aware recommender (ECR_REFERENCE.md §3), sized to train in
//! minutes on two CPU cores.
//!
//! * [`features`]: the one function from an engine [`ecr_engine::Turn`] (after the
//!   upstream stages ran) to model inputs, used by inference and training alike.
//! * [`model`]: the R-GCN KG encoder and the recommender, assembled from the
//!   branches the recipe provides ([`Branches`]).
//! * [`metrics`]: Recall, Recall_True, AUC (per batch of 32 and global), NDCG,
//!   MRR, under the paper's protocol and the new-items protocol; baselines.
//! * [`train`]: training through [`crate::fit`], evaluation, checkpoints.
//!
//! The text side: the reference pools a frozen DialoGPT through learned
//! prefixes. Here each utterance of the context is embedded once by frozen
//! MiniLM (cached on disk), projected by a learned layer, and the entities
//! attend over those utterance vectors (ECR's token-level cross-attention at
//! utterance granularity). It trains in minutes because nothing of MiniLM is
//! differentiated and each utterance is embedded once for every recipe and seed.

pub mod features;
pub mod metrics;
pub mod model;
pub mod paired;
pub mod sparse;
pub mod stage;
pub mod train;
pub mod trainer;

use candle_core::Device;
use ecr_engine::BuildContext;
use serde::{Deserialize, Serialize};

/// The device the recommender's tensors live on, from the context
/// ([`crate::device_of`]; an unknown or unavailable `ECR_DEVICE` is an
/// error). The R-GCN's graph operations ([`sparse`]) have CPU kernels only,
/// so another device falls back to the CPU with a warning rather than
/// failing the recipe: the model is small and its steps are graph-bound.
pub fn model_device(ctx: &BuildContext) -> crate::error::Result<Device> {
    let device = crate::device_of(ctx)?;
    if !device.is_cpu() {
        tracing::warn!(device = %ctx.device(), "the recommender's graph operations run on the CPU only: using the CPU");
    }
    Ok(Device::Cpu)
}

/// The branches of the model, from what the recipe's enabled stages provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branches {
    /// Dialogue text (MiniLM utterance embeddings).
    pub text: bool,
    /// Local emotions: the emotion table and the fusion MLP (needs `local_emotion`).
    pub emotions: bool,
    /// Global emotion-aware entity representations (needs `global_emotion`).
    pub global: bool,
    /// Feedback-aware loss reweighting m(f) (needs a feedback mapping stage).
    pub reweight: bool,
}

/// Shape of the model (`[stages.<id>.with.model]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Entity / hidden dimension.
    pub dim: usize,
    /// Emotion vector dimension (ECR: d/16).
    pub emotion_dim: usize,
    /// R-GCN bases.
    pub bases: usize,
    /// Context entity occurrences kept (the last ones; ECR: 32).
    pub max_entities: usize,
    /// Context utterances kept (the last ones).
    pub max_utterances: usize,
    /// How the emotion fusion MLPs' output layers start. Left out of the serialisation at its
    /// default, so that checkpoints trained before the key existed keep their fingerprint.
    #[serde(skip_serializing_if = "FusionInit::is_random")]
    pub fusion_init: FusionInit,
    /// With text: the dialogue's pooled summary joins the user representation (the default). With
    /// `false`, the text reaches the scores only through the entities (their attention over the
    /// utterances) and the user query that weighs them, so it cannot lift an item by itself.
    /// Left out of the serialisation at its default.
    #[serde(skip_serializing_if = "is_true")]
    pub text_summary: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The start of the fusion MLPs that add the emotions to an entity (`v + MLP([v, u])`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionInit {
    /// Glorot-uniform like every other layer: the emotions perturb each entity from the start.
    #[default]
    Random,
    /// The output layer at zero: each entity starts as its representation without emotions, which
    /// training adds only as far as it finds them useful (ReZero's idea). The global branch's slots
    /// are there from the start either way.
    Zero,
}

impl FusionInit {
    fn is_random(&self) -> bool {
        *self == FusionInit::Random
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            dim: 128,
            emotion_dim: 16,
            bases: 8,
            max_entities: 32,
            max_utterances: 8,
            fusion_init: FusionInit::Random,
            text_summary: true,
        }
    }
}
