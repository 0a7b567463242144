//! The emotion tagger: small real training runs (300 annotations, a few
//! epochs), its output, checkpoint round trips and corruption errors, and the
//! `emotion_tagger` stage on a turn.

mod common;

use ecr_engine::{BuildContext, Emotion, EmotionDist, Role, StageFactory, Turn, Utterance};
use ecr_neural::tagger::{ENCODER_FILE, META_FILE, WEIGHTS_FILE};
use ecr_neural::train::{TrainConfig, input_of, train_tagger};
use ecr_neural::{EmbeddingCache, EmotionTagger, EmotionTaggerConfig, EmotionTaggerFactory, TaggerInput, TextEncoder};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

fn encoder() -> Arc<TextEncoder> {
    static ENC: OnceLock<Arc<TextEncoder>> = OnceLock::new();
    Arc::clone(ENC.get_or_init(|| Arc::new(TextEncoder::load(&common::minilm_dir()).expect("load MiniLM"))))
}

/// Train on the first 300 training annotations (2 epochs fine-tuning MiniLM,
/// or 5 epochs of a head on frozen embeddings) and save to `dir/ckpt`.
fn small_tagger(dir: &Path, finetune: bool) -> EmotionTagger {
    let data = ecr_data::data_dir().expect("data directory");
    let ann = ecr_data::load_annotations(&data.join("emotion/annotations_train.jsonl")).expect("annotations");
    let enc = encoder();
    let mut cache = EmbeddingCache::open(&dir.join("cache"), enc.id(), enc.dim()).unwrap();
    let epochs = Some(if finetune { 2 } else { 5 });
    let cfg = TrainConfig { limit: Some(300), finetune, epochs, hidden: 64, ..Default::default() };
    let (tagger, report) = train_tagger(enc, Some(&mut cache), &ann, &cfg, &dir.join("ckpt"), false).expect("train");
    assert_eq!(report.n_train + report.n_holdout, 300);
    assert!(report.n_holdout > 0 && report.n_train > report.n_holdout);
    // Training lowers the training loss.
    assert!(report.curve.last().unwrap().0 < report.curve[0].0, "{:?}", report.curve);
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

/// The fine-tuned checkpoint shared by the tests (trained once), with the
/// outputs the freshly trained tagger gave on [`inputs`].
fn finetuned() -> &'static (PathBuf, Vec<EmotionDist>) {
    static FT: OnceLock<(PathBuf, Vec<EmotionDist>)> = OnceLock::new();
    FT.get_or_init(|| {
        let dir = common::tmp_dir("tagger-finetuned");
        let tagger = small_tagger(&dir, true);
        let out = tagger.predict(&inputs(), None).unwrap();
        (dir.join("ckpt"), out)
    })
}

fn check_distributions(out: &[EmotionDist]) {
    assert_eq!(out.len(), 3);
    for d in out {
        assert_eq!(d.0.len(), Emotion::COUNT);
        assert!(d.0.iter().all(|p| p.is_finite() && *p >= 0.0));
        assert!((d.total() - 1.0).abs() < 1e-5, "sums to {}", d.total());
    }
}

#[test]
fn finetuned_tagger_gives_nine_label_distributions_and_reloads_identically() {
    let (ckpt, trained) = finetuned();
    check_distributions(trained);
    assert!(ckpt.join(ENCODER_FILE).is_file(), "the fine-tuned encoder is part of the checkpoint");
    let back = EmotionTagger::load(ckpt, encoder()).expect("reload");
    assert_eq!(&back.predict(&inputs(), None).unwrap(), trained, "a reloaded tagger must give identical outputs");
    // Two epochs on 270 messages, the head's learning rate decaying to 0 (the fit toolkit's
    // schedule): the thank-you is grateful within the top two labels (the Recall@2 criterion).
    let top2: Vec<Emotion> = trained[0].ranked().iter().take(2).map(|(e, _)| *e).collect();
    assert!(top2.contains(&Emotion::Grateful), "{:?}", trained[0]);
}

#[test]
fn frozen_head_tagger_gives_distributions_and_reloads_identically() {
    let dir = common::tmp_dir("tagger-frozen");
    let tagger = small_tagger(&dir, false);
    let out = tagger.predict(&inputs(), None).unwrap();
    check_distributions(&out);
    assert_eq!(out[0].top(), Emotion::Grateful, "{:?}", out[0]);
    let back = EmotionTagger::load(&dir.join("ckpt"), encoder()).expect("reload");
    assert_eq!(back.predict(&inputs(), None).unwrap(), out);
    let _ = std::fs::remove_dir_all(&dir);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn flip_last_byte(path: &Path) -> Vec<u8> {
    let good = std::fs::read(path).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    std::fs::write(path, &bad).unwrap();
    good
}

#[test]
fn corrupted_or_missing_checkpoints_fail_with_the_file_named() {
    let dir = common::tmp_dir("tagger-corrupt");
    let ckpt = dir.join("ckpt");
    copy_dir(&finetuned().0, &ckpt);
    let load_err = || EmotionTagger::load(&ckpt, encoder()).err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(load_err(), "", "the copy loads");

    // One flipped byte in the head's tensor data: still valid safetensors, caught by the checksum.
    let weights = ckpt.join(WEIGHTS_FILE);
    let good = flip_last_byte(&weights);
    let e = load_err();
    assert!(e.contains(WEIGHTS_FILE) && e.contains("corrupted"), "{e}");

    // Truncated head.
    std::fs::write(&weights, &good[..good.len() / 2]).unwrap();
    let e = load_err();
    assert!(e.contains(WEIGHTS_FILE) && e.contains("corrupted"), "{e}");
    std::fs::write(&weights, &good).unwrap();

    // One flipped byte in the fine-tuned encoder.
    let enc = ckpt.join(ENCODER_FILE);
    let good_enc = flip_last_byte(&enc);
    let e = load_err();
    assert!(e.contains(ENCODER_FILE) && e.contains("corrupted"), "{e}");
    std::fs::write(&enc, &good_enc).unwrap();

    // Garbage description.
    let meta = ckpt.join(META_FILE);
    let good_meta = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, "{not json").unwrap();
    let e = load_err();
    assert!(e.contains(META_FILE) && e.contains("retrain"), "{e}");

    // Trained on another base encoder.
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
    let (ckpt, _) = finetuned();
    let dir = common::tmp_dir("tagger-stage");
    let config = EmotionTaggerConfig {
        model_dir: common::minilm_dir().display().to_string(),
        checkpoint: Some(ckpt.display().to_string()),
        ..Default::default()
    };
    let ctx = BuildContext::new(dir.join("recipe.toml"), "test", "emotion");
    assert!(EmotionTaggerFactory.check(&config, &ctx).is_empty());
    let stage = EmotionTaggerFactory.build(config.clone(), &ctx).expect("build the stage");
    let mut turn = Turn::new(vec![Utterance::new(Role::Recommender, "Here you go, enjoy!")], "Thanks a lot!");
    stage.run_detached(&mut turn).expect("run");
    let d = turn.user.emotions.expect("the stage writes user.emotions");
    assert_eq!(d.top(), Emotion::Grateful);
    assert!(
        d.0.iter().all(|&p| p == 0.0 || f64::from(p) > config.threshold),
        "labels at or below the threshold are dropped"
    );

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
