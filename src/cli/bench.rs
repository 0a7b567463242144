//! `ecr bench`: throughput measurements.

use clap::Subcommand;
use ecr::neural::TextEncoder;
use ecr::neural::text::EncoderOptions;
use std::path::PathBuf;
use std::time::Instant;

/// What to measure.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Warm turn latency of a recipe's pipeline on real ReDial test dialogues: p50/p95 per stage,
    /// of the recommendation stages, of the whole turn and of the first streamed token.
    Turn {
        /// The recipe (trained: `ecr train -r RECIPE` first).
        #[arg(short, long, default_value = "recipes/ecr.toml")]
        recipe: PathBuf,
        /// Timed seeker turns.
        #[arg(long, default_value_t = 50)]
        turns: usize,
        /// Untimed warm-up turns.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// MiniLM sentence-encoder throughput on real short utterances (the test annotations), no cache.
    Encoder {
        /// The MiniLM directory.
        #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
        model_dir: PathBuf,
        /// How many utterances to embed.
        #[arg(long, default_value_t = 1000)]
        texts: usize,
        /// Utterances per forward pass.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Rounds to run (the first one warms up and is not counted when there are several).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// Review database build and reload times, retrieval latency per turn on ReDial test dialogues
    /// (the retriever of recipes/ecr.toml with its default configuration).
    Retrieve {
        /// Delete the database first so that it is built (the embedding cache is kept).
        #[arg(long)]
        rebuild: bool,
        /// Reloads to time.
        #[arg(long, default_value_t = 5)]
        reloads: usize,
        /// Recommender turns to retrieve for.
        #[arg(long, default_value_t = 300)]
        turns: usize,
    },
    /// Prompt and generation tokens/s of our decoder and candle's quantized_llama (re-quantized to
    /// Q4_0) on the same prompts in one run, beside the llama.cpp anchors.
    Generate {
        /// The GGUF model.
        #[arg(long, default_value = "models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf")]
        model: PathBuf,
        /// Threads of our decoder (default: all cores; candle uses RAYON_NUM_THREADS).
        #[arg(long)]
        threads: Option<usize>,
        /// New tokens per measurement.
        #[arg(long, default_value_t = 128)]
        tokens: usize,
        /// Rounds per measurement (the best is reported).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Run candle on the Q4_1 weights as shipped instead of re-quantizing them to Q4_0.
        #[arg(long)]
        candle_q4_1: bool,
        /// Also measure our decoder with this LoRA adapter applied (e.g.
        /// runs/shared/generator-adapter/adapter.safetensors), side by side with the base.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Run a benchmark.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Turn { recipe, turns, warmup, json } => {
            let engine = ecr::Engine::from_recipe(&recipe)?;
            let options = ecr::bench::TurnBenchOptions { turns, warmup };
            let report = ecr::bench::turn_latency(&engine, &ecr::data::data_dir()?, &options)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
            Ok(())
        }
        BenchCommand::Retrieve { rebuild, reloads, turns } => {
            let ctx = ecr::BuildContext::new("recipes/ecr.toml", "ecr", "retrieve");
            let opts = ecr::respond::bench::BenchOptions { rebuild, reloads, turns };
            let report = ecr::respond::bench::bench_retrieve(&ecr::respond::RetrieverConfig::default(), &ctx, &opts)
                .map_err(|e| anyhow::anyhow!(e))?;
            println!("{report}");
            Ok(())
        }
        BenchCommand::Generate { model, threads, tokens, rounds, candle_q4_1, adapter, json } => {
            let opts = ecr::llm::bench::BenchOptions {
                model,
                threads,
                gen_tokens: tokens,
                rounds,
                candle_q4_0: !candle_q4_1,
                adapter,
            };
            let report = ecr::llm::bench::run(&opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(())
        }
        BenchCommand::Encoder { model_dir, texts, batch_size, rounds } => {
            let opts = EncoderOptions { batch_size, ..Default::default() };
            let enc = TextEncoder::load_with(&model_dir, opts)?;
            let path = ecr::data::paths::require_file(&ecr::data::data_dir()?, "emotion/annotations_test.jsonl")?;
            let mut utts: Vec<String> = ecr::data::load_annotations(&path)?.into_iter().map(|a| a.utterance).collect();
            if utts.is_empty() {
                anyhow::bail!("{} has no utterances", path.display());
            }
            while utts.len() < texts {
                utts.extend_from_within(..utts.len().min(texts - utts.len()));
            }
            utts.truncate(texts);
            let tokens: usize = utts.iter().map(|t| enc.token_count(t)).sum::<Result<usize, _>>()?;
            let threads = std::env::var("RAYON_NUM_THREADS")
                .ok()
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).to_string());
            let mut best = f64::INFINITY;
            for round in 0..rounds.max(1) {
                let t = Instant::now();
                let v = enc.embed(&utts)?;
                let s = t.elapsed().as_secs_f64();
                anyhow::ensure!(
                    v.len() == utts.len(),
                    "the encoder returned {} vectors for {} texts",
                    v.len(),
                    utts.len()
                );
                if rounds <= 1 || round > 0 {
                    best = best.min(s);
                }
            }
            println!(
                "encoder {}: {} utterances ({:.1} tokens each), batch {batch_size}, {threads} threads: {:.0} utterances/s, {:.0} tokens/s ({:.2} s)",
                enc.id(),
                utts.len(),
                tokens as f64 / utts.len() as f64,
                utts.len() as f64 / best,
                tokens as f64 / best,
                best
            );
            Ok(())
        }
    }
}
