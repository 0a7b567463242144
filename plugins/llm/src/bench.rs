//! Prompt and generation throughput of our decoder and candle's `quantized_llama`, measured in
//! one run on the same token ids, beside the llama.cpp/candle anchors measured on this machine.

use crate::gguf::GgufFile;
use crate::lora::{Adapter, BaseModel};
use crate::sampling::argmax;
use crate::tokenizer::LlmTokenizer;
use crate::{DecoderKind, Llm, LoadOptions, Result};
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The ~400-token ChatML prompt of an ECR turn (instruction, a movie, KG facts, review sentences,
/// a short dialogue).
pub const ECR_PROMPT: &str = include_str!("../fixtures/ecr_prompt.txt");

/// A short chat prompt, the size of the one the anchors were measured with (52 tokens).
pub const SHORT_PROMPT: &str = "<|im_start|>system\nYou are a friendly movie recommender. Answer in two sentences.<|im_end|>\n<|im_start|>user\nI loved Inception and Interstellar, and I want something with a clever plot twist for tonight. What do you suggest?<|im_end|>\n<|im_start|>assistant\n";

/// Anchors measured side by side on this machine (CRATES.md; 2 threads, 52-token prompt, greedy,
/// 128 new tokens): (runtime, prompt tokens/s, generation tokens/s).
pub const ANCHORS: &[(&str, f64, f64)] = &[
    ("llama.cpp Q4_1 as shipped", 265.0, 75.0),
    ("llama.cpp Q4_0 re-quantized, repacked", 632.0, 99.0),
    ("PyTorch f32", 455.0, 22.0),
    ("PyTorch bf16", 761.0, 25.0),
    ("candle 0.11 Q4_1", 33.0, 24.0),
    ("candle 0.11 Q4_0 re-quantized", 137.0, 56.0),
];

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The GGUF file.
    pub model: PathBuf,
    /// Threads of our decoder (default: available parallelism; candle uses rayon's).
    pub threads: Option<usize>,
    /// Tokens to generate per measurement.
    pub gen_tokens: usize,
    /// Rounds per measurement; the best is reported (the machine is shared and noisy).
    pub rounds: usize,
    /// Re-quantize candle's weights to Q4_0 (its fastest configuration here).
    pub candle_q4_0: bool,
    /// A LoRA adapter file: also measure our decoder with it applied, beside the base.
    pub adapter: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            model: PathBuf::from("models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
            threads: None,
            gen_tokens: 128,
            rounds: 2,
            candle_q4_0: true,
            adapter: None,
        }
    }
}

/// One decoder's figures.
#[derive(Debug, Clone, Serialize)]
pub struct DecoderFigures {
    /// What ran (format, kernels, threads).
    pub decoder: String,
    /// Prefill of the ECR prompt, tokens/s.
    pub prompt_tok_s: f64,
    /// Generation after the short prompt, tokens/s (what the anchors measured).
    pub gen_tok_s: f64,
    /// From the start of the ECR prompt's prefill to the first generated token, ms.
    pub first_token_ms: f64,
    /// Prefill of the short prompt, tokens/s.
    pub short_prompt_tok_s: f64,
    /// Generation after the ECR prompt (longer attention), tokens/s.
    pub gen_after_ecr_tok_s: f64,
}

/// The benchmark's result: prints as a table, serialises to JSON (`ours.*`, `candle.*`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Our decoder.
    pub ours: DecoderFigures,
    /// candle's `quantized_llama`.
    pub candle: DecoderFigures,
    /// Our decoder with the adapter of [`BenchOptions::adapter`] applied, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapted: Option<DecoderFigures>,
    /// Tokens of the ECR prompt.
    pub ecr_prompt_tokens: usize,
    /// Tokens of the short prompt.
    pub short_prompt_tokens: usize,
    /// Tokens generated per measurement.
    pub gen_tokens: usize,
    /// The 1-minute load average when the run ended (the machine is shared), if known.
    pub load_average: Option<f64>,
    /// Arithmetic of one token through the model's matrix products, GFLOP (2 per weight).
    pub gflop_per_token: f64,
}

impl BenchReport {
    /// ours / candle for prompt and generation speed.
    pub fn ratios(&self) -> (f64, f64) {
        (self.ours.prompt_tok_s / self.candle.prompt_tok_s, self.ours.gen_tok_s / self.candle.gen_tok_s)
    }
}

struct Measure {
    prefill_s: f64,
    first_token_s: f64,
    gen_s: f64,
}

/// Prefill `ids`, take the greedy token, then decode `new_tokens` more tokens one at a time (ignoring
/// end-of-sequence, so that every run decodes the same number of tokens).
fn measure(llm: &Llm, ids: &[u32], new_tokens: usize) -> Result<Measure> {
    let mut s = llm.session();
    let t0 = Instant::now();
    let logits = s.forward(ids)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut next = argmax(&logits);
    let first_token_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..new_tokens {
        next = argmax(&s.forward(&[next])?);
    }
    Ok(Measure { prefill_s, first_token_s, gen_s: t1.elapsed().as_secs_f64() })
}

/// The figures of each of `llms`, measured in turn within each round (so that a slow spell of
/// the shared machine hits them alike), best of the rounds.
fn figures(llms: &[&Llm], ecr: &[u32], short: &[u32], opts: &BenchOptions) -> Result<Vec<DecoderFigures>> {
    let mut out: Vec<DecoderFigures> = llms
        .iter()
        .map(|llm| DecoderFigures {
            decoder: llm.describe(),
            prompt_tok_s: 0.0,
            gen_tok_s: 0.0,
            first_token_ms: f64::INFINITY,
            short_prompt_tok_s: 0.0,
            gen_after_ecr_tok_s: 0.0,
        })
        .collect();
    for _ in 0..opts.rounds.max(1) {
        for (llm, d) in llms.iter().zip(&mut out) {
            let _span = tracing::info_span!("bench_decoder", decoder = %d.decoder).entered();
            let long = measure(llm, ecr, opts.gen_tokens)?;
            let small = measure(llm, short, opts.gen_tokens)?;
            d.prompt_tok_s = d.prompt_tok_s.max(ecr.len() as f64 / long.prefill_s);
            d.first_token_ms = d.first_token_ms.min(long.first_token_s * 1e3);
            d.gen_after_ecr_tok_s = d.gen_after_ecr_tok_s.max(opts.gen_tokens as f64 / long.gen_s);
            d.short_prompt_tok_s = d.short_prompt_tok_s.max(short.len() as f64 / small.prefill_s);
            d.gen_tok_s = d.gen_tok_s.max(opts.gen_tokens as f64 / small.gen_s);
        }
    }
    Ok(out)
}

/// Load both decoders from one read of the file and measure them, ours first.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    let g = GgufFile::open(&opts.model)?;
    let tok = Arc::new(LlmTokenizer::from_gguf(&g)?);
    let ecr = tok.encode(ECR_PROMPT)?;
    let short = tok.encode(SHORT_PROMPT)?;
    let c = g.llama_config()?;
    let kv = c.n_kv_head * c.head_dim();
    let weights = c.n_layer * (c.d_model * (2 * c.d_model + 2 * kv) + 3 * c.d_model * c.d_ff) + c.vocab * c.d_model;
    let ours = Llm::from_gguf(&g, tok.clone(), &LoadOptions { threads: opts.threads, ..Default::default() })?;
    let candle = Llm::from_gguf(
        &g,
        tok.clone(),
        &LoadOptions { decoder: DecoderKind::Candle, candle_q4_0: opts.candle_q4_0, ..Default::default() },
    )?;
    let adapted = match &opts.adapter {
        Some(file) => {
            let adapter = Adapter::load(file, &BaseModel::of(&g)?, None)?;
            let load = LoadOptions { threads: opts.threads, ..Default::default() };
            Some(Llm::from_gguf_with(&g, tok.clone(), &load, Some(&adapter))?)
        }
        None => None,
    };
    drop(g);
    let mut llms = vec![&ours, &candle];
    llms.extend(adapted.as_ref());
    // Warm up each (page faults, lazily built tables) before timing.
    for llm in &llms {
        measure(llm, &short[..8], 4)?;
    }
    let mut figs = figures(&llms, &ecr, &short, opts)?.into_iter();
    let (ours_f, candle_f) = (figs.next().expect("ours"), figs.next().expect("candle"));
    Ok(BenchReport {
        ours: ours_f,
        candle: candle_f,
        adapted: figs.next(),
        ecr_prompt_tokens: ecr.len(),
        short_prompt_tokens: short.len(),
        gen_tokens: opts.gen_tokens,
        gflop_per_token: 2.0 * weights as f64 / 1e9,
        load_average: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok())),
    })
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (rp, rg) = self.ratios();
        writeln!(
            f,
            "generation benchmark: ECR prompt {} tokens, short prompt {} tokens, {} new tokens, greedy, best of the rounds",
            self.ecr_prompt_tokens, self.short_prompt_tokens, self.gen_tokens
        )?;
        writeln!(
            f,
            "{:<34} {:>11} {:>11} {:>11} {:>11} {:>12}",
            "decoder", "prompt t/s", "gen t/s", "first ms", "short p t/s", "gen@ECR t/s"
        )?;
        for (name, d) in [("ours", &self.ours), ("candle", &self.candle)] {
            writeln!(
                f,
                "{:<34} {:>11.0} {:>11.1} {:>11.1} {:>11.0} {:>12.1}",
                name, d.prompt_tok_s, d.gen_tok_s, d.first_token_ms, d.short_prompt_tok_s, d.gen_after_ecr_tok_s
            )?;
        }
        if let Some(a) = &self.adapted {
            writeln!(
                f,
                "{:<34} {:>11.0} {:>11.1} {:>11.1} {:>11.0} {:>12.1}",
                "ours + adapter",
                a.prompt_tok_s,
                a.gen_tok_s,
                a.first_token_ms,
                a.short_prompt_tok_s,
                a.gen_after_ecr_tok_s
            )?;
            let pct = |with: f64, without: f64| 100.0 * (with / without - 1.0);
            writeln!(
                f,
                "adapter cost in this run: generation {:+.1}% t/s (after the ECR prompt {:+.1}%), prompt {:+.1}% t/s, first token {:+.1}% ms",
                pct(a.gen_tok_s, self.ours.gen_tok_s),
                pct(a.gen_after_ecr_tok_s, self.ours.gen_after_ecr_tok_s),
                pct(a.prompt_tok_s, self.ours.prompt_tok_s),
                pct(a.first_token_ms, self.ours.first_token_ms)
            )?;
        }
        writeln!(f, "  ours:   {}", self.ours.decoder)?;
        writeln!(f, "  candle: {}", self.candle.decoder)?;
        writeln!(f, "ours / candle in this run: prompt {rp:.2}x, generation {rg:.2}x")?;
        let (cp, cg) = (ANCHORS[5].1, ANCHORS[5].2);
        writeln!(f, "anchors (CRATES.md, same machine, other runs) as ratios to candle Q4_0 ({cp} / {cg} t/s):")?;
        for (name, p, g) in ANCHORS {
            writeln!(f, "  {name:<40} prompt {p:>4.0} ({:.2}x)  gen {g:>3.0} ({:.2}x)", p / cp, g / cg)?;
        }
        writeln!(
            f,
            "ours scaled to the anchors' candle: prompt ~{:.0} t/s, generation ~{:.0} t/s (targets 632 / 99, llama.cpp best 4.61x / 1.77x)",
            rp * cp,
            rg * cg
        )?;
        writeln!(
            f,
            "arithmetic: {:.2} GFLOP per token; our prefill does {:.0} GFLOP/s, generation {:.0} GFLOP/s",
            self.gflop_per_token,
            self.gflop_per_token * self.ours.prompt_tok_s,
            self.gflop_per_token * self.ours.gen_tok_s
        )?;
        if let Some(l) = self.load_average {
            writeln!(f, "load average at the end: {l:.2} (2 cores, shared)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_serialises_to_the_documented_keys_and_prints_ratios() {
        let fig = |p, g| DecoderFigures {
            decoder: "x".into(),
            prompt_tok_s: p,
            gen_tok_s: g,
            first_token_ms: 12.0,
            short_prompt_tok_s: p,
            gen_after_ecr_tok_s: g,
        };
        let r = BenchReport {
            ours: fig(800.0, 120.0),
            candle: fig(100.0, 60.0),
            adapted: Some(fig(760.0, 114.0)),
            ecr_prompt_tokens: 421,
            short_prompt_tokens: 53,
            gen_tokens: 128,
            load_average: Some(1.0),
            gflop_per_token: 0.27,
        };
        let j = serde_json::to_value(&r).unwrap();
        for who in ["ours", "candle"] {
            for key in ["prompt_tok_s", "gen_tok_s", "first_token_ms"] {
                assert!(j[who][key].is_number(), "{who}.{key} in {j}");
            }
        }
        let text = r.to_string();
        assert!(text.contains("prompt 8.00x, generation 2.00x"), "{text}");
        assert!(text.contains("adapter cost in this run: generation -5.0% t/s"), "{text}");
        assert!(j["adapted"]["gen_tok_s"].is_number(), "{j}");
    }
}
