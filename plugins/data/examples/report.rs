fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = ecr_data::data_dir()?;
    let t = std::time::Instant::now();
    let res = ecr_data::Resources::load(&dir, &ecr_data::LinkerOptions::default())?;
    eprintln!("resources {:?}, {} patterns", t.elapsed(), res.linker.pattern_count());
    let r = ecr_data::linking_report(&res, 40)?;
    println!(
        "{}",
        serde_json::to_string(&serde_json::json!({
            "rows": r.rows, "misaligned": r.misaligned_rows,
            "ctx": [r.context.precision(), r.context.recall(), r.context.f1()],
            "ctx_movies": [r.context_movies.precision(), r.context_movies.recall(), r.context_movies.f1()],
            "ctx_other": [r.context_other.precision(), r.context_other.recall(), r.context_other.f1()],
            "gold": [r.gold.precision(), r.gold.recall(), r.gold.f1()],
            "missed": r.top_missed, "extra": r.top_extra, "missed_gold": r.top_missed_gold,
        }))?
    );
    Ok(())
}
