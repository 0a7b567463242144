//! Whole-data preparation: load everything, link and segment every
//! conversation, split train/valid, emit instances, build co-occurrence.

use crate::catalogue::Catalogue;
use crate::cooccur::CoOccurrence;
use crate::emotion_source::EmotionSource;
use crate::error::DataError;
use crate::instances::{Dialogue, GoldCounts, RecInstance, rec_instances, segment};
use crate::keys::{CatalogueKey, KgKey, LinkerKey};
use crate::kg::Kg;
use crate::linker::{Linker, LinkerOptions};
use crate::paths::require_file;
use crate::redial::{Conversation, load_conversations};
use crate::splits::validation_ids;
use ecr_engine::Feedback;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Minimum lowercase uses in the training dialogues for a word to count as common.
pub const COMMON_WORD_MIN_COUNT: u32 = 4;

/// The catalogue, the KG and the linker built over them: load once, share.
#[derive(Debug, Clone)]
pub struct Resources {
    /// The data directory they came from.
    pub dir: PathBuf,
    /// The movie catalogue.
    pub catalogue: Arc<Catalogue>,
    /// The KG.
    pub kg: Arc<Kg>,
    /// The entity linker.
    pub linker: Arc<Linker>,
}

impl Resources {
    /// Load the catalogue and KG from the data directory and build the linker.
    /// The linker's common words (names people write in lowercase, see
    /// [`crate::linker::common_words`]) are added from the training dialogues
    /// (`redial/train.jsonl`, at least [`COMMON_WORD_MIN_COUNT`] lowercase uses).
    pub fn load(dir: &Path, opts: &LinkerOptions) -> Result<Self, DataError> {
        Self::from_shared(&ecr_engine::Resources::new(), dir, opts)
    }

    /// The same, taken from (or created in) an engine's shared resources, so
    /// that every stage of the engine uses one catalogue, one KG and one linker.
    pub fn from_shared(shared: &ecr_engine::Resources, dir: &Path, opts: &LinkerOptions) -> Result<Self, DataError> {
        let dir = dir.to_path_buf();
        let wrap = |e: ecr_engine::BoxError| match e.downcast::<DataError>() {
            Ok(d) => *d,
            Err(e) => DataError::NoDataDir(e.to_string()),
        };
        let catalogue = shared.get(&CatalogueKey(dir.clone())).map_err(wrap)?;
        let kg = shared.get(&KgKey(dir.clone())).map_err(wrap)?;
        let linker = shared.get(&LinkerKey { dir: dir.clone(), options: opts.clone() }).map_err(wrap)?;
        Ok(Resources { dir, catalogue, kg, linker })
    }
}

/// Options of [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Share of training conversations held out for validation.
    pub valid_fraction: f64,
    /// Seed of the validation split.
    pub seed: u64,
    /// Emotion labels with `p > emotion_threshold` are kept on turns and
    /// entities (ECR: 0.1; the emotion tagger stage's `threshold`).
    pub emotion_threshold: f32,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions { valid_fraction: 0.1, seed: 42, emotion_threshold: crate::instances::EMOTION_THRESHOLD }
    }
}

/// One split: its conversations, segmented dialogues and instances.
#[derive(Debug, Clone, Default)]
pub struct SplitData {
    /// `train`, `valid` or `test`.
    pub name: String,
    /// The raw conversations (questionnaires etc.).
    pub conversations: Vec<Conversation>,
    /// The segmented dialogues, aligned with `conversations`.
    pub dialogues: Vec<Dialogue>,
    /// Recommendation instances (their `dialogue` indexes `dialogues`).
    pub instances: Vec<RecInstance>,
    /// Gold movie counts (all vs in the KG).
    pub gold: GoldCounts,
}

/// Everything ECR trains and evaluates on.
#[derive(Debug)]
pub struct Prepared {
    /// Training split (train.jsonl minus validation).
    pub train: SplitData,
    /// Validation split carved from train.jsonl.
    pub valid: SplitData,
    /// Test split (test.jsonl), for final evaluation only.
    pub test: SplitData,
    /// Global emotion co-occurrence, from `train` only.
    pub cooccurrence: CoOccurrence,
    /// Wall time of the preparation (after resources were loaded).
    pub elapsed: Duration,
}

fn build_split(
    name: &str,
    source: &str,
    convs: Vec<Conversation>,
    res: &Resources,
    emo: &dyn EmotionSource,
    threshold: f32,
) -> SplitData {
    let _span = tracing::info_span!("split", name).entered();
    let mut s = SplitData { name: name.into(), ..Default::default() };
    for (i, c) in convs.iter().enumerate() {
        let d = segment(c, name, source, &res.linker, emo, threshold);
        let (inst, g) = rec_instances(c, &d, i);
        s.instances.extend(inst);
        s.gold.gold += g.gold;
        s.gold.gold_in_kg += g.gold_in_kg;
        s.dialogues.push(d);
    }
    s.conversations = convs;
    s
}

/// Prepare train/valid/test and the co-occurrence statistics, with one
/// emotion source for every split.
pub fn prepare(res: &Resources, emotions: &dyn EmotionSource, opts: &PrepareOptions) -> Result<Prepared, DataError> {
    prepare_with_sources(res, emotions, emotions, opts)
}

/// As [`prepare`], with separate emotion sources for train/valid
/// (`train.jsonl`) and for test (`test.jsonl`): e.g. annotations then tagger
/// for training, tagger only for test so that evaluation never sees the
/// annotators' labels.
pub fn prepare_with_sources(
    res: &Resources,
    train_emotions: &dyn EmotionSource,
    test_emotions: &dyn EmotionSource,
    opts: &PrepareOptions,
) -> Result<Prepared, DataError> {
    let start = Instant::now();
    let train_all = load_conversations(&require_file(&res.dir, "redial/train.jsonl")?)?;
    let test = load_conversations(&require_file(&res.dir, "redial/test.jsonl")?)?;
    let valid_ids: HashSet<String> =
        validation_ids(train_all.iter().map(|c| c.id.as_str()), opts.valid_fraction, opts.seed)
            .into_iter()
            .map(String::from)
            .collect();
    let (valid, train): (Vec<_>, Vec<_>) = train_all.into_iter().partition(|c| valid_ids.contains(&c.id));
    let train = build_split("train", "train", train, res, train_emotions, opts.emotion_threshold);
    let valid = build_split("valid", "train", valid, res, train_emotions, opts.emotion_threshold);
    let test = build_split("test", "test", test, res, test_emotions, opts.emotion_threshold);
    let cooccurrence = CoOccurrence::build(res.kg.len(), &train.dialogues);
    tracing::info!(
        train = train.dialogues.len(),
        valid = valid.dialogues.len(),
        test = test.dialogues.len(),
        instances = train.instances.len() + valid.instances.len() + test.instances.len(),
        cooccurrence_nnz = cooccurrence.nnz(),
        seconds = start.elapsed().as_secs_f64(),
        "data prepared"
    );
    Ok(Prepared { train, valid, test, cooccurrence, elapsed: start.elapsed() })
}

/// Figures of one split.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SplitStats {
    /// Split name.
    pub split: String,
    /// Conversations.
    pub conversations: usize,
    /// Messages.
    pub messages: usize,
    /// Turns (merged messages).
    pub turns: usize,
    /// Recommender turns.
    pub recommender_turns: usize,
    /// Recommendation instances.
    pub instances: usize,
    /// Instances by seeker feedback: liked, disliked, not said.
    pub liked: usize,
    /// Instances the seeker disliked.
    pub disliked: usize,
    /// Instances with no feedback.
    pub not_said: usize,
    /// Mean KG-linked mentions (movies and entities) per turn.
    pub kg_entities_per_turn: f64,
    /// Mean linked mentions (any, incl. movies outside the KG) per turn.
    pub mentions_per_turn: f64,
    /// Gold movies (distinct per recommender turn).
    pub gold_movies: usize,
    /// Share of gold movies that map to a KG entity.
    pub gold_in_kg_share: f64,
    /// Share of seeker turns with an emotion distribution from the source.
    pub seeker_turns_with_emotions: f64,
}

impl SplitData {
    /// This split's figures.
    pub fn stats(&self) -> SplitStats {
        let turns: usize = self.dialogues.iter().map(|d| d.turns.len()).sum();
        let all_turns = || self.dialogues.iter().flat_map(|d| &d.turns);
        let kg: usize = all_turns().map(|t| t.kg_entities().count()).sum();
        let mentions: usize = all_turns().map(|t| t.movies.len() + t.entities.len()).sum();
        let seeker = all_turns().filter(|t| t.role == ecr_engine::Role::Seeker).count();
        let with_emo = all_turns().filter(|t| t.emotions.is_some()).count();
        let fb = |f: Feedback| self.instances.iter().filter(|i| i.feedback == f).count();
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        SplitStats {
            split: self.name.clone(),
            conversations: self.conversations.len(),
            messages: self.conversations.iter().map(|c| c.messages.len()).sum(),
            turns,
            recommender_turns: all_turns().filter(|t| t.role == ecr_engine::Role::Recommender).count(),
            instances: self.instances.len(),
            liked: fb(Feedback::Liked),
            disliked: fb(Feedback::Disliked),
            not_said: fb(Feedback::NotSaid),
            kg_entities_per_turn: ratio(kg, turns),
            mentions_per_turn: ratio(mentions, turns),
            gold_movies: self.gold.gold,
            gold_in_kg_share: ratio(self.gold.gold_in_kg, self.gold.gold),
            seeker_turns_with_emotions: ratio(with_emo, seeker),
        }
    }
}
