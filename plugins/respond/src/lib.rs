//! `ecr-respond`: everything that goes into the generator's prompt, and the
//! response metrics.
//!
//! * [`clean`]: ECR's review cleaning, filtering and sentence splitting.
//! * [`emotion`]: the per-sentence emotion signal (a feeling-word lexicon).
//! * [`reviewdb`]: the review database (sentences, embeddings, HNSW index), persisted.
//! * [`knowledge`]: KG and movie_info facts about a movie, and what supports claims about it.
//! * [`retrieve`]: the retriever (review passages, facts, review entities for the top items).
//! * [`prompt`]: the prompt builder (template, chat format, token budget).
//! * [`metrics`]: Dist-n, BLEU-n, length, movie naming, factual consistency; response records.
//! * [`bench`]: build/reload times of the database and retrieval latency per turn.
//! * [`finetune`]: the generator's LoRA fine-tuning on the review database (ECR §4.1-4.2).
//! * [`stage`]: the `retriever` and `prompt_builder` stages; [`generate`]: the `generator` stage.
pub mod bench;
pub mod clean;
pub mod emotion;
pub mod error;
pub mod finetune;
pub mod generate;
pub mod knowledge;
pub mod metrics;
pub mod prompt;
pub mod retrieve;
pub mod reviewdb;
pub mod stage;

pub use error::{RespondError, Result};
pub use generate::{GeneratorConfig, GeneratorFactory, LlmKey};
pub use knowledge::KnowledgeIndex;
pub use metrics::{FactChecker, ResponseMetrics, ResponseRecord};
pub use prompt::{EstimateCounter, Prompt, PromptBuilder, PromptConfig, PromptInput, TokenCounter};
pub use retrieve::{PassageSource, RetrieveOptions, Retrieved, Retriever, World};
pub use reviewdb::{DbSources, Opened, ReviewDb, ReviewDbParams};
pub use stage::{PromptBuilderConfig, PromptBuilderFactory, RetrieverConfig, RetrieverFactory};
