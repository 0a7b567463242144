//! Tests on the real SmolLM2-135M-Instruct GGUF (run `models/fetch.sh` first): the tokenizer
//! against reference ids, our decoder against candle's, determinism, and the generation rules.

use ecr_llm::gguf::GgufFile;
use ecr_llm::sampling::has_repeated_ngram;
use ecr_llm::{DecoderKind, GenerateParams, Llm, LlmTokenizer, LoadOptions, SamplingParams, StopReason};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

fn model_path() -> PathBuf {
    let p = std::env::var_os("ECR_LLM_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(p.is_file(), "{} is missing: run models/fetch.sh", p.display());
    p
}

fn gguf() -> &'static GgufFile {
    static G: OnceLock<GgufFile> = OnceLock::new();
    G.get_or_init(|| GgufFile::open(model_path()).expect("open the GGUF"))
}

fn tokenizer() -> Arc<LlmTokenizer> {
    static T: OnceLock<Arc<LlmTokenizer>> = OnceLock::new();
    T.get_or_init(|| Arc::new(LlmTokenizer::from_gguf(gguf()).expect("tokenizer"))).clone()
}

fn load(opts: LoadOptions) -> Llm {
    Llm::from_gguf(gguf(), tokenizer(), &opts).expect("load the model")
}

fn fast() -> &'static Llm {
    static M: OnceLock<Llm> = OnceLock::new();
    M.get_or_init(|| load(LoadOptions::default()))
}

fn candle() -> &'static Llm {
    static M: OnceLock<Llm> = OnceLock::new();
    M.get_or_init(|| load(LoadOptions { decoder: DecoderKind::Candle, ..Default::default() }))
}

fn chat(user: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a friendly movie recommender.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

fn greedy(n: usize) -> GenerateParams {
    GenerateParams { max_new_tokens: n, ..Default::default() }
}

// Reference ids: Hugging Face `tokenizers` 0.22 (Python) with a BPE built from the same GGUF's
// `tokenizer.ggml.tokens/merges` (read with the `gguf` package), the pre-tokenizer
// Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)] and
// the 17 control tokens added as special tokens; computed outside the repository.
const REFERENCE: &[(&str, &[u32])] = &[
    (
        "Hello, world! I loved Inception (2010) but the ending of Titanic made me sad.",
        &[
            19556, 28, 905, 17, 339, 5732, 533, 3296, 365, 34, 32, 33, 32, 25, 564, 260, 10808, 282, 32298, 1135, 549,
            8177, 30,
        ],
    ),
    (
        "<|im_start|>user\nRecommend me a movie like The Matrix 1999<|im_end|>\n<|im_start|>assistant\n",
        &[1, 4093, 198, 48617, 549, 253, 7704, 702, 378, 25343, 216, 33, 41, 41, 41, 2, 198, 1, 520, 9531, 198],
    ),
    (
        "Café naïve — 日本語 emoji 🎬 12345 tabs\tand  spaces",
        &[
            51, 1939, 2756, 15486, 46494, 1841, 17097, 241, 115, 40993, 179, 120, 248, 649, 33777, 15107, 232, 122,
            216, 33, 34, 35, 36, 37, 29416, 197, 397, 216, 5600,
        ],
    ),
];

#[test]
fn tokenizer_matches_reference_ids_and_round_trips() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49_152);
    for (text, ids) in REFERENCE {
        assert_eq!(tok.encode(text).unwrap(), *ids, "ids of {text:?}");
        assert_eq!(tok.decode(ids).unwrap(), *text, "decoding {text:?}");
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i).to_vec()).collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), *text, "token bytes of {text:?}");
    }
    assert_eq!(tok.encode("<|im_start|>").unwrap(), [1]);
    assert_eq!(tok.encode("<|im_end|>").unwrap(), [2]);
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert_eq!(tok.eos_id(), 2);
    assert!(tok.is_special(1) && !tok.is_special(19556));
}

/// The tolerance on logits. Both decoders compute the same integer dot products on activations
/// quantized to int8 the same way before each of the 211 matrix products; the float parts differ
/// in summation order (and FMA), which flips the rounding of a few activations and so spreads
/// through the layers: our own SIMD and scalar paths differ by up to ~0.7 (mean ~0.2) after a
/// 33-token prompt, and candle by similar amounts. So: the largest difference under 8% of the
/// largest |logit|, the mean difference under 1, and the same top token unless the reference's
/// own top two are within 0.5 (a near-tie that such rounding can flip).
fn assert_logits_close(a: &[f32], b: &[f32], what: &str) {
    let diffs = a.iter().zip(b).map(|(x, y)| (x - y).abs());
    let max = diffs.clone().fold(0f32, f32::max);
    let mean = diffs.sum::<f32>() / a.len() as f32;
    let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max);
    assert!(
        max < 0.08 * scale && mean < 1.0,
        "logits differ by max {max}, mean {mean} (max |logit| {scale}) for {what:?}"
    );
    let (ta, tb) = (ecr_llm::sampling::argmax(a) as usize, ecr_llm::sampling::argmax(b) as usize);
    // Different top tokens only where the reference itself nearly ties them.
    assert!(ta == tb || b[tb] - b[ta] < 0.5, "top token for {what:?}: {ta} vs {tb} (margin {})", b[tb] - b[ta]);
}

#[test]
fn fast_decoder_matches_candle_greedy_tokens_and_logits() {
    let prompts = [
        chat("I loved Inception. What should I watch next?"),
        chat("Recommend me a funny movie for a rainy day."),
        chat("I want a scary movie but not too violent."),
        "The capital of France is".to_string(),
    ];
    let (mut steps, mut agree) = (0, 0);
    for prompt in &prompts {
        let ids = tokenizer().encode(prompt).unwrap();
        let (mut ours, mut theirs) = (fast().session(), candle().session());
        let (mut a, mut b) = (ours.forward(&ids).unwrap(), theirs.forward(&ids).unwrap());
        assert_logits_close(&a, &b, prompt);
        // Follow candle's greedy sequence (teacher forcing) and compare the choice at every step.
        for step in 0..24 {
            let (ta, tb) = (ecr_llm::sampling::argmax(&a), ecr_llm::sampling::argmax(&b));
            steps += 1;
            if ta == tb {
                agree += 1;
            } else {
                // A disagreement is only allowed where candle itself hesitates between the two.
                let margin = b[tb as usize] - b[ta as usize];
                assert!(margin < 0.5, "step {step} of {prompt:?}: ours {ta}, candle {tb} by a margin of {margin}");
            }
            if tb == tokenizer().eos_id() {
                break;
            }
            a = ours.forward(&[tb]).unwrap();
            b = theirs.forward(&[tb]).unwrap();
        }
    }
    assert!(agree * 100 >= steps * 90, "greedy choices agree at {agree} of {steps} steps");
    // Free-running greedy generation through the public API: the same tokens, or the same until
    // a near-tie of candle's own top two lets the texts part.
    for p in &prompts {
        let ours = fast().generate(p, &greedy(24), |_| ControlFlow::Continue(())).unwrap();
        let theirs = candle().generate(p, &greedy(24), |_| ControlFlow::Continue(())).unwrap();
        let same = ours.tokens.iter().zip(&theirs.tokens).take_while(|(a, b)| a == b).count();
        if same < ours.tokens.len().min(theirs.tokens.len()) {
            let mut ids = tokenizer().encode(p).unwrap();
            ids.extend_from_slice(&theirs.tokens[..same]);
            let b = candle().session().forward(&ids).unwrap();
            let margin = b[theirs.tokens[same] as usize] - b[ours.tokens[same] as usize];
            assert!(
                margin < 0.5,
                "greedy texts part at token {same} by a margin of {margin} for {p:?}: {:?} vs {:?}",
                ours.text,
                theirs.text
            );
        }
        eprintln!("{same} of {} greedy tokens equal for {p:?}", theirs.tokens.len());
    }
    eprintln!("greedy choices agree at {agree} of {steps} steps");
}

#[test]
fn fast_path_matches_the_portable_fallback_and_thread_counts_do_not_change_results() {
    let ids = tokenizer().encode(&chat("Tell me about a sad movie with a happy ending.")).unwrap();
    let logits = |opts: LoadOptions| {
        let m = load(opts);
        let mut s = m.session();
        let mut l = s.forward(&ids).unwrap();
        // and two single-token steps through the KV cache
        l.extend(s.forward(&[ecr_llm::sampling::argmax(&l)]).unwrap());
        let last = l[l.len() - 49_152..].to_vec();
        l.extend(s.forward(&[ecr_llm::sampling::argmax(&last)]).unwrap());
        l
    };
    let one = logits(LoadOptions { threads: Some(1), ..Default::default() });
    for threads in [2, 3] {
        assert!(
            one == logits(LoadOptions { threads: Some(threads), ..Default::default() }),
            "{threads} threads differ"
        );
    }
    let scalar = logits(LoadOptions { threads: Some(2), force_scalar: true, ..Default::default() });
    for step in 0..3 {
        let r = step * 49_152..(step + 1) * 49_152;
        assert_logits_close(&scalar[r.clone()], &one[r], &format!("SIMD vs scalar, step {step}"));
    }
}

#[test]
fn no_repeat_ngram_holds_on_the_output() {
    let prompt = chat("Repeat after me forever: the movie the movie the movie the movie the movie");
    let params = GenerateParams {
        max_new_tokens: 60,
        sampling: SamplingParams { no_repeat_ngram: 3, ..Default::default() },
        stop: vec![],
        ..Default::default()
    };
    let plain = fast()
        .generate(&prompt, &GenerateParams { sampling: SamplingParams::default(), ..params.clone() }, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    let out = fast().generate(&prompt, &params, |_| ControlFlow::Continue(())).unwrap();
    assert!(!has_repeated_ngram(&out.tokens, 3), "a trigram repeats in {:?}", out.text);
    // The rule was needed: without it this prompt makes the model repeat itself.
    assert!(has_repeated_ngram(&plain.tokens, 3), "the control output has no repeat: {:?}", plain.text);
}

#[test]
fn spared_names_are_written_whole_where_the_ngram_rule_deforms_them() {
    let prompt = chat("Write this sentence five times: Blended stars Adam Sandler and Drew Barrymore.");
    let params = GenerateParams {
        max_new_tokens: 80,
        // Past the first sentence: the model would otherwise end its turn after writing it once.
        min_new_tokens: 60,
        sampling: SamplingParams { no_repeat_ngram: 3, repetition_penalty: 1.2, ..Default::default() },
        stop: vec![],
    };
    let names = ["Blended", "Adam Sandler", "Drew Barrymore"];
    let spared = fast().spared_names(&names).unwrap();
    let run =
        |s: &ecr_llm::Spared| fast().generate_sparing(&prompt, &params, s, |_| ControlFlow::Continue(())).unwrap();
    let (plain, kept) = (run(&ecr_llm::Spared::default()), run(&spared));
    let whole = |text: &str| names.iter().map(|n| text.matches(n).count()).sum::<usize>();
    // Without sparing, the rules make the model avoid the names' tokens once written.
    assert!(
        whole(&kept.text) > whole(&plain.text),
        "sparing kept no more whole names: {:?} vs {:?}",
        kept.text,
        plain.text
    );
    // The words between the names and a name's first token stay under the rules: neither the
    // sentence nor a name loops.
    assert!(kept.text.matches("stars Adam Sandler and Drew Barrymore").count() <= 1, "{:?}", kept.text);
    assert!(!kept.text.contains("Blended Blended"), "{:?}", kept.text);
}

#[test]
fn streamed_pieces_concatenate_to_the_text_even_with_multibyte_characters() {
    // Japanese and emoji come out as several byte-level tokens per character.
    let prompt = chat("Write the Japanese word for movie, 映画, three times, with a 🎬 emoji after each.");
    let mut pieces = Vec::new();
    let out = fast()
        .generate(&prompt, &greedy(40), |p| {
            pieces.push(p.to_string());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(pieces.concat(), out.text);
    assert!(!out.text.is_ascii(), "no multi-byte character generated: {:?}", out.text);
    assert!(pieces.iter().all(|p| !p.is_empty()));
}

#[test]
fn stop_sequences_cancellation_and_seeded_sampling() {
    let prompt = chat("List three movies, one per line.");
    let base = fast().generate(&prompt, &greedy(40), |_| ControlFlow::Continue(())).unwrap();
    let first_line_end = base.text.find('\n').expect("the answer has several lines");
    let mut streamed = String::new();
    let cut = fast()
        .generate(&prompt, &GenerateParams { stop: vec!["\n".into()], ..greedy(40) }, |p| {
            streamed.push_str(p);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(cut.stop, StopReason::StopSequence("\n".into()));
    assert_eq!(cut.text, base.text[..first_line_end]);
    assert_eq!(streamed, cut.text);

    let mut n = 0;
    let cancelled = fast()
        .generate(&prompt, &greedy(40), |_| {
            n += 1;
            if n == 3 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
        .unwrap();
    assert_eq!(cancelled.stop, StopReason::Cancelled);
    assert!(cancelled.tokens.len() < base.tokens.len());

    let sampled = |seed| {
        let p = GenerateParams {
            sampling: SamplingParams { temperature: 0.9, top_p: 0.95, seed, ..Default::default() },
            ..greedy(30)
        };
        fast().generate(&prompt, &p, |_| ControlFlow::Continue(())).unwrap().text
    };
    assert_eq!(sampled(1), sampled(1));
    assert_ne!(sampled(1), sampled(2));
}

#[test]
fn greedy_chat_answers_end_with_eos() {
    let out = fast().generate(&chat("Say hello."), &greedy(60), |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(out.stop, StopReason::Eos, "{:?}", out.text);
    assert!(!out.text.contains("<|im_end|>"));
}

#[test]
fn min_new_tokens_keeps_a_finished_opening_sentence_going() {
    // ECR's shape (recipes/ecr.toml): the knowledge fields, then a reply that starts with a
    // complete opening sentence, which the base model takes as the end of its turn.
    let prompt = "<|im_start|>system\nYou are a warm movie recommender chatting with a user. Recommend the movie \
                  named below in two or three sentences, sharing how it makes viewers feel. Use only the facts \
                  given.<|im_end|>\n<|im_start|>user\nMovie Name: Jaws (1975)\nRelated Knowledge: Jaws (1975) was \
                  directed by Steven Spielberg. Jaws (1975) stars Roy Scheider.\nWhat viewers felt: \"The tension \
                  never lets up.\"\nFirst Sentence: I think you would love Jaws (1975).<|im_end|>\n\
                  <|im_start|>assistant\nI think you would love Jaws (1975).";
    let stops = vec!["<|im_end|>".to_string(), "\n".to_string()];
    let params = |min| GenerateParams { min_new_tokens: min, stop: stops.clone(), ..greedy(40) };
    let plain = fast().generate(prompt, &params(0), |_| ControlFlow::Continue(())).unwrap();
    assert!(plain.tokens.len() < 5, "the control no longer stops early: {:?}", plain.text);
    let kept = fast().generate(prompt, &params(12), |_| ControlFlow::Continue(())).unwrap();
    assert!(kept.tokens.len() >= 12, "{} tokens: {:?}", kept.tokens.len(), kept.text);
    // Before the minimum: no control token and no token holding a stop sequence (the newline).
    let tok = tokenizer();
    assert!(
        kept.tokens[..12].iter().all(|&t| !tok.is_special(t) && !tok.token_bytes(t).contains(&b'\n')),
        "{:?}",
        kept.tokens
    );
    assert!(!kept.text.contains("<|im") && !kept.text.contains('\n'), "{:?}", kept.text);
}

#[test]
fn bad_input_gives_clear_errors() {
    let err = Llm::load("/nonexistent/model.gguf", &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/model.gguf") && err.contains("fetch.sh"), "{err}");
    let mut s = fast().session();
    assert!(s.forward(&[]).is_err());
    assert!(s.forward(&[49_152]).unwrap_err().to_string().contains("vocabulary"));
    let prompt = tokenizer().encode(&chat("Hi")).unwrap();
    let zero =
        GenerateParams { sampling: SamplingParams { repetition_penalty: 0.0, ..Default::default() }, ..greedy(4) };
    let err = fast().session().generate(&prompt, &zero, |_| std::ops::ControlFlow::Continue(())).unwrap_err();
    assert!(err.to_string().contains("repetition_penalty"), "{err}");
}
