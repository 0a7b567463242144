//! The review database: the sentences ECR keeps of the IMDb reviews
//! (`reviews/imdb_reviews.jsonl`, filtered as in [`crate::clean`]), each with
//! its movie, rating, emotion signal ([`crate::emotion`]) and linked KG
//! entities, embedded with MiniLM and indexed with HNSW (`hnsw_rs`, dot
//! product over L2-normalised vectors).
//!
//! Built once (with a progress bar) into a directory, then reloaded in
//! milliseconds. The directory is named by a fingerprint of the parameters
//! and the encoder; `meta.json` records the input files (size, mtime,
//! sha256). A changed input file (its hash, checked only when its size or
//! mtime changed) triggers a rebuild. Layout of the directory:
//! `meta.json`, `db.json` (movies, sentences, review sources),
//! `vectors.f32` and `descriptions.f32` (little-endian rows), and hnsw_rs's
//! dump `index.hnsw.graph` / `index.hnsw.data`.

use crate::clean::{Dropped, ReviewFilter, review_sentences};
use crate::emotion::{EMOTION_WORDS, EmotionLexicon};
use crate::error::{RespondError, Result};
use ecr_data::{Catalogue, Linker, load_reviews};
use ecr_neural::{EmbeddingCache, TextEncoder, embed_cached};
use hnsw_rs::prelude::{AnnT, DistDot, FilterT, Hnsw, HnswIo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Bumped whenever the on-disk layout or the build changes meaning.
const FORMAT_VERSION: u32 = 1;
const INDEX_BASENAME: &str = "index";

/// HNSW construction parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexParams {
    /// Neighbours kept per node and layer (`M`).
    pub max_connections: usize,
    /// Candidates explored while inserting.
    pub ef_construction: usize,
}

impl Default for IndexParams {
    fn default() -> Self {
        IndexParams { max_connections: 16, ef_construction: 200 }
    }
}

/// Everything that decides the content of the database besides its input files.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewDbParams {
    /// Which reviews and sentences are kept.
    pub filter: ReviewFilter,
    /// The HNSW index.
    pub index: IndexParams,
}

/// What the database is built from: plain references, so that a stage
/// factory only has to fetch the shared resources.
pub struct DbSources<'a> {
    /// `reviews/imdb_reviews.jsonl`.
    pub reviews: &'a Path,
    /// Other files whose change must rebuild the database (e.g.
    /// `redial/movie_info.json` for the descriptions, `kg/entity2id.json` for the linker).
    pub also_depends_on: Vec<PathBuf>,
    /// The movie catalogue (titles, descriptions).
    pub catalogue: &'a Catalogue,
    /// The entity linker (sentence entities).
    pub linker: &'a Linker,
    /// The sentence encoder.
    pub encoder: &'a TextEncoder,
    /// The shared on-disk embedding cache directory, if any.
    pub embedding_cache: Option<&'a Path>,
    /// Show progress bars while building.
    pub progress: bool,
}

/// One movie with kept reviews.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbMovie {
    /// IMDb id (`tt...`).
    pub imdb_id: String,
    /// Its ReDial movie ids.
    pub redial_ids: Vec<u32>,
    /// Its title with year (catalogue title, else movie_info's name).
    pub title: String,
    /// Its sentences are `first .. first + count` of [`ReviewDb::sentences`].
    pub first: u32,
    /// Number of sentences.
    pub count: u32,
}

/// One kept review sentence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sentence {
    /// The text.
    pub text: String,
    /// Index of its movie in [`ReviewDb::movies`].
    pub movie: u32,
    /// Index of its review's source in [`ReviewDb::review_source`].
    pub review: u32,
    /// The review's rating (stars).
    pub rating: u8,
    /// Feeling words in the sentence ([`EmotionLexicon::score`]).
    pub emotion: u32,
    /// KG entities linked in the sentence (people, genres, companies; movies excluded).
    pub entities: Vec<u32>,
}

impl Sentence {
    /// Whether the sentence expresses a feeling (at least one lexicon word).
    pub fn is_emotional(&self) -> bool {
        self.emotion > 0
    }
}

/// Size, modification time and hash of an input file when the database was built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct InputStamp {
    path: PathBuf,
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    version: u32,
    fingerprint: String,
    encoder: String,
    dim: usize,
    params: ReviewDbParams,
    inputs: Vec<InputStamp>,
    stats: BuildStats,
}

/// What a build kept and dropped, and how long it took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildStats {
    /// Reviews read.
    pub reviews: usize,
    /// Reviews kept.
    pub kept_reviews: usize,
    /// Reviews dropped by rating, repetition and length.
    pub dropped: BTreeMap<String, usize>,
    /// Reviews of movies absent from the catalogue (kept; titled from movie_info or the IMDb id).
    pub uncatalogued: usize,
    /// Sentences indexed.
    pub sentences: usize,
    /// Of which emotional.
    pub emotional: usize,
    /// Movies with at least one sentence.
    pub movies: usize,
    /// Seconds to embed the sentences and descriptions.
    pub embed_s: f64,
    /// Seconds to build the HNSW index.
    pub index_s: f64,
    /// Total build seconds.
    pub total_s: f64,
}

#[derive(Serialize, Deserialize)]
struct DbFile {
    movies: Vec<DbMovie>,
    sentences: Vec<Sentence>,
    sources: Vec<String>,
}

/// How [`ReviewDb::open`] got the database.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    /// Reloaded from disk.
    Loaded(Duration),
    /// Built, for this reason.
    Built(String),
}

/// The review database (see the module docs).
pub struct ReviewDb {
    dir: PathBuf,
    dim: usize,
    encoder: String,
    movies: Vec<DbMovie>,
    sentences: Vec<Sentence>,
    sources: Vec<String>,
    vectors: Vec<f32>,
    descriptions: Vec<f32>,
    by_redial: HashMap<u32, u32>,
    hnsw: Hnsw<'static, f32, DistDot>,
    stats: BuildStats,
}

impl std::fmt::Debug for ReviewDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReviewDb({} movies, {} sentences, {})", self.movies.len(), self.sentences.len(), self.dir.display())
    }
}

/// A movie's description for embedding: title, genres and plot from `movie_info.json`.
pub fn movie_description(catalogue: &Catalogue, redial_id: u32) -> Option<String> {
    let m = catalogue.get(redial_id)?;
    Some(match &m.info {
        Some(i) if !i.plot.is_empty() || !i.genre.is_empty() => {
            format!("{}. {}. {}", m.title, i.genre.join(", "), i.plot)
        }
        _ => m.title.clone(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> Result<String> {
    Ok(ecr_neural::text::sha256_file(path)?)
}

/// `(size, mtime in ns)` of a file.
fn size_mtime(path: &Path) -> Result<(u64, u128)> {
    let md = std::fs::metadata(path).map_err(|e| RespondError::io(path, e))?;
    let mtime = md.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    Ok((md.len(), mtime))
}

fn stamp(path: &Path) -> Result<InputStamp> {
    let (size, mtime_ns) = size_mtime(path)?;
    Ok(InputStamp { path: path.to_path_buf(), size, mtime_ns, sha256: sha256_file(path)? })
}

/// Why the recorded inputs no longer match, or `None` when they do. A file
/// whose size and mtime are unchanged is trusted; otherwise its hash decides.
fn stale_input(recorded: &[InputStamp], wanted: &[PathBuf]) -> Result<Option<String>> {
    if recorded.len() != wanted.len() || recorded.iter().zip(wanted).any(|(r, w)| &r.path != w) {
        return Ok(Some("the set of input files changed".into()));
    }
    for r in recorded {
        if !r.path.is_file() {
            return Ok(Some(format!("input {} is gone", r.path.display())));
        }
        if size_mtime(&r.path)? == (r.size, r.mtime_ns) {
            continue;
        }
        if sha256_file(&r.path)? != r.sha256 {
            return Ok(Some(format!("input {} changed", r.path.display())));
        }
    }
    Ok(None)
}

/// The directory name of a database: a hash of the format, parameters,
/// lexicon and encoder.
pub fn fingerprint(params: &ReviewDbParams, encoder_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT_VERSION.to_le_bytes());
    h.update(serde_json::to_string(params).unwrap_or_default().as_bytes());
    h.update(EMOTION_WORDS.as_bytes());
    h.update(encoder_id.as_bytes());
    hex(&h.finalize()[..8])
}

fn write_f32(path: &Path, rows: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).map_err(|e| RespondError::io(path, e))
}

fn read_f32(path: &Path, dim: usize, rows: usize) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|e| RespondError::io(path, e))?;
    if bytes.len() != rows * dim * 4 {
        return Err(RespondError::bad_file(
            path,
            format!("{} bytes, expected {rows} rows of {dim} floats; delete the directory to rebuild", bytes.len()),
        ));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Dot product.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn bar(show: bool, len: usize, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len as u64);
    let style = format!("{what} {{bar:40}} {{pos}}/{{len}} [{{elapsed}}<{{eta}}]");
    b.set_style(
        indicatif::ProgressStyle::with_template(&style).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// The reviews kept, grouped by movie: `(imdb id, redial ids, [(source, rating, sentences)])`.
type Grouped = BTreeMap<String, (Vec<u32>, Vec<(String, u8, Vec<String>)>)>;

impl ReviewDb {
    /// Open the database for `params` under `cache_dir` (in a subdirectory
    /// named by [`fingerprint`]): reload it when its inputs are unchanged,
    /// otherwise build it (and say why).
    pub fn open(cache_dir: &Path, src: &DbSources<'_>, params: &ReviewDbParams) -> Result<(ReviewDb, Opened)> {
        params.filter.validate().map_err(|(k, m)| RespondError::Invalid(format!("reviews.{k}: {m}")))?;
        let fp = fingerprint(params, src.encoder.id());
        let dir = cache_dir.join(format!("reviews-{fp}"));
        let wanted = Self::inputs(src);
        let reason = match std::fs::read_to_string(dir.join("meta.json")) {
            Err(_) => "no database built yet".to_string(),
            Ok(text) => match serde_json::from_str::<Meta>(&text) {
                Err(e) => format!("its meta.json is unreadable ({e})"),
                Ok(m) if m.version != FORMAT_VERSION || m.fingerprint != fp => "it was built by another version".into(),
                Ok(m) => match stale_input(&m.inputs, &wanted)? {
                    Some(r) => r,
                    None => {
                        let t = Instant::now();
                        let db = Self::load(&dir)?;
                        return Ok((db, Opened::Loaded(t.elapsed())));
                    }
                },
            },
        };
        tracing::info!(dir = %dir.display(), %reason, "building the review database");
        let db = Self::build(&dir, src, params)?;
        Ok((db, Opened::Built(reason)))
    }

    fn inputs(src: &DbSources<'_>) -> Vec<PathBuf> {
        std::iter::once(src.reviews.to_path_buf()).chain(src.also_depends_on.iter().cloned()).collect()
    }

    /// Read, filter, split, link, embed and index the reviews into `dir`
    /// (replacing what is there).
    pub fn build(dir: &Path, src: &DbSources<'_>, params: &ReviewDbParams) -> Result<ReviewDb> {
        let _span = tracing::info_span!("review_db_build").entered();
        let t0 = Instant::now();
        let mut stats = BuildStats::default();
        let reviews = load_reviews(src.reviews)?;
        stats.reviews = reviews.len();
        let mut grouped: Grouped = BTreeMap::new();
        for r in &reviews {
            match review_sentences(&r.text, r.rating, &params.filter) {
                Ok(s) => {
                    let e = grouped.entry(r.imdb_id.clone()).or_default();
                    if params.filter.max_reviews_per_movie.is_some_and(|max| e.1.len() >= max) {
                        *stats.dropped.entry("over max_reviews_per_movie".into()).or_default() += 1;
                        continue;
                    }
                    for id in &r.redial_ids {
                        if !e.0.contains(id) {
                            e.0.push(*id);
                        }
                    }
                    e.1.push((r.source.clone(), r.rating, s));
                }
                Err(d) => {
                    let k = match d {
                        Dropped::Rating => "rating",
                        Dropped::Repetition => "repetition",
                        Dropped::Short => "short",
                    };
                    *stats.dropped.entry(k.into()).or_default() += 1;
                }
            }
        }
        let lexicon = EmotionLexicon::default();
        let (mut movies, mut sentences, mut sources) = (Vec::new(), Vec::new(), Vec::new());
        let link_bar = bar(src.progress, grouped.values().map(|g| g.1.len()).sum(), "linking reviews");
        for (imdb_id, (redial_ids, revs)) in grouped {
            let title =
                redial_ids.iter().find_map(|&id| src.catalogue.get(id).map(|m| m.title.clone())).unwrap_or_else(|| {
                    stats.uncatalogued += revs.len();
                    imdb_id.clone()
                });
            let first = sentences.len() as u32;
            let movie = movies.len() as u32;
            for (source, rating, texts) in revs {
                let review = sources.len() as u32;
                sources.push(source);
                stats.kept_reviews += 1;
                for text in texts {
                    let entities = src
                        .linker
                        .link(&text)
                        .into_iter()
                        .filter(|m| m.kind == ecr_engine::EntityKind::Entity)
                        .filter_map(|m| m.entity)
                        .collect();
                    let emotion = lexicon.score(&text);
                    sentences.push(Sentence { text, movie, review, rating, emotion, entities });
                }
                link_bar.inc(1);
            }
            movies.push(DbMovie { imdb_id, redial_ids, title, first, count: sentences.len() as u32 - first });
        }
        link_bar.finish_and_clear();
        stats.sentences = sentences.len();
        stats.emotional = sentences.iter().filter(|s| s.is_emotional()).count();
        stats.movies = movies.len();
        if sentences.is_empty() {
            return Err(RespondError::Invalid(format!(
                "no review of {} passes the filter {:?}: lower reviews.min_rating or reviews.min_words",
                src.reviews.display(),
                params.filter
            )));
        }

        let t_embed = Instant::now();
        let mut cache = match src.embedding_cache {
            Some(d) => Some(EmbeddingCache::for_encoder(d, src.encoder)?),
            None => None,
        };
        let texts: Vec<&str> = sentences.iter().map(|s| s.text.as_str()).collect();
        let mut vecs = embed_cached(src.encoder, cache.as_mut(), &texts, src.progress)?;
        let descs: Vec<String> = movies
            .iter()
            .map(|m| {
                m.redial_ids.iter().find_map(|&id| movie_description(src.catalogue, id)).unwrap_or(m.title.clone())
            })
            .collect();
        let mut desc_vecs = embed_cached(src.encoder, cache.as_mut(), &descs, false)?;
        vecs.iter_mut().chain(desc_vecs.iter_mut()).for_each(|v| normalize(v));
        stats.embed_s = t_embed.elapsed().as_secs_f64();

        let t_index = Instant::now();
        let hnsw = Hnsw::<f32, DistDot>::new(
            params.index.max_connections,
            vecs.len(),
            16,
            params.index.ef_construction,
            DistDot {},
        );
        let index_bar = bar(src.progress, vecs.len(), "indexing sentences");
        let items: Vec<(&Vec<f32>, usize)> = vecs.iter().enumerate().map(|(i, v)| (v, i)).collect();
        for chunk in items.chunks(1024) {
            hnsw.parallel_insert(chunk);
            index_bar.inc(chunk.len() as u64);
        }
        index_bar.finish_and_clear();
        stats.index_s = t_index.elapsed().as_secs_f64();

        // Write into a fresh directory beside the target, then swap it in.
        let tmp = dir.with_extension("building");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| RespondError::io(&tmp, e))?;
        let dim = src.encoder.dim();
        let flat: Vec<f32> = vecs.concat();
        let desc_flat: Vec<f32> = desc_vecs.concat();
        write_f32(&tmp.join("vectors.f32"), &flat)?;
        write_f32(&tmp.join("descriptions.f32"), &desc_flat)?;
        let basename = hnsw
            .file_dump(&tmp, INDEX_BASENAME)
            .map_err(|e| RespondError::io(&tmp, std::io::Error::other(e.to_string())))?;
        if basename != INDEX_BASENAME {
            return Err(RespondError::Invalid(format!("hnsw_rs dumped the index as {basename} in {}", tmp.display())));
        }
        let db_file = DbFile { movies, sentences, sources };
        let db_path = tmp.join("db.json");
        std::fs::write(&db_path, serde_json::to_vec(&db_file).map_err(|e| RespondError::Invalid(e.to_string()))?)
            .map_err(|e| RespondError::io(&db_path, e))?;
        stats.total_s = t0.elapsed().as_secs_f64();
        let inputs = Self::inputs(src).iter().map(|p| stamp(p)).collect::<Result<Vec<_>>>()?;
        let meta = Meta {
            version: FORMAT_VERSION,
            fingerprint: fingerprint(params, src.encoder.id()),
            encoder: src.encoder.id().to_string(),
            dim,
            params: params.clone(),
            inputs,
            stats: stats.clone(),
        };
        let meta_path = tmp.join("meta.json");
        let meta_text = serde_json::to_string_pretty(&meta).map_err(|e| RespondError::Invalid(e.to_string()))?;
        std::fs::write(&meta_path, meta_text).map_err(|e| RespondError::io(&meta_path, e))?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&tmp, dir).map_err(|e| RespondError::io(dir, e))?;
        tracing::info!(
            sentences = stats.sentences,
            movies = stats.movies,
            seconds = format!("{:.1}", stats.total_s),
            "review database built"
        );
        Ok(Self::assemble(dir, dim, meta.encoder, db_file, flat, desc_flat, hnsw, stats))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: &Path,
        dim: usize,
        encoder: String,
        db: DbFile,
        vectors: Vec<f32>,
        descriptions: Vec<f32>,
        hnsw: Hnsw<'static, f32, DistDot>,
        stats: BuildStats,
    ) -> ReviewDb {
        let by_redial =
            db.movies.iter().enumerate().flat_map(|(i, m)| m.redial_ids.iter().map(move |&r| (r, i as u32))).collect();
        ReviewDb {
            dir: dir.to_path_buf(),
            dim,
            encoder,
            movies: db.movies,
            sentences: db.sentences,
            sources: db.sources,
            vectors,
            descriptions,
            by_redial,
            hnsw,
            stats,
        }
    }

    /// Load a database directory written by [`ReviewDb::build`] (no input check).
    pub fn load(dir: &Path) -> Result<ReviewDb> {
        let _span = tracing::debug_span!("review_db_load").entered();
        let meta_path = dir.join("meta.json");
        let text = std::fs::read_to_string(&meta_path).map_err(|e| RespondError::io(&meta_path, e))?;
        let meta: Meta = serde_json::from_str(&text)
            .map_err(|e| RespondError::bad_file(&meta_path, format!("{e}; delete the directory to rebuild")))?;
        let db_path = dir.join("db.json");
        let bytes = std::fs::read(&db_path).map_err(|e| RespondError::io(&db_path, e))?;
        let db: DbFile = serde_json::from_slice(&bytes)
            .map_err(|e| RespondError::bad_file(&db_path, format!("{e}; delete the directory to rebuild")))?;
        let vectors = read_f32(&dir.join("vectors.f32"), meta.dim, db.sentences.len())?;
        let descriptions = read_f32(&dir.join("descriptions.f32"), meta.dim, db.movies.len())?;
        // hnsw_rs's reloaded index borrows its loader for its lifetime ('b <= 'a in
        // `HnswIo::load_hnsw`). The loader is a few paths and flags (no mmap is used),
        // so leaking one per load is what lets the index live as long as the database.
        let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, INDEX_BASENAME)));
        let hnsw: Hnsw<'static, f32, DistDot> = io.load_hnsw::<f32, DistDot>().map_err(|e| {
            RespondError::bad_file(dir.join("index.hnsw.graph"), format!("{e}; delete the directory to rebuild"))
        })?;
        if hnsw.get_nb_point() != db.sentences.len() {
            return Err(RespondError::bad_file(
                dir.join("index.hnsw.graph"),
                format!(
                    "{} points for {} sentences; delete the directory to rebuild",
                    hnsw.get_nb_point(),
                    db.sentences.len()
                ),
            ));
        }
        Ok(Self::assemble(dir, meta.dim, meta.encoder, db, vectors, descriptions, hnsw, meta.stats))
    }

    /// The directory the database lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id of the encoder that embedded it.
    pub fn encoder_id(&self) -> &str {
        &self.encoder
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// What the build kept and dropped.
    pub fn stats(&self) -> &BuildStats {
        &self.stats
    }

    /// The movies with sentences.
    pub fn movies(&self) -> &[DbMovie] {
        &self.movies
    }

    /// Every sentence, grouped by movie.
    pub fn sentences(&self) -> &[Sentence] {
        &self.sentences
    }

    /// The source (path in the Large Movie Review Dataset) of review `i`.
    pub fn review_source(&self, i: u32) -> &str {
        self.sources.get(i as usize).map_or("", String::as_str)
    }

    /// The movie (index into [`ReviewDb::movies`]) of a ReDial movie id.
    pub fn movie_of_redial(&self, redial_id: u32) -> Option<usize> {
        self.by_redial.get(&redial_id).map(|&i| i as usize)
    }

    /// The sentence indices of movie `m`.
    pub fn movie_sentences(&self, m: usize) -> std::ops::Range<usize> {
        self.movies.get(m).map_or(0..0, |mv| mv.first as usize..(mv.first + mv.count) as usize)
    }

    /// The embedding of sentence `i`.
    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }

    /// The description embedding of movie `m`.
    pub fn description_vector(&self, m: usize) -> &[f32] {
        &self.descriptions[m * self.dim..(m + 1) * self.dim]
    }

    /// The `k` sentences among `ids` most similar to `query` (dot product),
    /// best first, computed exactly: `(sentence, similarity)`.
    pub fn exact(&self, query: &[f32], ids: impl IntoIterator<Item = usize>, k: usize) -> Vec<(usize, f32)> {
        let mut scored: Vec<(usize, f32)> = ids.into_iter().map(|i| (i, dot(query, self.vector(i)))).collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        scored
    }

    /// Approximate nearest sentences to `query` through the HNSW index,
    /// restricted to sentences for which `keep` is true, best first:
    /// `(sentence, similarity)`. `ef` is the search width (at least `k`).
    pub fn search(&self, query: &[f32], k: usize, ef: usize, keep: &dyn Fn(usize) -> bool) -> Vec<(usize, f32)> {
        if query.len() != self.dim || k == 0 {
            return Vec::new();
        }
        let mut q = query.to_vec();
        normalize(&mut q);
        let filter = |id: &usize| keep(*id);
        let found = self.hnsw.search_filter(&q, k, ef.max(k), Some(&filter as &dyn FilterT));
        let mut out: Vec<(usize, f32)> = found.into_iter().map(|n| (n.d_id, 1.0 - n.distance)).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}
