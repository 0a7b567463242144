//! The recommender's side of the engine's training contract: its training
//! data is the recipe's own upstream stages replayed over ReDial.
//!
//! For every recommender turn with gold movies, the example is the turn the
//! upstream stages produced for everything said before it (the replayed seeker
//! turn just before it), with the seeker's questionnaire answers for the gold
//! movies in `turn.feedback`; the stages after the dialogue-shaping ones
//! (local emotion, global emotion, feedback mapping) then run on it, so m(f)
//! comes from the recipe's feedback mapping, built-in or Lua. Emotions are the
//! tagger stage's on every split, the test split included: never the
//! annotators' labels.

use super::features::Features;
use super::metrics::{Outcome, popularity_scores, repeat_scores, report};
use super::model::Recommender;
use super::paired::{InstanceRecord, instances_file, write_instances};
use super::stage::{PretrainConfig, RecommenderConfig, RecommenderParts, expected_meta, item_set};
use super::train::{
    GoldTurn, PretrainObjective, PretrainSplit, RecObjective, SplitExamples, TextTable, evaluate_with_concentration,
    examples_from, explanation_summary, mentioned_items,
};
use crate::checkpoint::{self, CheckpointMeta};
use crate::fit::{Params, fit, param_count};
use candle_nn::VarMap;
use ecr_data::linker::at_mentions;
use ecr_data::replay::{RedialSplits, script};
use ecr_data::{Conversation, keys::CatalogueKey, kg::Kg, kg::link_movies};
use ecr_engine::{
    BoxError, BuildContext, EvalReport, EvalSplit, Fingerprint, ItemFeedback, Role, TrainContext, TrainReport,
    TrainStatus, Trainable, Utterance,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What the checkpoint was trained from, beside it.
pub const TRAINED_FROM_FILE: &str = "trained_from.json";
/// The test metrics written after training.
pub const METRICS_FILE: &str = "metrics.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TrainedFrom {
    upstream: String,
    data: String,
    train: serde_json::Value,
    reweighted: bool,
    /// The pre-training settings, when the recipe pre-trains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pretrain: Option<PretrainConfig>,
}

/// The three splits' examples.
struct Data {
    train: SplitExamples,
    valid: SplitExamples,
    test: SplitExamples,
    /// The training split's pre-training examples, when the recipe pre-trains.
    pretrain: Option<PretrainSplit>,
    reweighted: bool,
}

impl Data {
    /// The examples an evaluation on `split` scores.
    fn split(&self, split: EvalSplit) -> &SplitExamples {
        match split {
            EvalSplit::Test => &self.test,
            EvalSplit::Valid => &self.valid,
        }
    }
}

/// Trains and evaluates one recipe's `recommender` stage.
pub struct RecTrainer {
    config: RecommenderConfig,
    ctx: BuildContext,
}

impl RecTrainer {
    /// The trainer of the stage configured by `config` in `ctx`.
    pub fn new(config: RecommenderConfig, ctx: &BuildContext) -> Self {
        RecTrainer { config, ctx: ctx.clone() }
    }

    /// The recipe's checkpoint directory.
    fn dir(&self) -> PathBuf {
        self.config.checkpoint_dir(&self.ctx)
    }

    /// The pre-training settings, when the recipe pre-trains.
    fn pretrain(&self) -> Option<PretrainConfig> {
        (self.config.pretrain.epochs > 0).then_some(self.config.pretrain)
    }

    /// Where a run with `seed` lives: the recipe's checkpoint directory for its
    /// own seed, `seed-<s>/` inside it for another, so that training other
    /// seeds (`ecr compare`) never replaces the checkpoint the recipe runs with.
    fn dir_for(&self, seed: Option<u64>) -> PathBuf {
        match seed {
            Some(s) if s != self.config.train.seed => self.dir().join(format!("seed-{s}")),
            _ => self.dir(),
        }
    }

    fn record(&self) -> Option<TrainedFrom> {
        serde_json::from_str(&std::fs::read_to_string(self.dir().join(TRAINED_FROM_FILE)).ok()?).ok()
    }

    fn expected(&self, parts: &RecommenderParts) -> Result<CheckpointMeta, BoxError> {
        let items = item_set(&parts.kg);
        Ok(expected_meta(&self.config, parts.branches, &items, &parts.kg, parts.encoder.as_ref().map(|e| e.id()))?)
    }

    /// The gold turns of `convs` from their replayed turns: for each
    /// recommender utterance naming catalogue movies that map into the KG
    /// (`movie_entity`), the replayed seeker turn before it with the gold
    /// items' questionnaire feedback in `turn.feedback`.
    pub fn gold_turns(
        convs: &[Conversation],
        replayed: &[Vec<ecr_engine::Turn>],
        movie_entity: &HashMap<u32, u32>,
    ) -> Vec<GoldTurn> {
        let mut out = Vec::new();
        for_each_recommender_turn(convs, replayed, &mut |r| {
            let mut gold: Vec<(u32, ecr_engine::Feedback)> = Vec::new();
            for (movie, _) in at_mentions(&r.utterance.text, |m| movie_entity.contains_key(&m)) {
                let item = movie_entity[&movie];
                if !gold.iter().any(|g| g.0 == item) {
                    gold.push((item, r.conv.seeker_feedback(movie)));
                }
            }
            if gold.is_empty() {
                return;
            }
            let mut turn = r.before.clone();
            turn.feedback =
                gold.iter().map(|&(item, feedback)| ItemFeedback { item, feedback, weight: None }).collect();
            out.push(GoldTurn { turn, gold });
        });
        out
    }

    /// The pre-training turns of `convs` (ECR §3.8): for every utterance with something said
    /// before it, that context and every KG entity the utterance mentions, as the recipe's own
    /// stages linked it. A recommender utterance's context is the replayed seeker turn before it
    /// (its entities: the next replayed turn's history, and its `@id` movies); a seeker
    /// utterance's is its replayed turn without it, the last utterance before it as the user's.
    pub fn pretrain_turns(
        convs: &[Conversation],
        replayed: &[Vec<ecr_engine::Turn>],
        movie_entity: &HashMap<u32, u32>,
    ) -> Vec<(ecr_engine::Turn, Vec<u32>)> {
        fn targets(entities: impl Iterator<Item = u32>) -> Vec<u32> {
            let mut out: Vec<u32> = Vec::new();
            for e in entities {
                if !out.contains(&e) {
                    out.push(e);
                }
            }
            out
        }
        let mut out = Vec::new();
        for_each_recommender_turn(convs, replayed, &mut |r| {
            let movies = at_mentions(&r.utterance.text, |m| movie_entity.contains_key(&m))
                .into_iter()
                .map(|(m, _)| movie_entity[&m]);
            let linked = r.linked.into_iter().flat_map(|l| l.entities.iter().filter_map(|m| m.entity));
            out.push((r.before.clone(), targets(movies.chain(linked))));
        });
        for turn in replayed.iter().flatten() {
            let Some((last, earlier)) = turn.history.split_last() else { continue };
            let context = ecr_engine::Turn { history: earlier.to_vec(), user: last.clone(), ..Default::default() };
            out.push((context, targets(turn.user.entities.iter().filter_map(|m| m.entity))));
        }
        out.retain(|(_, t)| !t.is_empty());
        out
    }

    /// Replay the upstream stages over train, valid and test, and build the examples (and the
    /// pre-training ones when `pretraining` and the recipe pre-trains).
    fn data(&self, cx: &TrainContext<'_>, parts: &RecommenderParts, pretraining: bool) -> Result<Data, BoxError> {
        let dir = self.ctx.data_dir()?;
        let splits = RedialSplits::load(&dir, self.ctx.data_sample())?;
        let catalogue = self.ctx.resources().get(&CatalogueKey(dir))?;
        let movie_entity: HashMap<u32, u32> =
            link_movies(&catalogue, &parts.kg).into_iter().map(|(m, (e, _))| (m, e)).collect();
        let all: Vec<&Conversation> = splits.train.iter().chain(&splits.valid).chain(&splits.test).collect();
        let scripts: Vec<Vec<Utterance>> = all.iter().map(|c| script(c).0).collect();
        let bar = crate::fit::progress_bar(cx.options.progress, 0, "recommender: replaying the upstream stages");
        let replayed = cx.replay_shaping(&scripts, &splits.fingerprint, &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
        bar.finish_and_clear();
        let (n_train, n_valid) = (splits.train.len(), splits.valid.len());
        let parts_of = |convs: &[Conversation], from: usize| -> Vec<GoldTurn> {
            Self::gold_turns(convs, &replayed[from..from + convs.len()], &movie_entity)
        };
        let mut gold =
            [parts_of(&splits.train, 0), parts_of(&splits.valid, n_train), parts_of(&splits.test, n_train + n_valid)];
        for g in &mut gold {
            run_rest_on(cx, g, |x| &mut x.turn)?;
        }
        let reweighted = gold[0].iter().any(|g| g.turn.feedback.iter().any(|f| f.weight.is_some()));
        let items: HashMap<u32, usize> = item_set(&parts.kg).into_iter().enumerate().map(|(i, e)| (e, i)).collect();
        let cfg = &self.config.model;
        let pretrain = if pretraining && self.pretrain().is_some() {
            let mut p = Self::pretrain_turns(&splits.train, &replayed[..n_train], &movie_entity);
            run_rest_on(cx, &mut p, |x| &mut x.0)?;
            Some(PretrainSplit::from_turns(&p, parts.branches, cfg, &parts.titles))
        } else {
            None
        };
        let ex = |g: &[GoldTurn]| examples_from(g, &items, parts.branches, cfg, &parts.titles);
        Ok(Data { train: ex(&gold[0]), valid: ex(&gold[1]), test: ex(&gold[2]), pretrain, reweighted })
    }

    fn text_table(parts: &mut RecommenderParts, splits: &[&[Features]], progress: bool) -> Result<TextTable, BoxError> {
        let device = parts.device.clone();
        Ok(match &parts.encoder {
            Some(enc) => TextTable::build(enc, parts.cache.as_mut(), splits, &device, progress)?,
            None => TextTable {
                table: candle_core::Tensor::zeros((1, 384), candle_core::DType::F32, &device)?,
                rows: HashMap::new(),
            },
        })
    }

    fn model(&self, parts: &RecommenderParts, vm: &VarMap, seed: u64) -> Result<Recommender, BoxError> {
        let mut p = Params::new(vm, &parts.device, seed);
        let dim = parts.encoder.as_ref().map_or(384, |e| e.dim());
        Ok(Recommender::new(&mut p, &parts.kg, &item_set(&parts.kg), self.config.model, parts.branches, dim)?)
    }

    /// The metrics of `model` on `split`, both protocols, beside the popularity and repeat
    /// baselines; the per-instance outcomes go to `dir`/[`instances_file`] (named in the metrics
    /// as `instances`).
    fn split_metrics(
        model: &Recommender,
        data: &Data,
        split: EvalSplit,
        text: &TextTable,
        kg: &Kg,
        dir: &Path,
    ) -> Result<serde_json::Value, BoxError> {
        let eval = data.split(split);
        let (outcomes, conc) = evaluate_with_concentration(model, eval, text)?;
        let m = report(&outcomes);
        let records: Vec<InstanceRecord> = eval
            .examples
            .iter()
            .zip(&outcomes)
            .map(|(x, o)| {
                let slots = &eval.turns[x.turn].slots;
                let emotional = slots.iter().filter(|s| !s.emotions.is_empty()).count();
                InstanceRecord::new(x.turn, model.items()[x.gold], o, slots.len(), emotional)
            })
            .collect();
        let instances = dir.join(instances_file(split));
        write_instances(&instances, &records).map_err(|e| format!("{}: {e}", instances.display()))?;
        let n_items = model.items().len();
        let pop = popularity_scores(n_items, data.train.examples.iter().map(|x| x.gold));
        let index = model.item_index();
        let base = |f: &dyn Fn(&[usize]) -> Vec<f32>| -> BTreeMap<String, f64> {
            let outcomes: Vec<Outcome> = eval
                .examples
                .iter()
                .map(|x| {
                    let mentioned = mentioned_items(&eval.turns[x.turn], &index);
                    Outcome::of(&f(&mentioned), x.gold, &mentioned, x.feedback)
                })
                .collect();
            report(&outcomes)
        };
        let mut v = serde_json::to_value(&m)?;
        v["n"] = eval.examples.len().into();
        v["split"] = split.name().into();
        v["instances"] = instances.display().to_string().into();
        v["explanation"] = explanation_summary(model, eval, text)?;
        let name = |i: usize| model.items().get(i).and_then(|&e| kg.name(e)).unwrap_or("?").to_string();
        v["concentration"] = conc.report(&name);
        v["baselines"] = serde_json::json!({
            "popularity": base(&|_| pop.clone()),
            "repeat_mentioned": base(&|m| repeat_scores(&pop, m)),
        });
        Ok(v)
    }
}

/// Run the upstream stages after the dialogue-shaping ones on the turn of each of `xs`, in one
/// batch, in place.
fn run_rest_on<T>(
    cx: &TrainContext<'_>,
    xs: &mut [T],
    turn: impl Fn(&mut T) -> &mut ecr_engine::Turn,
) -> Result<(), BoxError> {
    let mut turns: Vec<ecr_engine::Turn> = xs.iter_mut().map(|x| std::mem::take(turn(x))).collect();
    cx.run_rest(&mut turns)?;
    for (x, t) in xs.iter_mut().zip(turns) {
        *turn(x) = t;
    }
    Ok(())
}

/// A recommender utterance of a replayed conversation.
struct RecommenderTurn<'a> {
    conv: &'a Conversation,
    /// The utterance, as the conversation's script has it.
    utterance: &'a Utterance,
    /// The replayed seeker turn before it.
    before: &'a ecr_engine::Turn,
    /// The utterance as the next replayed turn's history holds it (linked by the recipe's
    /// stages), when there is a next turn.
    linked: Option<&'a Utterance>,
}

/// Call `f` for every recommender utterance with a seeker turn before it (ECR skips the others).
fn for_each_recommender_turn(
    convs: &[Conversation],
    replayed: &[Vec<ecr_engine::Turn>],
    f: &mut dyn FnMut(RecommenderTurn<'_>),
) {
    for (conv, turns) in convs.iter().zip(replayed) {
        let (utterances, _) = script(conv);
        let mut seekers = 0usize;
        for (i, u) in utterances.iter().enumerate() {
            match u.role {
                Role::Seeker => seekers += 1,
                Role::Recommender if seekers == 0 => {}
                Role::Recommender => {
                    let Some(before) = turns.get(seekers - 1) else { continue };
                    let linked = turns.get(seekers).and_then(|t| t.history.get(i)).filter(|h| h.text == u.text);
                    f(RecommenderTurn { conv, utterance: u, before, linked });
                }
            }
        }
    }
}

/// A table of the headline metrics of `m` (and its baselines), both protocols.
pub fn metrics_table(m: &serde_json::Value) -> String {
    let keys = super::metrics::HEADLINE;
    let row = |name: &str, v: &serde_json::Value, prefix: &str| {
        let cells: Vec<String> = keys
            .iter()
            .map(|k| v.get(format!("{prefix}{k}")).and_then(|x| x.as_f64()).map_or("-".into(), |x| format!("{x:.4}")))
            .collect();
        format!("{name:<22} {}", cells.join("  "))
    };
    let mut out = format!("{:<22} {}\n", "", keys.join("  "));
    for (prefix, title) in [("", "paper protocol"), ("new_items.", "new-items protocol")] {
        out.push_str(&format!("-- {title}\n"));
        out.push_str(&row("recommender", m, prefix));
        out.push('\n');
        for b in ["popularity", "repeat_mentioned"] {
            out.push_str(&row(b, &m["baselines"][b], prefix));
            out.push('\n');
        }
    }
    let c = &m["concentration"];
    if let Some(turns) = c["turns"].as_u64() {
        let split = m["split"].as_str().unwrap_or("test");
        out.push_str(&format!(
            "-- concentration over {turns} {split} turns: {} distinct first items, {} distinct in the top 10s; \
             the most frequent first item, {}, in {:.1}% of the turns\n",
            c["distinct_top1"],
            c["distinct_top10"],
            c["top1_name"].as_str().unwrap_or("?"),
            100.0 * c["top1_share"].as_f64().unwrap_or(0.0),
        ));
    }
    out
}

impl Trainable for RecTrainer {
    fn status(&self, upstream: &str) -> Result<TrainStatus, BoxError> {
        let dir = self.dir();
        if !checkpoint::exists(&dir) {
            return Ok(TrainStatus::Missing(format!("no checkpoint in {}", dir.display())));
        }
        let parts = RecommenderParts::of(self.config.clone(), &self.ctx)?;
        if let Some(why) = checkpoint::stale_reason(&dir, &self.expected(&parts)?) {
            return Ok(TrainStatus::Stale(why));
        }
        let Some(was) = self.record() else {
            return Ok(TrainStatus::Stale(format!("{} is missing", dir.join(TRAINED_FROM_FILE).display())));
        };
        let mut why = Vec::new();
        if was.upstream != upstream {
            why.push("an upstream stage changed or was retrained".to_string());
        }
        let data = RedialSplits::fingerprint(&self.ctx.data_dir()?, self.ctx.data_sample())?;
        if was.data != data {
            why.push("redial/train.jsonl or test.jsonl (or recipe.data_sample) changed".to_string());
        }
        if was.train != serde_json::to_value(&self.config.train)? || was.pretrain != self.pretrain() {
            why.push("the training configuration changed".to_string());
        }
        Ok(if why.is_empty() {
            TrainStatus::UpToDate(format!("checkpoint {}", dir.display()))
        } else {
            TrainStatus::Stale(why.join("; "))
        })
    }

    fn fingerprint(&self) -> Option<String> {
        let dir = self.dir();
        let meta = std::fs::read_to_string(dir.join(checkpoint::META_FILE)).ok()?;
        let record = std::fs::read_to_string(dir.join(TRAINED_FROM_FILE)).unwrap_or_default();
        Some(Fingerprint::new().str(&meta).str(&record).hex())
    }

    fn train(&self, cx: &TrainContext<'_>) -> Result<TrainReport, BoxError> {
        let mut parts = RecommenderParts::of(self.config.clone(), &self.ctx)?;
        let mut fc = self.config.train.clone();
        if let Some(seed) = cx.options.seed {
            fc.seed = seed;
        }
        let t0 = std::time::Instant::now();
        let data = self.data(cx, &parts, true)?;
        let data_s = t0.elapsed().as_secs_f64();
        let pre_turns: &[Features] = data.pretrain.as_ref().map_or(&[], |p| &p.turns);
        let splits = [&data.train.turns[..], &data.valid.turns, &data.test.turns, pre_turns];
        let text = Self::text_table(&mut parts, &splits, cx.options.progress)?;
        let text_s = t0.elapsed().as_secs_f64() - data_s;
        let vm = VarMap::new();
        let model = self.model(&parts, &vm, fc.seed)?;
        let params = param_count(&vm);
        let pretrain_report = match &data.pretrain {
            Some(p) => {
                let mut objective = PretrainObjective {
                    model: &model,
                    train: p,
                    valid: &data.valid,
                    text: &text,
                    device: parts.device.clone(),
                    history: vec![],
                };
                let pc = self.config.pretrain.fit_config(&fc);
                Some(fit(&vm, &mut objective, &pc, "recommender pre-training", cx.options.progress)?)
            }
            None => None,
        };
        let mut objective = RecObjective {
            model: &model,
            train: &data.train,
            valid: &data.valid,
            text: &text,
            device: parts.device.clone(),
            history: vec![],
        };
        let fit_report = fit(&vm, &mut objective, &fc, "recommender", cx.options.progress)?;
        let mut meta = self.expected(&parts)?;
        meta.info = serde_json::json!({
            "params": params,
            "branches": parts.branches,
            "pretrain": pretrain_report,
            "fit": fit_report,
            "seed": fc.seed,
        });
        let dir = self.dir_for(cx.options.seed);
        checkpoint::save(&dir, &vm, &meta)?;
        let mut metrics = Self::split_metrics(&model, &data, EvalSplit::Test, &text, &parts.kg, &dir)?;
        metrics["seed"] = fc.seed.into();
        metrics["fit_seconds"] = fit_report.seconds.into();
        if let Some(p) = &pretrain_report {
            metrics["pretrain_seconds"] = p.seconds.into();
            metrics["pretrain_examples"] = data.pretrain.as_ref().map_or(0, |p| p.examples.len()).into();
        }
        std::fs::write(dir.join(METRICS_FILE), serde_json::to_string_pretty(&metrics)?)?;
        let record = TrainedFrom {
            upstream: cx.upstream_fingerprint.to_string(),
            data: RedialSplits::fingerprint(&self.ctx.data_dir()?, self.ctx.data_sample())?,
            train: serde_json::to_value(&self.config.train)?,
            reweighted: data.reweighted,
            pretrain: self.pretrain(),
        };
        std::fs::write(dir.join(TRAINED_FROM_FILE), serde_json::to_string_pretty(&record)?)?;
        let b = parts.branches;
        let f = |k: &str| metrics.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        Ok(TrainReport {
            summary: format!(
                "recommender ({params} parameters; text {}, emotions {}, global {}, reweighted {}): {} train / {} valid / {} test \
                 examples (data {data_s:.0} s, text {text_s:.0} s, fit {:.0} s, best epoch {}); test R@10 {:.4}, RT@10 {:.4}, \
                 AUC {:.4}, new-items R@10 {:.4}; checkpoint {}",
                b.text,
                b.emotions,
                b.global,
                data.reweighted,
                data.train.examples.len(),
                data.valid.examples.len(),
                data.test.examples.len(),
                fit_report.seconds,
                fit_report.best_epoch,
                f("recall@10"),
                f("recall_true@10"),
                f("auc"),
                f("new_items.recall@10"),
                dir.display()
            ),
            metrics,
        })
    }

    fn evaluate(&self, cx: &TrainContext<'_>) -> Result<EvalReport, BoxError> {
        let mut parts = RecommenderParts::of(self.config.clone(), &self.ctx)?;
        let data = self.data(cx, &parts, false)?;
        let text = Self::text_table(&mut parts, &[&data.split(cx.options.split).turns], cx.options.progress)?;
        let vm = VarMap::new();
        let model = self.model(&parts, &vm, 0)?;
        let dir = self.dir_for(cx.options.seed);
        checkpoint::load(&dir, &vm, &self.expected(&parts)?, &parts.device)?;
        let mut metrics = Self::split_metrics(&model, &data, cx.options.split, &text, &parts.kg, &dir)?;
        metrics["seed"] = cx.options.seed.unwrap_or(self.config.train.seed).into();
        Ok(EvalReport { text: metrics_table(&metrics), metrics })
    }
}
