//! LoRA adapters on the real SmolLM2-135M-Instruct GGUF (run `models/fetch.sh` first): a fresh
//! adapter changes nothing, merging equals applying, the fast decoder's merged weights agree with
//! the f32 model, a few training steps lower the loss, and a file for another base or shape is
//! refused.

use candle_core::{Tensor, Var};
use ecr_llm::dense::{DenseLlama, LossTerms};
use ecr_llm::gguf::GgufFile;
use ecr_llm::lora::{Adapter, BaseModel, LoraConfig, SplitMix, Target};
use ecr_llm::{Llm, LlmTokenizer, LoadOptions};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

fn gguf() -> &'static GgufFile {
    static G: OnceLock<GgufFile> = OnceLock::new();
    G.get_or_init(|| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(p.is_file(), "{} is missing: run models/fetch.sh", p.display());
        GgufFile::open(p).expect("open the GGUF")
    })
}

fn base() -> &'static BaseModel {
    static B: OnceLock<BaseModel> = OnceLock::new();
    B.get_or_init(|| BaseModel::of(gguf()).expect("base identity"))
}

fn dense() -> &'static DenseLlama {
    static D: OnceLock<DenseLlama> = OnceLock::new();
    D.get_or_init(|| DenseLlama::from_gguf(gguf(), 256).expect("dequantise"))
}

fn tokens(text: &str) -> Vec<u32> {
    static T: OnceLock<LlmTokenizer> = OnceLock::new();
    T.get_or_init(|| LlmTokenizer::from_gguf(gguf()).expect("tokenizer")).encode(text).expect("encode")
}

const TEXT: &str = "<|im_start|>user\nRecommend a film.<|im_end|>\n<|im_start|>assistant\nI think you would love Jaws (1975). It is a thrilling ride";

/// An adapter with random (non-zero) `B`, so that it changes the model.
fn random_adapter(config: &LoraConfig, seed: u64, scale: f32) -> (Adapter, Vec<(String, Var)>) {
    let (adapter, vars) = Adapter::init(config, base(), seed).expect("init");
    let mut rng = SplitMix::new(seed + 1);
    for (name, v) in &vars {
        if name.ends_with("lora_b") {
            let n = v.elem_count();
            let r: Vec<f32> = (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect();
            v.set(&Tensor::from_vec(r, v.shape(), v.device()).unwrap()).unwrap();
        }
    }
    (adapter, vars)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn last_logits(m: &DenseLlama, ids: &[u32], adapter: Option<&Adapter>) -> Tensor {
    let h = m.hidden(ids, adapter, None).expect("forward");
    m.logits_at(&h, &[ids.len() as u32 - 1]).unwrap().squeeze(0).unwrap()
}

#[test]
fn a_fresh_adapter_equals_the_base_model() {
    let ids = tokens(TEXT);
    let (adapter, _) = Adapter::init(&LoraConfig::default(), base(), 7).unwrap();
    assert!(adapter.params() > 0);
    let (with, without) = (last_logits(dense(), &ids, Some(&adapter)), last_logits(dense(), &ids, None));
    assert_eq!(max_abs_diff(&with, &without), 0.0, "B = 0: the adapter must add exactly nothing");
}

#[test]
fn merged_and_applied_adapters_give_the_same_logits() {
    let ids = tokens(TEXT);
    let (adapter, _) = random_adapter(&LoraConfig::default(), 11, 0.05);
    let applied = last_logits(dense(), &ids, Some(&adapter));
    let base_logits = last_logits(dense(), &ids, None);
    // The adapter must matter, or the comparison says nothing.
    assert!(max_abs_diff(&applied, &base_logits) > 0.5, "the random adapter barely changes the logits");
    let mut merged = DenseLlama::from_gguf(gguf(), 256).unwrap();
    merged.merge(&adapter).unwrap();
    let m = last_logits(&merged, &ids, None);
    // f32 sums in another order: a few 1e-4 on logits of magnitude ~20.
    let d = max_abs_diff(&m, &applied);
    assert!(d < 2e-3, "merged vs applied logits differ by {d}");
}

/// The fast decoder applies the adapter beside its Q4_1 weights and runs on 8-bit activations:
/// its logits differ from the f32 model's, but with an adapter by no more than without one.
#[test]
fn the_fast_decoder_applies_the_adapter_as_the_f32_model_does() {
    let ids = tokens(TEXT);
    let (adapter, _) = random_adapter(&LoraConfig::default(), 13, 0.05);
    let tok = Arc::new(LlmTokenizer::from_gguf(gguf()).unwrap());
    let opts = LoadOptions::default();
    let fast_base = Llm::from_gguf(gguf(), tok.clone(), &opts).unwrap();
    let fast_merged = Llm::from_gguf_with(gguf(), tok, &opts, Some(&adapter)).unwrap();
    let run = |m: &Llm| {
        let logits = m.session().forward(&ids).unwrap();
        Tensor::from_vec(logits, m.config().vocab, &candle_core::Device::Cpu).unwrap()
    };
    let (fb, fm) = (run(&fast_base), run(&fast_merged));
    let (db, dm) = (last_logits(dense(), &ids, None), last_logits(dense(), &ids, Some(&adapter)));
    let (err_base, err_merged) = (max_abs_diff(&fb, &db), max_abs_diff(&fm, &dm));
    let shift = max_abs_diff(&dm, &db);
    assert!(shift > 0.5, "the adapter must change the logits ({shift})");
    // Without this margin a merge that dropped the update would pass: it would be `shift` off.
    assert!(
        err_merged < err_base * 1.5 + 0.25 && err_merged < shift,
        "fast merged vs f32 applied: {err_merged}; fast base vs f32 base: {err_base}; adapter shift {shift}"
    );
    let argmax = |t: &Tensor| t.argmax(0).unwrap().to_scalar::<u32>().unwrap();
    assert_eq!(argmax(&fm), argmax(&dm), "the merged decoder picks another next token");
}

#[test]
fn a_few_steps_lower_the_loss() {
    let ids = tokens(TEXT);
    let from = tokens("<|im_start|>user\nRecommend a film.<|im_end|>\n<|im_start|>assistant\n").len();
    let config = LoraConfig { rank: 4, dropout: 0.0, targets: vec![Target::Q, Target::V], ..Default::default() };
    let (adapter, vars) = Adapter::init(&config, base(), 3).unwrap();
    let loss = |a: &Adapter| dense().target_loss(&ids, from, Some(a), None).unwrap();
    let first = loss(&adapter).to_scalar::<f32>().unwrap();
    for _ in 0..4 {
        let l = loss(&adapter);
        let grads = l.backward().unwrap();
        for (_, v) in &vars {
            let g = grads.get(v.as_tensor()).expect("every adapter tensor gets a gradient");
            v.set(&(v.as_tensor() - (g * 0.02).unwrap()).unwrap()).unwrap();
        }
    }
    let last = loss(&adapter).to_scalar::<f32>().unwrap();
    assert!(last < first * 0.9, "loss {first} → {last} after 4 SGD steps");
}

#[test]
fn an_adapter_for_another_base_or_shape_is_refused() {
    let dir = std::env::temp_dir().join(format!("ecr-lora-test-{}", std::process::id()));
    let path = dir.join("adapter.safetensors");
    let config = LoraConfig { rank: 2, targets: vec![Target::Q], ..Default::default() };
    let (adapter, _) = Adapter::init(&config, base(), 5).unwrap();
    adapter.save(&path, &serde_json::json!({"steps": 0})).unwrap();
    // Round trip.
    let back = Adapter::load(&path, base(), Some(&config)).unwrap();
    assert_eq!(back.params(), adapter.params());
    assert_eq!(Adapter::read_info(&path).unwrap()["steps"], 0);
    // Another rank in the recipe.
    let other = LoraConfig { rank: 4, ..config.clone() };
    let e = Adapter::load(&path, base(), Some(&other)).unwrap_err().to_string();
    assert!(e.contains("rank 2") && e.contains("rank 4") && e.contains("retrain"), "{e}");
    // Another base file (same shape, other bytes).
    let mut foreign = base().clone();
    foreign.sha256 = "0".repeat(64);
    foreign.file = "other.gguf".into();
    let e = Adapter::load(&path, &foreign, None).unwrap_err().to_string();
    assert!(e.contains("another base model") && e.contains("other.gguf"), "{e}");
    // Another shape.
    let mut wide = base().clone();
    wide.config.d_model *= 2;
    let e = Adapter::load(&path, &wide, None).unwrap_err().to_string();
    assert!(e.contains("another model shape"), "{e}");
    // Not an adapter.
    std::fs::write(&path, b"not safetensors").unwrap();
    let e = Adapter::load(&path, base(), None).unwrap_err().to_string();
    assert!(e.contains("not a safetensors adapter"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Training the top layers from the fast decoder's residual stream scores a sequence as the
/// whole f32 model does, within the decoder's activation-quantization error.
#[test]
fn the_top_layers_from_the_fast_decoders_residual_match_the_whole_model() {
    let ids = tokens(TEXT);
    let from = ids.len() - 8;
    let config = LoraConfig { layers: 6, ..Default::default() };
    let (adapter, _) = random_adapter(&config, 17, 0.05);
    let tok = Arc::new(LlmTokenizer::from_gguf(gguf()).unwrap());
    let fast = Llm::from_gguf(gguf(), tok, &LoadOptions::default()).unwrap();
    let top = DenseLlama::top_layers(gguf(), 256, 24).unwrap();
    let first = config.first_layer(30);
    assert_eq!(first, 24);
    let residual = fast.residual_before(&ids[..ids.len() - 1], first).unwrap();
    let residual = Tensor::from_vec(residual, (ids.len() - 1, 576), &candle_core::Device::Cpu).unwrap();
    let split = top
        .target_loss_from(residual.clone(), &ids, from, Some(&adapter), None, LossTerms::default())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // The unlikelihood term adds a positive, finite cost: the target's earlier tokens have some
    // probability at its later positions.
    let with_ul = top
        .target_loss_from(
            residual.clone(),
            &ids,
            from,
            Some(&adapter),
            None,
            LossTerms { unlikelihood: 1.0, ..Default::default() },
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(with_ul.is_finite() && with_ul > split + 1e-4, "unlikelihood {with_ul} vs cross-entropy {split}");
    // Token weights: all 1 is the plain cross-entropy; the last token alone weighed (8 times, so
    // that the weights still average 1) is that token's loss; a weight list of the wrong length is
    // refused.
    let weighted = |w: &[f32]| {
        top.target_loss_from(
            residual.clone(),
            &ids,
            from,
            Some(&adapter),
            None,
            LossTerms { weights: Some(w), ..Default::default() },
        )
    };
    let ones = weighted(&[1.0; 8]).unwrap().to_scalar::<f32>().unwrap();
    assert!((ones - split).abs() < 1e-5, "weights of 1: {ones} vs {split}");
    let last = weighted(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 8.0]).unwrap().to_scalar::<f32>().unwrap();
    let last_alone = top
        .target_loss_from(residual.clone(), &ids, ids.len() - 1, Some(&adapter), None, LossTerms::default())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((last - last_alone).abs() < 1e-4, "the last token's weighted loss {last} vs its own {last_alone}");
    assert!(weighted(&[1.0; 7]).is_err(), "7 weights for 8 target tokens");
    let whole = dense().target_loss(&ids, from, Some(&adapter), None).unwrap().to_scalar::<f32>().unwrap();
    let base = dense().target_loss(&ids, from, None, None).unwrap().to_scalar::<f32>().unwrap();
    assert!((split - whole).abs() < 0.05 * whole.abs().max(1.0), "split {split} vs whole {whole}");
    assert!((whole - base).abs() > 0.01, "the adapter must change the loss ({base} → {whole})");
}

#[test]
#[ignore]
fn probe_step_time() {
    let text = TEXT.repeat(12);
    let ids: Vec<u32> = tokens(&text).into_iter().take(250).collect();
    for layers in [30usize, 10, 6] {
        let config = LoraConfig { layers, ..Default::default() };
        let (adapter, _) = Adapter::init(&config, base(), 3).unwrap();
        let first = config.first_layer(30);
        let top = DenseLlama::top_layers(gguf(), 256, first).unwrap();
        let tok = Arc::new(LlmTokenizer::from_gguf(gguf()).unwrap());
        let fast = Llm::from_gguf(gguf(), tok, &LoadOptions::default()).unwrap();
        for i in 0..2 {
            let t = std::time::Instant::now();
            let r = fast.residual_before(&ids[..ids.len() - 1], first).unwrap();
            let t0 = t.elapsed();
            let r = Tensor::from_vec(r, (ids.len() - 1, 576), &candle_core::Device::Cpu).unwrap();
            let l = top.target_loss_from(r, &ids, 160, Some(&adapter), None, LossTerms::default()).unwrap();
            let t1 = t.elapsed();
            let _ = l.backward().unwrap();
            eprintln!("layers {layers} step {i}: residual {t0:?} fwd {t1:?} total {:?}", t.elapsed());
        }
    }
}

/// Generation speed with and without an adapter, side by side (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn probe_generation_speed() {
    let tok = Arc::new(LlmTokenizer::from_gguf(gguf()).unwrap());
    let opts = LoadOptions::default();
    let base_llm = Llm::from_gguf(gguf(), tok.clone(), &opts).unwrap();
    let config = LoraConfig { layers: 8, ..Default::default() };
    let (adapter, _) = random_adapter(&config, 19, 0.05);
    let with = Llm::from_gguf_with(gguf(), tok, &opts, Some(&adapter)).unwrap();
    let params = ecr_llm::GenerateParams { max_new_tokens: 64, min_new_tokens: 64, ..Default::default() };
    let prompt = TEXT.repeat(4);
    for round in 0..3 {
        for (name, m) in [("base", &base_llm), ("adapter", &with)] {
            let t = std::time::Instant::now();
            let out = m.generate(&prompt, &params, |_| std::ops::ControlFlow::Continue(())).unwrap();
            eprintln!(
                "round {round} {name}: {} tokens in {:?} (first token {:.0} ms)",
                out.tokens.len(),
                t.elapsed(),
                out.timings.first_token_ms
            );
        }
    }
}
