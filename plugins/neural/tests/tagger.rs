//! The emotion tagger: a small real training run (a few hundred annotations,
//! a few epochs), its output, checkpoint round trip and corruption errors, and
//! the `emotion_tagger` stage on a turn.

mod common;

use ecr_engine::{BuildContext, Emotion, Role, StageFactory, Turn, Utterance};
use ecr_neural::tagger::{META_FILE, WEIGHTS_FILE};
use ecr_neural::train::{TrainConfig, input_of, train_tagger};
use ecr_neural::{EmbeddingCache, EmotionTagger, EmotionTaggerConfig, EmotionTaggerFactory, TaggerInput, TextEncoder};
use std::path::Path;
use std::sync::{Arc, OnceLock};

fn encoder() -> Arc<TextEncoder> {
    static ENC: OnceLock<Arc<TextEncoder>> = OnceLock::new();
    Arc::clone(ENC.get_or_init(|| Arc::new(TextEncoder::load(&common::minilm_dir()).expect("load MiniLM"))))
}

/// A tagger trained on the first 300 training annotations for 5 epochs, saved in `dir`.
fn small_tagger(dir: &Path) -> EmotionTagger {
    let data = ecr_data::data_dir().expect("data directory");
    let ann = ecr_data::load_annotations(&data.join("emotion/annotations_train.jsonl")).expect("annotations");
    let enc = encoder();
    let mut cache = EmbeddingCache::open(&dir.join("cache"), enc.id(), enc.dim()).unwrap();
    let cfg = TrainConfig { limit: Some(300), epochs: 5, hidden: 64, ..Default::default() };
    let (mut tagger, report) = train_tagger(enc, Some(&mut cache), &ann, &cfg, false).expect("train");
    assert_eq!(report.n_train + report.n_holdout, 300);
    assert!(report.n_holdout > 0 && report.n_train > report.n_holdout);
    // Training lowers the training loss.
    assert!(report.curve.last().unwrap().0 < report.curve[0].0, "{:?}", report.curve);
    tagger.save(&dir.join("ckpt")).expect("save");
    tagger
}

fn inputs() -> Vec<TaggerInput> {
    vec![
        TaggerInput { utterance: "Thank you so much, bye!".into(), context: vec!["RECOMMENDER: Enjoy!".into()] },
        TaggerInput { utterance: "I love horror movies".into(), context: vec![] },
        TaggerInput {
            utterance: "Have you seen anything with Tom Hanks?".into(),
            context: vec!["SEEKER: Hi".into(), "RECOMMENDER: Hello, what do you like?".into()],
        },
    ]
}

#[test]
fn trained_tagger_gives_nine_label_distributions_and_reloads_identically() {
    let dir = common::tmp_dir("tagger-roundtrip");
    let tagger = small_tagger(&dir);
    let out = tagger.predict(&inputs(), None).unwrap();
    assert_eq!(out.len(), 3);
    for d in &out {
        assert_eq!(d.0.len(), Emotion::COUNT);
        assert!(d.0.iter().all(|p| p.is_finite() && *p >= 0.0));
        assert!((d.total() - 1.0).abs() < 1e-5, "sums to {}", d.total());
    }
    // Even after 5 epochs on 270 examples, thanks reads as grateful.
    assert_eq!(out[0].top(), Emotion::Grateful, "{:?}", out[0]);
    let back = EmotionTagger::load(&dir.join("ckpt"), encoder()).expect("reload");
    assert_eq!(back.predict(&inputs(), None).unwrap(), out, "a reloaded tagger must give identical outputs");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupted_or_missing_checkpoints_fail_with_the_file_named() {
    let dir = common::tmp_dir("tagger-corrupt");
    small_tagger(&dir);
    let ckpt = dir.join("ckpt");
    let load_err = || EmotionTagger::load(&ckpt, encoder()).err().map(|e| e.to_string()).unwrap_or_default();
    let weights = ckpt.join(WEIGHTS_FILE);
    let good = std::fs::read(&weights).unwrap();

    // One flipped byte in the tensor data: still a valid safetensors file, caught by the checksum.
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    std::fs::write(&weights, &bad).unwrap();
    let e = load_err();
    assert!(e.contains(WEIGHTS_FILE) && e.contains("corrupted"), "{e}");

    // Truncated file.
    std::fs::write(&weights, &good[..good.len() / 2]).unwrap();
    let e = load_err();
    assert!(e.contains(WEIGHTS_FILE) && e.contains("corrupted"), "{e}");

    // Garbage description.
    std::fs::write(&weights, &good).unwrap();
    let meta = ckpt.join(META_FILE);
    let good_meta = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, "{not json").unwrap();
    let e = load_err();
    assert!(e.contains(META_FILE) && e.contains("retrain"), "{e}");

    // Another encoder.
    std::fs::write(&meta, good_meta.replace(encoder().weights_sha256(), &"0".repeat(64))).unwrap();
    let e = load_err();
    assert!(e.contains(META_FILE) && e.contains("encoder"), "{e}");

    // Missing checkpoint.
    std::fs::remove_file(&meta).unwrap();
    let e = load_err();
    assert!(e.contains(META_FILE) && e.contains("ecr train"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stage_tags_the_user_turn_with_the_thresholded_distribution() {
    let dir = common::tmp_dir("tagger-stage");
    small_tagger(&dir);
    let config = EmotionTaggerConfig {
        model_dir: common::minilm_dir().display().to_string(),
        checkpoint: dir.join("ckpt").display().to_string(),
        ..Default::default()
    };
    let ctx = BuildContext::new(dir.join("recipe.toml"), "emotion");
    assert!(EmotionTaggerFactory.check(&config, &ctx).is_empty());
    let stage = EmotionTaggerFactory.build(config.clone(), &ctx).expect("build the stage");
    let mut turn = Turn::new(vec![Utterance::new(Role::Recommender, "Here you go, enjoy!")], "Thanks a lot!");
    stage.run(&mut turn).expect("run");
    let d = turn.user.emotions.expect("the stage writes user.emotions");
    assert_eq!(d.top(), Emotion::Grateful);
    assert!(d.0.iter().all(|&p| p == 0.0 || p > config.threshold), "labels at or below the threshold are dropped");

    // A missing model directory is a config issue naming the key and the fix.
    let bad = EmotionTaggerConfig { model_dir: "/nonexistent".into(), ..config };
    let issues = EmotionTaggerFactory.check(&bad, &ctx);
    assert!(issues.iter().any(|i| i.key == "model_dir" && i.message.contains("models/fetch.sh")), "{issues:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn annotations_become_tagger_inputs_with_context() {
    let data = ecr_data::data_dir().expect("data directory");
    let ann = ecr_data::load_annotations(&data.join("emotion/annotations_test.jsonl")).expect("annotations");
    let i = input_of(&ann[0]);
    assert_eq!(i.utterance, ann[0].utterance);
    assert_eq!(i.context, ann[0].context);
}
