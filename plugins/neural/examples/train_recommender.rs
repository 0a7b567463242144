//! Development driver: train and evaluate the recommender on ReDial with
//! chosen branches, through the same functions the stages call.
//!
//! cargo run --release -p ecr-neural --example train_recommender -- LABELS_FILE [text,emotions,global,reweight] [seed] [epochs]

use candle_core::Device;
use candle_nn::VarMap;
use ecr_data::feedback::{FeedbackMappingConfig, FeedbackMappingStage};
use ecr_data::global_emotion::{GlobalEmotionStage, TrainingData};
use ecr_data::local_emotion::{LocalEmotionConfig, LocalEmotionStage};
use ecr_engine::{BoxError, Stage, Turn};
use ecr_neural::fit::{FitConfig, Params, fit, param_count};
use ecr_neural::recommend::metrics::{Outcome, popularity_scores, repeat_scores, report};
use ecr_neural::recommend::model::Recommender;
use ecr_neural::recommend::train::{RecObjective, TextTable, evaluate, examples_of};
use ecr_neural::recommend::{Branches, ModelConfig};
use ecr_neural::{EmbeddingCache, TextEncoder};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let labels = Path::new(&args[1]);
    let spec = args.get(2).map_or("text,emotions,global,reweight", String::as_str);
    let seed: u64 = args.get(3).map_or(Ok(42), |s| s.parse())?;
    let epochs: usize = args.get(4).map_or(Ok(5), |s| s.parse())?;
    let has = |k: &str| spec.split(',').any(|x| x == k);
    let branches =
        Branches { text: has("text"), emotions: has("emotions"), global: has("global"), reweight: has("reweight") };
    let t0 = Instant::now();
    let dir = ecr_data::data_dir()?;
    let data = Arc::new(TrainingData::load(&dir, labels, 0.1)?);
    let local = LocalEmotionStage::new(LocalEmotionConfig::default());
    let global = GlobalEmotionStage::new(data.clone(), 32);
    let fb = FeedbackMappingStage(FeedbackMappingConfig::default());
    let upstream = |t: &mut Turn| -> Result<(), BoxError> {
        if branches.emotions {
            local.run(t)?;
        }
        if branches.global {
            global.run(t)?;
        }
        fb.run(t)
    };
    let kg = &data.resources.kg;
    let mut items: Vec<u32> = kg.items.iter().copied().collect();
    items.sort_unstable();
    let index: std::collections::HashMap<u32, usize> = items.iter().enumerate().map(|(i, &e)| (e, i)).collect();
    let cfg = ModelConfig::default();
    let p = &data.prepared;
    let train = examples_of(&p.train, &index, branches, &cfg, &upstream)?;
    let valid = examples_of(&p.valid, &index, branches, &cfg, &upstream)?;
    let test = examples_of(&p.test, &index, branches, &cfg, &upstream)?;
    eprintln!(
        "examples: train {} valid {} test {} ({:.1} s)",
        train.examples.len(),
        valid.examples.len(),
        test.examples.len(),
        t0.elapsed().as_secs_f64()
    );
    let device = Device::Cpu;
    let encoder = TextEncoder::load(Path::new("models/all-MiniLM-L6-v2"))?;
    let mut cache = EmbeddingCache::for_encoder(Path::new(".cache/embeddings"), &encoder)?;
    let t1 = Instant::now();
    let text = TextTable::build(&encoder, Some(&mut cache), &[&train, &valid, &test], &device, true)?;
    eprintln!("text table {} utterances ({:.1} s)", text.rows.len(), t1.elapsed().as_secs_f64());

    // Baselines.
    let pop = popularity_scores(items.len(), train.examples.iter().map(|x| x.gold));
    let base = |f: &dyn Fn(&[usize]) -> Vec<f32>| -> Vec<Outcome> {
        test.examples
            .iter()
            .map(|x| {
                let m: Vec<usize> = test.turns[x.turn].mentioned.iter().filter_map(|e| index.get(e).copied()).collect();
                Outcome::of(&f(&m), x.gold, &m, x.feedback)
            })
            .collect()
    };
    let show = |name: &str, m: &std::collections::BTreeMap<String, f64>| {
        eprintln!(
            "{name:>12}: R@1 {:.4} R@10 {:.4} R@50 {:.4} RT@10 {:.4} RT@50 {:.4} AUC {:.4} AUCg {:.4} | new R@1 {:.4} R@10 {:.4} R@50 {:.4}",
            m["recall@1"],
            m["recall@10"],
            m["recall@50"],
            m["recall_true@10"],
            m["recall_true@50"],
            m["auc"],
            m["auc_global"],
            m["new_items.recall@1"],
            m["new_items.recall@10"],
            m["new_items.recall@50"]
        )
    };
    show("popularity", &report(&base(&|_| pop.clone())));
    show("repeat", &report(&base(&|m| repeat_scores(&pop, m))));

    let vm = VarMap::new();
    let mut params = Params::new(&vm, &device, seed);
    let model = Recommender::new(&mut params, kg, &items, cfg, branches, encoder.dim())?;
    eprintln!("model {spec}: {} parameters", param_count(&vm));
    let fc = FitConfig { epochs, batch_size: 64, lr: 1e-3, weight_decay: 0.01, warmup: 0.05, seed };
    let mut obj = RecObjective {
        model: &model,
        train: &train,
        valid: &valid,
        text: &text,
        device: device.clone(),
        history: vec![],
    };
    let r = fit(&vm, &mut obj, &fc, "recommender", true)?;
    eprintln!("{}", r.summary("recommender"));
    let m = report(&evaluate(&model, &test, &text)?);
    show(spec, &m);
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}
