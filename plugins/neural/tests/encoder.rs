//! The MiniLM encoder against the reference embedding, and padding invariance.

mod common;

use ecr_neural::text::{EncoderOptions, TextEncoder};
use ecr_neural::{EmbeddingCache, embed_cached};

const REFERENCE_TEXT: &str = "I loved this movie, it made me so happy!";
/// MODELS.md: the reference embedding starts with these values.
const REFERENCE_START: [f32; 5] = [-0.0932, 0.0617, -0.0241, 0.0247, -0.0037];

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn reference_embedding_matches_models_md() {
    let enc = TextEncoder::load(&common::minilm_dir()).expect("load MiniLM");
    assert_eq!(enc.dim(), 384);
    let v = &enc.embed(&[REFERENCE_TEXT]).expect("embed")[0];
    assert_eq!(v.len(), 384);
    assert!(max_abs_diff(&v[..5], &REFERENCE_START) < 1e-3, "got {:?}", &v[..5]);
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
}

#[test]
fn padding_does_not_change_embeddings() {
    let dir = common::minilm_dir();
    let texts = [
        "Hi",
        REFERENCE_TEXT,
        "Have you seen anything with Tom Hanks? I really enjoyed Cast Away (2000) and Big (1988), they were both great.",
    ];
    let alone: Vec<Vec<f32>> =
        texts.iter().map(|t| TextEncoder::load(&dir).and_then(|e| e.embed(&[*t])).expect("embed")[0].clone()).collect();
    // Batched together: the short texts get padded to the longest.
    let batched = TextEncoder::load(&dir).expect("load").embed_batch(&texts).expect("embed").to_vec2::<f32>().unwrap();
    // The shipped tokenizer's fixed padding to 128 tokens.
    let fixed = TextEncoder::load_with(&dir, EncoderOptions { pad_to: Some(128), ..Default::default() })
        .expect("load")
        .embed(&texts)
        .expect("embed");
    for i in 0..texts.len() {
        assert!(max_abs_diff(&alone[i], &batched[i]) < 1e-5, "text {i}: batch padding changed the embedding");
        assert!(max_abs_diff(&alone[i], &fixed[i]) < 1e-5, "text {i}: fixed padding changed the embedding");
    }
    // And different texts do embed differently.
    assert!(max_abs_diff(&alone[0], &alone[1]) > 1e-2);
}

#[test]
fn cached_embeddings_equal_fresh_ones_and_are_reused() {
    let enc = TextEncoder::load(&common::minilm_dir()).expect("load MiniLM");
    let dir = common::tmp_dir("embcache");
    let texts = ["thanks a lot", "I hated it", "thanks a lot"];
    let fresh = enc.embed(&texts).unwrap();
    let mut cache = EmbeddingCache::open(&dir, enc.id(), enc.dim()).unwrap();
    let first = embed_cached(&enc, Some(&mut cache), &texts, false).unwrap();
    assert_eq!(cache.len(), 2, "duplicates are embedded once");
    drop(cache);
    let mut cache = EmbeddingCache::open(&dir, enc.id(), enc.dim()).unwrap();
    assert_eq!(cache.len(), 2, "the cache persists on disk");
    let second = embed_cached(&enc, Some(&mut cache), &texts, false).unwrap();
    for i in 0..texts.len() {
        assert!(max_abs_diff(&fresh[i], &first[i]) < 1e-6);
        assert_eq!(first[i], second[i]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn trainable_bert_matches_the_inference_model() {
    let enc = TextEncoder::load(&common::minilm_dir()).expect("load MiniLM");
    let (layers, heads, eps) = enc.architecture();
    let bert =
        ecr_neural::bert::TrainableBert::load(enc.weights_path(), layers, heads, eps, enc.device()).expect("load");
    let texts = ["Hi", REFERENCE_TEXT, "Have you seen anything with Tom Hanks? I liked Big (1988)."];
    let (ids, mask) = enc.tokenize(&texts).unwrap();
    let ours = ecr_neural::text::mean_pool_normalize(&bert.forward(&ids, &mask).unwrap(), &mask)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let reference = enc.embed(&texts).unwrap();
    for i in 0..texts.len() {
        assert!(max_abs_diff(&ours[i], &reference[i]) < 1e-4, "text {i}");
    }
}
