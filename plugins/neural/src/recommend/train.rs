//! Training and evaluating the recommender.
//!
//! Examples come from the recipe's upstream stages replayed over the
//! dialogues ([`super::trainer`]): for each recommender turn with gold movies,
//! the turn the stages produced for everything said before it, with the
//! seeker's questionnaire answers for the gold movies put into `turn.feedback`
//! before the non-dialogue-shaping stages (local emotion, global emotion,
//! feedback mapping) run, so that the mapping weighs them: that weight is the
//! instance's m(f) in the loss. [`features_of`] turns the result into model
//! inputs, as at inference.

use super::features::{Features, features_of};
use super::metrics::{Concentration, Outcome, report};
use super::model::Recommender;
use super::{Branches, ModelConfig};
use crate::cache::{EmbeddingCache, embed_cached};
use crate::error::Result;
use crate::fit::{Objective, Selection};
use crate::rng::Rng;
use crate::text::TextEncoder;
use candle_core::{D, Device, Tensor};
use ecr_data::keys::MovieTitles;
use ecr_engine::{Feedback, Turn};
use std::collections::{BTreeMap, HashMap};

/// One training or evaluation instance.
#[derive(Debug, Clone)]
pub struct Example {
    /// Index into the split's turn features.
    pub turn: usize,
    /// Index of the gold item in the model's item set.
    pub gold: usize,
    /// The seeker's feedback on it.
    pub feedback: Feedback,
    /// m(f) from the feedback mapping (1 without reweighting).
    pub weight: f32,
}

/// The examples of one split: per recommender turn its features, per (turn, gold item) an example.
#[derive(Debug, Clone, Default)]
pub struct SplitExamples {
    /// Features per turn.
    pub turns: Vec<Features>,
    /// Examples in the split's order.
    pub examples: Vec<Example>,
}

/// A recommender turn to learn from: the turn the upstream stages produced
/// for the dialogue up to it, and its gold items with the seeker's feedback.
#[derive(Debug, Clone)]
pub struct GoldTurn {
    /// The upstream stages' turn (history and user = everything said before the recommender turn).
    pub turn: Turn,
    /// Gold items (KG ids) with the questionnaire feedback.
    pub gold: Vec<(u32, Feedback)>,
}

/// The examples of `turns` (after the upstream stages ran on them): one per
/// gold item in `items`, with its weight m(f) from `turn.feedback` when
/// `branches.reweight` (1 otherwise), and the turn's features ([`features_of`]).
pub fn examples_from(
    turns: &[GoldTurn],
    items: &HashMap<u32, usize>,
    branches: Branches,
    cfg: &ModelConfig,
    titles: &MovieTitles,
) -> SplitExamples {
    let mut out = SplitExamples::default();
    for g in turns {
        let group: Vec<&(u32, Feedback)> = g.gold.iter().filter(|(i, _)| items.contains_key(i)).collect();
        if group.is_empty() {
            continue;
        }
        let feats =
            features_of(&g.turn, branches.emotions, branches.global, cfg.max_entities, cfg.max_utterances, titles);
        let k = out.turns.len();
        out.turns.push(feats);
        for &&(item, feedback) in &group {
            let weight = if branches.reweight {
                g.turn.feedback.iter().find(|f| f.item == item).and_then(|f| f.weight).unwrap_or(1.0)
            } else {
                1.0
            };
            out.examples.push(Example { turn: k, gold: items[&item], feedback, weight });
        }
    }
    out
}

/// Frozen MiniLM embeddings of every utterance text: a table `(1 + texts, dim)`
/// (row 0 is padding) and each text's row.
pub struct TextTable {
    /// The embeddings.
    pub table: Tensor,
    /// Text → row.
    pub rows: HashMap<String, u32>,
}

impl TextTable {
    /// Embed (through the on-disk cache) every utterance of the turns of `splits`.
    pub fn build(
        encoder: &TextEncoder,
        cache: Option<&mut EmbeddingCache>,
        splits: &[&[Features]],
        device: &Device,
        progress: bool,
    ) -> Result<Self> {
        let mut texts: Vec<String> = Vec::new();
        let mut rows = HashMap::new();
        for s in splits {
            for f in *s {
                for (t, _) in &f.utterances {
                    if !rows.contains_key(t) {
                        rows.insert(t.clone(), texts.len() as u32 + 1);
                        texts.push(t.clone());
                    }
                }
            }
        }
        let vecs = embed_cached(encoder, cache, &texts, progress)?;
        let dim = encoder.dim();
        let mut flat = vec![0f32; dim];
        for v in &vecs {
            flat.extend_from_slice(v);
        }
        Ok(TextTable { table: Tensor::from_vec(flat, (texts.len() + 1, dim), device)?, rows })
    }

    /// The row of a text (0 if unknown).
    pub fn row(&self, t: &str) -> u32 {
        self.rows.get(t).copied().unwrap_or(0)
    }
}

/// The item indices (in `index`, [`Recommender::item_index`]) of the movies a turn's dialogue
/// mentioned, in order: what the new-items protocol and the repeat baseline leave out or score.
pub fn mentioned_items(turn: &Features, index: &HashMap<u32, usize>) -> Vec<usize> {
    turn.mentioned.iter().filter_map(|m| index.get(m).copied()).collect()
}

/// The one scoring loop of evaluation: every example of `split` in order (batches of 32), handed
/// to `visit` with its score row and the item indices of the movies its dialogue mentioned.
fn score_examples(
    model: &Recommender,
    split: &SplitExamples,
    text: &TextTable,
    mut visit: impl FnMut(&Example, &[f32], &[usize]),
) -> Result<()> {
    let e = model.entity_table()?.detach();
    let index = model.item_index();
    for chunk in split.examples.chunks(super::metrics::AUC_BATCH) {
        let feats: Vec<&Features> = chunk.iter().map(|x| &split.turns[x.turn]).collect();
        let batch = model.batch(&feats, &|t| text.row(t))?;
        let (scores, _) = model.forward(&e, &text.table, &batch)?;
        for (x, row) in chunk.iter().zip(&scores.to_vec2::<f32>()?) {
            visit(x, row, &mentioned_items(&split.turns[x.turn], &index));
        }
    }
    Ok(())
}

/// Score every example of `split`: the outcomes for the metrics.
pub fn evaluate(model: &Recommender, split: &SplitExamples, text: &TextTable) -> Result<Vec<Outcome>> {
    let mut out = Vec::with_capacity(split.examples.len());
    score_examples(model, split, text, |x, row, mentioned| out.push(Outcome::of(row, x.gold, mentioned, x.feedback)))?;
    Ok(out)
}

/// [`evaluate`] and, from the same score rows, how concentrated the recommendations are over
/// `split`'s distinct turns ([`Concentration`], each turn counted once): the test split's pass.
pub fn evaluate_with_concentration(
    model: &Recommender,
    split: &SplitExamples,
    text: &TextTable,
) -> Result<(Vec<Outcome>, Concentration)> {
    let mut out = Vec::with_capacity(split.examples.len());
    let mut conc = Concentration::default();
    let mut seen = vec![false; split.turns.len()];
    score_examples(model, split, text, |x, row, mentioned| {
        out.push(Outcome::of(row, x.gold, mentioned, x.feedback));
        if !std::mem::replace(&mut seen[x.turn], true) {
            conc.add(row);
        }
    })?;
    Ok((out, conc))
}

/// Where the scores of `split`'s examples come from, on average over the examples
/// ([`Recommender::explain`]): for the gold item and for the turn's top item, the mean part of its
/// score from the local slots, from the global slots, from the emotion fusion (within those two),
/// from the dialogue text's summary and from the biases, and the mean score. Each turn is
/// explained once, for all its gold items and its top item.
pub fn explanation_summary(model: &Recommender, split: &SplitExamples, text: &TextTable) -> Result<serde_json::Value> {
    let e = model.entity_table()?.detach();
    let mut golds: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for x in &split.examples {
        golds.entry(x.turn).or_default().push(x.gold);
    }
    // [local, global, emotions, text, bias, score] of the gold, then of the top item.
    let mut sums = [[0f64; 6]; 2];
    let mut has_text = false;
    for (turn, golds) in &golds {
        let batch = model.batch(&[&split.turns[*turn]], &|t| text.row(t))?;
        let pick = |s: &[f32]| golds.iter().copied().chain(super::metrics::top_items(s, 1)).collect();
        let ex = model.explain_items(&e, &text.table, &batch, &pick)?;
        // The golds' attributions, then the top item's, which counts once per gold (per example).
        let (gold_parts, top) = ex.top.split_at(golds.len());
        let rows = gold_parts.iter().map(|t| (0, t, 1.0)).chain(top.iter().map(|t| (1, t, golds.len() as f64)));
        for (who, t, times) in rows {
            has_text |= t.text.is_some();
            let parts = [t.local_total(), t.global_total(), t.emotions_total(), t.text.unwrap_or(0.0), t.bias, t.score];
            for (s, v) in sums[who].iter_mut().zip(parts) {
                *s += times * v as f64;
            }
        }
    }
    let n = split.examples.len().max(1) as f64;
    let row = |s: &[f64; 6]| {
        let mut r = serde_json::json!({
            "local": s[0] / n, "global": s[1] / n, "emotions": s[2] / n, "bias": s[4] / n, "score": s[5] / n,
        });
        // No text part at all where the summary does not join the user representation.
        if has_text {
            r["text"] = (s[3] / n).into();
        }
        r
    };
    Ok(serde_json::json!({ "gold": row(&sums[0]), "top1": row(&sums[1]), "n": split.examples.len() }))
}

/// The weighted cross-entropy of ECR (§3.7): `mean_i m_i · CE(s_i, y_i)`.
pub fn weighted_ce(scores: &Tensor, gold: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(scores, D::Minus1)?;
    let picked = logp.gather(&gold.unsqueeze(1)?, 1)?.squeeze(1)?;
    Ok((picked * weights)?.neg()?.mean_all()?)
}

/// A training objective of the recommender over training examples `S`, selected on the
/// validation split's recommendation metrics.
pub struct Training<'a, S> {
    /// The model.
    pub model: &'a Recommender,
    /// Training examples.
    pub train: &'a S,
    /// Validation recommendation examples.
    pub valid: &'a SplitExamples,
    /// Utterance embeddings.
    pub text: &'a TextTable,
    /// The device.
    pub device: Device,
    /// Validation metrics of each epoch.
    pub history: Vec<BTreeMap<String, f64>>,
}

/// The recommendation training: m(f)-weighted cross-entropy over the item set.
pub type RecObjective<'a> = Training<'a, SplitExamples>;

/// Pre-training: unweighted cross-entropy over every entity, selected on the recommendation
/// metrics (the task it prepares for).
pub type PretrainObjective<'a> = Training<'a, PretrainSplit>;

/// The selection metric: the mean of validation Recall@10 and Recall@50.
pub fn selection_metric(m: &BTreeMap<String, f64>) -> f64 {
    (m["recall@10"] + m["recall@50"]) / 2.0
}

impl Objective for RecObjective<'_> {
    fn n_train(&self) -> usize {
        self.train.examples.len()
    }

    fn loss(&mut self, batch: &[usize], _rng: &mut Rng) -> Result<Tensor> {
        let e = self.model.entity_table()?;
        let ex: Vec<&Example> = batch.iter().map(|&i| &self.train.examples[i]).collect();
        let feats: Vec<&Features> = ex.iter().map(|x| &self.train.turns[x.turn]).collect();
        let b = self.model.batch(&feats, &|t| self.text.row(t))?;
        let (scores, _) = self.model.forward(&e, &self.text.table, &b)?;
        let gold: Vec<u32> = ex.iter().map(|x| x.gold as u32).collect();
        let w: Vec<f32> = ex.iter().map(|x| x.weight).collect();
        let n = ex.len();
        weighted_ce(&scores, &Tensor::from_vec(gold, n, &self.device)?, &Tensor::from_vec(w, n, &self.device)?)
    }

    fn select(&mut self) -> Result<Selection> {
        select_on(self.model, self.valid, self.text, &mut self.history)
    }

    fn metric_name(&self) -> &str {
        SELECTION_NAME
    }
}

const SELECTION_NAME: &str = "valid (R@10+R@50)/2";

/// The recommendation metrics of `model` on `valid` as a selection (both objectives select on
/// them), kept in `history`.
fn select_on(
    model: &Recommender,
    valid: &SplitExamples,
    text: &TextTable,
    history: &mut Vec<BTreeMap<String, f64>>,
) -> Result<Selection> {
    let m = report(&evaluate(model, valid, text)?);
    let metric = selection_metric(&m);
    let extra = serde_json::to_value(&m).unwrap_or_default();
    history.push(m);
    Ok(Selection { metric, extra })
}

/// The turns and targets of ECR's "emotional semantic fusion" pre-training (§3.8): for each
/// utterance with context, every KG entity it mentions (movies and others), each one an example
/// ranked over all entities.
#[derive(Debug, Clone, Default)]
pub struct PretrainSplit {
    /// Features per turn.
    pub turns: Vec<Features>,
    /// `(turn, target entity)` pairs.
    pub examples: Vec<(usize, u32)>,
}

impl PretrainSplit {
    /// The split of `turns` (after the upstream stages ran on them), each with its targets.
    pub fn from_turns(turns: &[(Turn, Vec<u32>)], branches: Branches, cfg: &ModelConfig, titles: &MovieTitles) -> Self {
        let mut out = PretrainSplit::default();
        for (turn, targets) in turns {
            let k = out.turns.len();
            out.turns.push(features_of(
                turn,
                branches.emotions,
                branches.global,
                cfg.max_entities,
                cfg.max_utterances,
                titles,
            ));
            out.examples.extend(targets.iter().map(|&e| (k, e)));
        }
        out
    }
}

impl Objective for PretrainObjective<'_> {
    fn n_train(&self) -> usize {
        self.train.examples.len()
    }

    fn loss(&mut self, batch: &[usize], _rng: &mut Rng) -> Result<Tensor> {
        let e = self.model.entity_table()?;
        let ex: Vec<(usize, u32)> = batch.iter().map(|&i| self.train.examples[i]).collect();
        let feats: Vec<&Features> = ex.iter().map(|&(t, _)| &self.train.turns[t]).collect();
        let b = self.model.batch(&feats, &|t| self.text.row(t))?;
        let scores = self.model.forward_entities(&e, &self.text.table, &b)?;
        let n = ex.len();
        let gold = Tensor::from_vec(ex.iter().map(|x| x.1).collect::<Vec<u32>>(), n, &self.device)?;
        weighted_ce(&scores, &gold, &Tensor::ones(n, candle_core::DType::F32, &self.device)?)
    }

    fn select(&mut self) -> Result<Selection> {
        select_on(self.model, self.valid, self.text, &mut self.history)
    }

    fn metric_name(&self) -> &str {
        SELECTION_NAME
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::{FitConfig, Params, fit, param_count};
    use crate::recommend::FusionInit;
    use crate::recommend::features::Slot;
    use candle_nn::VarMap;
    use ecr_data::Kg;
    use ecr_engine::Role;

    /// The tests' small model.
    fn tiny(fusion_init: FusionInit, text_summary: bool) -> ModelConfig {
        ModelConfig { dim: 8, emotion_dim: 4, bases: 2, max_entities: 4, max_utterances: 2, fusion_init, text_summary }
    }

    fn kg() -> Kg {
        let uris: Vec<String> = (0..8).map(|i| format!("<http://dbpedia.org/resource/E{i}>")).collect();
        let triples: Vec<(u32, u16, u32)> = vec![(0, 0, 4), (1, 0, 4), (2, 1, 5), (3, 1, 5), (6, 0, 7)];
        Kg::from_parts(uris, vec!["r0".into(), "r1".into()], &triples, &[0, 1, 2, 3], &[0, 1, 2, 3])
    }

    /// Context entity 4 (liked) predicts item 0 or 1; entity 5 predicts 2 or 3.
    fn split(n: usize) -> SplitExamples {
        let mut s = SplitExamples::default();
        for i in 0..n {
            let ctx = if i % 2 == 0 { 4 } else { 5 };
            s.turns.push(Features {
                slots: vec![Slot { entity: ctx, emotions: vec![(0, 0.9)], related: vec![(ctx + 2, 1.0)] }],
                utterances: vec![(format!("u{}", i % 2), Role::Seeker)],
                mentioned: vec![],
            });
            let gold = if i % 2 == 0 { i % 4 / 2 } else { 2 + i % 4 / 2 };
            let feedback = if i % 3 == 0 { Feedback::Disliked } else { Feedback::Liked };
            s.examples.push(Example { turn: i, gold, feedback, weight: if i % 3 == 0 { 1.0 } else { 2.0 } });
        }
        s
    }

    fn train(branches: Branches, weights: &dyn Fn(Feedback) -> f32) -> (usize, BTreeMap<String, f64>) {
        let g = kg();
        let cfg = tiny(FusionInit::Random, true);
        let vm = VarMap::new();
        let mut p = Params::new(&vm, &Device::Cpu, 5);
        let model = Recommender::new(&mut p, &g, &[0, 1, 2, 3], cfg, branches, 3).unwrap();
        let mut train = split(64);
        for x in &mut train.examples {
            x.weight = weights(x.feedback);
        }
        let valid = split(16);
        let mut rows = HashMap::new();
        rows.insert("u0".to_string(), 1);
        rows.insert("u1".to_string(), 2);
        let table = Tensor::new(&[[0f32, 0., 0.], [1., 0., 0.], [0., 1., 0.]], &Device::Cpu).unwrap();
        let text = TextTable { table, rows };
        let mut obj = RecObjective {
            model: &model,
            train: &train,
            valid: &valid,
            text: &text,
            device: Device::Cpu,
            history: vec![],
        };
        let fc = FitConfig { epochs: 8, batch_size: 8, lr: 0.02, weight_decay: 0.0, warmup: 0.1, seed: 1 };
        fit(&vm, &mut obj, &fc, "test", false).unwrap();
        (param_count(&vm), report(&evaluate(&model, &valid, &text).unwrap()))
    }

    /// Context entity 4 mentions items 0 and 1 and entity 6; context 5 mentions 2, 3 and 7.
    fn pretrain_split(n: usize) -> PretrainSplit {
        let feats = split(2).turns;
        let mut s = PretrainSplit { turns: feats, examples: vec![] };
        for i in 0..n {
            let targets: &[u32] = if i % 2 == 0 { &[0, 1, 6] } else { &[2, 3, 7] };
            s.examples.extend(targets.iter().map(|&t| (i % 2, t)));
        }
        s
    }

    #[test]
    fn pre_training_ranks_the_entities_a_turn_mentions_then_recommendation_training_goes_on() {
        let g = kg();
        let cfg = tiny(FusionInit::Random, true);
        let branches = Branches { text: true, emotions: true, global: true, reweight: false };
        let rows: HashMap<String, u32> = [("u0".to_string(), 1), ("u1".to_string(), 2)].into();
        let table = Tensor::new(&[[0f32, 0., 0.], [1., 0., 0.], [0., 1., 0.]], &Device::Cpu).unwrap();
        let text = TextTable { table, rows };
        let (pre, valid, train_split) = (pretrain_split(32), split(16), split(64));
        let run = |pretrain: bool| {
            let vm = VarMap::new();
            let mut p = Params::new(&vm, &Device::Cpu, 5);
            let model = Recommender::new(&mut p, &g, &[0, 1, 2, 3], cfg, branches, 3).unwrap();
            let fc = FitConfig { epochs: 6, batch_size: 8, lr: 0.02, weight_decay: 0.0, warmup: 0.1, seed: 1 };
            let pre_report = pretrain.then(|| {
                let mut obj = PretrainObjective {
                    model: &model,
                    train: &pre,
                    valid: &valid,
                    text: &text,
                    device: Device::Cpu,
                    history: vec![],
                };
                fit(&vm, &mut obj, &fc, "pre", false).unwrap()
            });
            // Pre-training alone already ranks each context's items first (the valid split asks for them).
            let after_pre = report(&evaluate(&model, &valid, &text).unwrap());
            let mut obj = RecObjective {
                model: &model,
                train: &train_split,
                valid: &valid,
                text: &text,
                device: Device::Cpu,
                history: vec![],
            };
            fit(&vm, &mut obj, &FitConfig { epochs: 2, ..fc }, "rec", false).unwrap();
            (pre_report, after_pre, report(&evaluate(&model, &valid, &text).unwrap()))
        };
        let (report_pre, after_pre, after_rec) = run(true);
        let epochs = report_pre.unwrap().epochs;
        assert!(epochs.last().unwrap().train_loss < epochs[0].train_loss, "{epochs:?}");
        // Three targets per turn over 8 entities: the loss cannot reach 0, but the items of the
        // context's group come first among the 4 items (R@2 over a pair of golds: 1).
        assert!(after_pre["recall@1"] >= 0.4, "{after_pre:?}");
        assert!(after_rec["recall@1"] >= 0.4, "{after_rec:?}");
        let (_, untrained, _) = run(false);
        assert!(untrained["recall@1"] < after_pre["recall@1"], "{untrained:?} vs {after_pre:?}");
        assert_eq!(run(true).2, after_rec, "seeded: the same pre-training and training twice");
    }

    /// `fusion_init = "zero"`: at the start the user's emotions change no score (each entity is
    /// its representation without emotions); Glorot-initialised fusion makes them count at once.
    #[test]
    fn zero_initialised_fusion_starts_deaf_to_the_emotions() {
        use candle_core::DType;
        let g = kg();
        let branches = Branches { text: false, emotions: true, global: false, reweight: false };
        let text = TextTable { table: Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap(), rows: HashMap::new() };
        let sad = {
            let mut t = split(2).turns;
            for f in &mut t {
                f.slots[0].emotions = vec![(4, 0.8), (2, 0.5)];
            }
            t
        };
        let scores = |init: FusionInit, turns: &[Features]| {
            let cfg = tiny(init, true);
            let vm = VarMap::new();
            let mut p = Params::new(&vm, &Device::Cpu, 5);
            let model = Recommender::new(&mut p, &g, &[0, 1, 2, 3], cfg, branches, 3).unwrap();
            let feats: Vec<&Features> = turns.iter().collect();
            let batch = model.batch(&feats, &|_| 0).unwrap();
            let e = model.entity_table().unwrap();
            model.forward(&e, &text.table, &batch).unwrap().0.to_vec2::<f32>().unwrap()
        };
        let liked = split(2).turns;
        assert_eq!(scores(FusionInit::Zero, &liked), scores(FusionInit::Zero, &sad));
        assert_ne!(scores(FusionInit::Random, &liked), scores(FusionInit::Random, &sad));
    }

    /// `explain` splits each top item's score into its slots' parts and the rest (text summary and
    /// biases, computed from the layers, not as a remainder): they add up to the score; the
    /// emotions' part is zero for a zero-initialised fusion and not for a random one.
    #[test]
    fn explanations_add_up_to_each_top_score() {
        let g = kg();
        let table = Tensor::new(&[[0f32, 0., 0.], [1., 0., 0.], [0., 1., 0.]], &Device::Cpu).unwrap();
        let mut turn = split(2).turns.remove(0);
        turn.slots.push(Slot { entity: 6, emotions: vec![(4, 0.7)], related: vec![(7, 0.5), (5, 0.25)] });
        // With the text summary in the user representation, with the text kept to the entities and
        // the query (`text_summary = false`), and without text.
        for (text, text_summary) in [(true, true), (true, false), (false, true)] {
            for init in [FusionInit::Random, FusionInit::Zero] {
                let branches = Branches { text, emotions: true, global: true, reweight: false };
                let cfg = tiny(init, text_summary);
                let vm = VarMap::new();
                let mut p = Params::new(&vm, &Device::Cpu, 5);
                let model = Recommender::new(&mut p, &g, &[0, 1, 2, 3], cfg, branches, 3).unwrap();
                let batch = model.batch(&[&turn], &|t| if t == "u0" { 1 } else { 2 }).unwrap();
                let e = model.entity_table().unwrap();
                let x = model.explain(&e, &table, &batch, 3).unwrap();
                let (scores, alpha) = model.forward(&e, &table, &batch).unwrap();
                assert_eq!(x.scores, scores.squeeze(0).unwrap().to_vec1::<f32>().unwrap());
                assert_eq!(x.alpha, alpha.squeeze(0).unwrap().to_vec1::<f32>().unwrap());
                assert_eq!(x.top.len(), 3);
                let mut best = x.scores.clone();
                best.sort_by(|a, b| b.total_cmp(a));
                for (t, want) in x.top.iter().zip(&best) {
                    assert_eq!(t.score, *want, "best first");
                    assert_eq!((t.local.len(), t.global.len()), (2, 2), "two local and two global slots");
                    let sum: f32 = t.local_total() + t.global_total() + t.text.unwrap_or(0.0) + t.bias;
                    assert_eq!(t.text.is_some(), text && text_summary, "a text part only where the summary joins");
                    assert!((sum - t.score).abs() < 1e-4, "text {text}, {init:?}: {sum} vs {}", t.score);
                    let slots = t.local.iter().chain(&t.global);
                    assert!(slots.clone().any(|p| p.total.abs() > 1e-3), "the slots move the score");
                    let emotions = slots.map(|p| p.emotions.abs()).sum::<f32>();
                    match init {
                        FusionInit::Zero => assert_eq!(emotions, 0.0),
                        FusionInit::Random => assert!(emotions > 1e-4, "{emotions}"),
                    }
                }
                // Over a split: the mean parts of the gold's and of the top item's scores add up to
                // their mean scores, and the top item scores at least as high as the gold.
                let rows: HashMap<String, u32> = [("u0".to_string(), 1), ("u1".to_string(), 2)].into();
                let text_table = TextTable { table: table.clone(), rows };
                let sum = explanation_summary(&model, &split(8), &text_table).unwrap();
                for who in ["gold", "top1"] {
                    let r = &sum[who];
                    assert_eq!(r.get("text").is_some(), text && text_summary, "{who}: {sum}");
                    let parts =
                        ["local", "global", "text", "bias"].iter().map(|k| r[k].as_f64().unwrap_or(0.0)).sum::<f64>();
                    assert!((parts - r["score"].as_f64().unwrap()).abs() < 1e-4, "{who}: {sum}");
                }
                assert!(sum["top1"]["score"].as_f64().unwrap() >= sum["gold"]["score"].as_f64().unwrap());
                assert_eq!(sum["n"], 8);
                // Concentration: each of the 8 turns once; its first item is one of its top 10s.
                let mut two = split(8);
                two.examples.extend(two.examples.clone());
                let (outcomes, conc) = evaluate_with_concentration(&model, &two, &text_table).unwrap();
                assert_eq!(outcomes, evaluate(&model, &two, &text_table).unwrap(), "the same outcomes");
                let c = conc.report(&|i| i.to_string());
                assert_eq!(c["turns"], 8, "each turn counted once");
                let (top1, top10) = (c["distinct_top1"].as_u64().unwrap(), c["distinct_top10"].as_u64().unwrap());
                assert!((1..=2).contains(&top1) && (top1..=4).contains(&top10), "{c}");
            }
        }
    }

    #[test]
    fn model_without_the_global_branch_is_smaller_and_still_trains() {
        let full = Branches { text: true, emotions: true, global: true, reweight: true };
        let local = Branches { global: false, ..full };
        let (n_full, m_full) = train(full, &|f| if f == Feedback::Liked { 2.0 } else { 1.0 });
        let (n_local, m_local) = train(local, &|f| if f == Feedback::Liked { 2.0 } else { 1.0 });
        assert!(n_local < n_full, "{n_local} vs {n_full}");
        // Each context entity points at two items: a trained model puts the gold in its top 2.
        assert!(m_local["recall@10"] == 1.0 && m_full["recall@10"] == 1.0);
        assert!(m_local["recall@1"] >= 0.4, "{m_local:?}");
    }

    #[test]
    fn same_weights_same_training_and_the_loss_follows_the_weights() {
        let full = Branches { text: true, emotions: true, global: true, reweight: true };
        let table = |f: Feedback| match f {
            Feedback::Liked => 2.0,
            Feedback::Disliked => 1.0,
            Feedback::NotSaid => 0.5,
        };
        let a = train(full, &table);
        let b = train(full, &table);
        assert_eq!(a, b, "seeded training is deterministic");
        // The loss is mean_i m_i CE_i: doubling the weights doubles it.
        let s = Tensor::new(&[[1f32, 0.], [0., 1.]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[0u32, 0], &Device::Cpu).unwrap();
        let l1 = weighted_ce(&s, &y, &Tensor::new(&[1f32, 1.], &Device::Cpu).unwrap()).unwrap();
        let l2 = weighted_ce(&s, &y, &Tensor::new(&[2f32, 0.], &Device::Cpu).unwrap()).unwrap();
        let ce0 = (1f32 + (-1f32).exp()).ln();
        let ce1 = (1f32 + 1f32.exp()).ln();
        assert!((l1.to_scalar::<f32>().unwrap() - (ce0 + ce1) / 2.0).abs() < 1e-5);
        assert!((l2.to_scalar::<f32>().unwrap() - ce0).abs() < 1e-5);
    }
}
