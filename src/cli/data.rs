//! `ecr data ...`: statistics of the prepared data, the linking report against
//! UniCRS, and a linker benchmark.

use anyhow::{Context, Result};
use ecr_data::EmotionSources;
use ecr_data::{LinkerOptions, PrepareOptions, Prf, Resources, SplitStats};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How `stats` and `export` prepare the data.
#[derive(Debug, clap::Args)]
pub struct PrepareArgs {
    /// Emotion-tagger output (`{"id": ..., "emotions": {...}}` per line), used
    /// for messages the annotations do not cover.
    #[arg(long)]
    emotions: Option<PathBuf>,
    /// Share of train.jsonl conversations held out for validation.
    #[arg(long, default_value_t = 0.1)]
    valid_fraction: f64,
    /// Seed of the validation split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep emotion labels with p above this (ECR: 0.1; use the emotion tagger stage's `threshold`).
    #[arg(long, default_value_t = ecr_data::instances::EMOTION_THRESHOLD)]
    emotion_threshold: f32,
}

impl PrepareArgs {
    fn options(&self) -> Result<PrepareOptions> {
        let f = self.valid_fraction;
        anyhow::ensure!((0.0..1.0).contains(&f), "--valid-fraction {f}: expected 0 <= f < 1");
        let t = self.emotion_threshold;
        anyhow::ensure!((0.0..1.0).contains(&t), "--emotion-threshold {t}: expected 0 <= t < 1");
        Ok(PrepareOptions { valid_fraction: f, seed: self.seed, emotion_threshold: t })
    }
}

/// Subcommands of `ecr data`.
#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Prepare train/valid/test from the raw data and print their statistics.
    Stats {
        #[command(flatten)]
        prep: PrepareArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Compare our entity linking of the test split with UniCRS's (precision, recall, F1).
    LinkingReport {
        /// How many of the most frequent disagreements to list.
        #[arg(long, default_value_t = 15)]
        top: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the prepared data as JSON for inspection: `instances_<split>.jsonl`,
    /// `dialogues_<split>.jsonl` and `cooccurrence.json` under `--out`.
    Export {
        #[command(flatten)]
        prep: PrepareArgs,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Time the entity linker on every message of the test split.
    BenchLinker {
        /// Passes over the messages.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

/// The data directory: the one rule (`--data-dir` sets `$ECR_DATA_DIR`).
fn dir() -> Result<PathBuf> {
    Ok(ecr_data::data_dir()?)
}

fn load_resources(dir: &Path) -> Result<(Resources, f64)> {
    let t = Instant::now();
    let res = Resources::load(dir, &LinkerOptions::default())
        .with_context(|| format!("loading the catalogue and KG from {}", dir.display()))?;
    Ok((res, t.elapsed().as_secs_f64()))
}

/// Run one `ecr data` subcommand.
pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Stats { prep, json } => stats(&dir()?, &prep, json),
        DataCommand::LinkingReport { top, json } => linking(&dir()?, top, json),
        DataCommand::BenchLinker { rounds } => bench(&dir()?, rounds),
        DataCommand::Export { prep, out } => export(&dir()?, &prep, &out),
    }
}

fn stats(dir: &Path, prep: &PrepareArgs, json: bool) -> Result<()> {
    let opts = prep.options()?;
    let start = Instant::now();
    let (res, t_res) = load_resources(dir)?;
    let t = Instant::now();
    let EmotionSources { train: source, test: test_source } = EmotionSources::standard(dir, prep.emotions.as_deref())?;
    let t_emo = t.elapsed().as_secs_f64();
    let prepared = ecr_data::prepare_with_sources(&res, source.as_ref(), test_source.as_ref(), &opts)?;
    let total = start.elapsed().as_secs_f64();
    let splits: Vec<SplitStats> =
        [&prepared.train, &prepared.valid, &prepared.test].iter().map(|s| s.stats()).collect();
    let co = &prepared.cooccurrence;
    if json {
        let v = serde_json::json!({
            "splits": splits,
            "emotion_source": source.describe(),
            "test_emotion_source": test_source.describe(),
            "cooccurrence": {"n": co.n, "nnz": co.nnz(), "nonempty_rows": co.nonempty_rows()},
            "kg": {"entities": res.kg.len(), "triples": res.kg.triple_count(), "items": res.kg.items.len()},
            "catalogue_movies": res.catalogue.len(),
            "linker_patterns": res.linker.pattern_count(),
            "seconds": {"resources": t_res, "emotions": t_emo, "prepare": prepared.elapsed.as_secs_f64(), "total": total},
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "data: {}  catalogue {} movies, KG {} entities / {} triples / {} items, linker {} patterns",
        dir.display(),
        res.catalogue.len(),
        res.kg.len(),
        res.kg.triple_count(),
        res.kg.items.len(),
        res.linker.pattern_count()
    );
    let links = ecr_data::link_movies(&res.catalogue, &res.kg);
    let by_uri = links.values().filter(|(_, k)| *k == ecr_data::MovieLinkKind::Uri).count();
    println!(
        "catalogue movies in the KG: {} of {} ({} by movie_entity.json, {} by title)",
        links.len(),
        res.catalogue.len(),
        by_uri,
        links.len() - by_uri
    );
    println!("emotion source: {} (test: {})", source.describe(), test_source.describe());
    println!(
        "{:<6} {:>6} {:>7} {:>6} {:>6} {:>9} {:>6} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8}",
        "split",
        "convs",
        "msgs",
        "turns",
        "rec-t",
        "instances",
        "liked",
        "disliked",
        "not-said",
        "kg/turn",
        "ment/turn",
        "gold-kg",
        "emo-cov"
    );
    for s in &splits {
        println!(
            "{:<6} {:>6} {:>7} {:>6} {:>6} {:>9} {:>6} {:>8} {:>8} {:>8.2} {:>9.2} {:>7.1}% {:>7.1}%",
            s.split,
            s.conversations,
            s.messages,
            s.turns,
            s.recommender_turns,
            s.instances,
            s.liked,
            s.disliked,
            s.not_said,
            s.kg_entities_per_turn,
            s.mentions_per_turn,
            100.0 * s.gold_in_kg_share,
            100.0 * s.seeker_turns_with_emotions
        );
    }
    println!(
        "co-occurrence (train only): {} x {}, {} non-zeros in {} non-empty rows",
        co.n,
        co.n,
        co.nnz(),
        co.nonempty_rows()
    );
    println!(
        "prepared in {total:.2} s (catalogue+KG+linker {t_res:.2} s, emotions {t_emo:.2} s, segment+instances+co-occurrence {:.2} s)",
        prepared.elapsed.as_secs_f64()
    );
    Ok(())
}

fn prf_line(name: &str, p: &Prf) -> String {
    format!(
        "{name:<26} precision {:.3}  recall {:.3}  F1 {:.3}   (tp {}, fp {}, fn {})",
        p.precision(),
        p.recall(),
        p.f1(),
        p.tp,
        p.fp,
        p.fn_
    )
}

fn linking(dir: &Path, top: usize, json: bool) -> Result<()> {
    let (res, _) = load_resources(dir)?;
    let r = ecr_data::linking_report(&res, top)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "ours vs UniCRS on the ReDial test split: {} recommender turns ({} misaligned)",
        r.rows, r.misaligned_rows
    );
    println!("{}", prf_line("context entities (all)", &r.context));
    println!("{}", prf_line("  movies", &r.context_movies));
    println!("{}", prf_line("  other entities", &r.context_other));
    println!("{}", prf_line("gold movies vs rec", &r.gold));
    let list = |v: &[(String, usize)]| v.iter().map(|(n, c)| format!("{n} ({c})")).collect::<Vec<_>>().join(", ");
    println!("UniCRS has, we miss (rows): {}", list(&r.top_missed));
    println!("we have, UniCRS does not (rows): {}", list(&r.top_extra));
    println!("gold items we miss (rows): {}", list(&r.top_missed_gold));
    Ok(())
}

fn bench(dir: &Path, rounds: usize) -> Result<()> {
    let (res, t_res) = load_resources(dir)?;
    let convs = ecr_data::load_conversations(&dir.join("redial/test.jsonl"))?;
    let texts: Vec<&str> = convs.iter().flat_map(|c| c.messages.iter().map(|m| m.text.as_str())).collect();
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    let mut mentions = 0usize;
    let mut per: Vec<f64> = Vec::with_capacity(texts.len() * rounds.max(1));
    let start = Instant::now();
    for _ in 0..rounds.max(1) {
        for t in &texts {
            let s = Instant::now();
            mentions += std::hint::black_box(res.linker.link(t)).len();
            per.push(s.elapsed().as_secs_f64() * 1e6);
        }
    }
    let total = start.elapsed().as_secs_f64();
    per.sort_by(f64::total_cmp);
    let q = |f: f64| per[((per.len() - 1) as f64 * f) as usize];
    println!(
        "linked {} utterances x {} rounds ({} bytes each pass, {} mentions per pass) in {total:.3} s: mean {:.2} µs, p50 {:.2} µs, p99 {:.2} µs, max {:.1} µs per utterance (automaton built in {t_res:.2} s with the catalogue and KG, {} patterns)",
        texts.len(),
        rounds.max(1),
        bytes,
        mentions / rounds.max(1),
        total * 1e6 / per.len() as f64,
        q(0.5),
        q(0.99),
        q(1.0),
        res.linker.pattern_count()
    );
    Ok(())
}

fn export(dir: &Path, prep: &PrepareArgs, out: &Path) -> Result<()> {
    let opts = prep.options()?;
    use std::io::Write;
    let start = Instant::now();
    let (res, _) = load_resources(dir)?;
    let EmotionSources { train: source, test: test_source } = EmotionSources::standard(dir, prep.emotions.as_deref())?;
    let p = ecr_data::prepare_with_sources(&res, source.as_ref(), test_source.as_ref(), &opts)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let write_lines = |name: String, rows: &mut dyn Iterator<Item = serde_json::Result<String>>| -> Result<usize> {
        let path = out.join(name);
        let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::new(f);
        let mut n = 0;
        for row in rows {
            writeln!(w, "{}", row?).with_context(|| format!("writing {}", path.display()))?;
            n += 1;
        }
        w.flush().with_context(|| format!("writing {}", path.display()))?;
        Ok(n)
    };
    let mut total = 0;
    for s in [&p.train, &p.valid, &p.test] {
        total +=
            write_lines(format!("instances_{}.jsonl", s.name), &mut s.instances.iter().map(serde_json::to_string))?;
        write_lines(format!("dialogues_{}.jsonl", s.name), &mut s.dialogues.iter().map(serde_json::to_string))?;
    }
    let co_path = out.join("cooccurrence.json");
    std::fs::write(&co_path, serde_json::to_string(&p.cooccurrence)?)
        .with_context(|| format!("writing {}", co_path.display()))?;
    println!(
        "wrote {total} instances, {} dialogues and the co-occurrence matrix ({} non-zeros) to {} in {:.2} s",
        p.train.dialogues.len() + p.valid.dialogues.len() + p.test.dialogues.len(),
        p.cooccurrence.nnz(),
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
