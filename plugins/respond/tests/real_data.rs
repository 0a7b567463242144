//! The review database, the retriever and the stages on the real data and
//! the real MiniLM, over a small subset of the real reviews (ten-star
//! reviews of a few movies) so that a build takes seconds.
//!
//! Needs `models/fetch.sh` and the data directory (`$ECR_DATA_DIR` or `shared/data`).

use ecr_data::{LinkerOptions, Resources, data_dir};
use ecr_engine::{Candidate, EntityKind, Registry, Role, Turn, Utterance};
use ecr_neural::TextEncoder;
use ecr_respond::reviewdb::{DbSources, Opened, ReviewDb, ReviewDbParams};
use ecr_respond::{PassageSource, RetrieveOptions, Retriever, World};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Fixture {
    res: Resources,
    encoder: TextEncoder,
    reviews: PathBuf,
}

/// The real resources, and a reviews file with the ten-star reviews of the
/// first movies (in IMDb id order) that have at least three, eight at most each.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = data_dir().expect("data directory");
        let res = Resources::load(&dir, &LinkerOptions::default()).expect("catalogue, KG, linker");
        let encoder = TextEncoder::load(&root().join("models/all-MiniLM-L6-v2")).expect("run models/fetch.sh");
        let text = std::fs::read_to_string(dir.join("reviews/imdb_reviews.jsonl")).unwrap();
        let mut by_movie: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["rating"] == 10 {
                by_movie.entry(v["imdb_id"].as_str().unwrap().to_string()).or_default().push(line);
            }
        }
        let lines: Vec<&str> =
            by_movie.values().filter(|v| v.len() >= 3).take(6).flat_map(|v| v.iter().take(8).copied()).collect();
        let reviews = tmp("fixture").join("reviews.jsonl");
        std::fs::write(&reviews, lines.join("\n") + "\n").unwrap();
        Fixture { res, encoder, reviews }
    })
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ecr-respond-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sources<'a>(f: &'a Fixture, reviews: &'a Path) -> DbSources<'a> {
    DbSources {
        reviews,
        also_depends_on: vec![],
        catalogue: &f.res.catalogue,
        linker: &f.res.linker,
        encoder: &f.encoder,
        embedding_cache: None,
        progress: false,
    }
}

fn world(f: &Fixture) -> World<'_> {
    World { kg: &f.res.kg, catalogue: &f.res.catalogue, linker: &f.res.linker, encoder: &f.encoder }
}

#[test]
fn the_database_persists_reloads_to_the_same_results_and_rebuilds_on_change() {
    let f = fixture();
    let dir = tmp("persist");
    let reviews = dir.join("reviews.jsonl");
    std::fs::copy(&f.reviews, &reviews).unwrap();
    let params = ReviewDbParams::default();
    let (built, how) = ReviewDb::open(&dir, &sources(f, &reviews), &params).unwrap();
    assert_eq!(how, Opened::Built("no database built yet".into()));
    let s = built.stats().clone();
    assert!(s.movies >= 3 && s.sentences > 50 && s.emotional > 10, "{s:?}");
    assert!(s.kept_reviews < s.reviews, "ECR's repetition filter drops some: {s:?}");
    assert!(built.sentences().iter().all(|x| x.rating == 10 && !x.text.contains("10")));

    let (loaded, how) = ReviewDb::open(&dir, &sources(f, &reviews), &params).unwrap();
    assert!(matches!(how, Opened::Loaded(_)), "{how:?}");
    assert_eq!(loaded.sentences(), built.sentences());
    assert_eq!(loaded.movies(), built.movies());
    let queries = f.encoder.embed(&["a movie that made me cry", "great special effects and action", "funny"]).unwrap();
    for q in &queries {
        let all = |_: usize| true;
        assert_eq!(loaded.search(q, 10, 64, &all), built.search(q, 10, 64, &all));
        let r = built.movie_sentences(1);
        assert_eq!(loaded.exact(q, r.clone(), 5), built.exact(q, r, 5));
        // HNSW agrees with the exact neighbours on this small index.
        let exact: Vec<usize> = built.exact(q, 0..built.sentences().len(), 5).into_iter().map(|x| x.0).collect();
        let approx: Vec<usize> = built.search(q, 5, 64, &all).into_iter().map(|x| x.0).collect();
        assert_eq!(approx, exact);
    }

    // Same content, new mtime: the hash says it is unchanged.
    let text = std::fs::read_to_string(&reviews).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&reviews, &text).unwrap();
    let (_, how) = ReviewDb::open(&dir, &sources(f, &reviews), &params).unwrap();
    assert!(matches!(how, Opened::Loaded(_)), "{how:?}");
    // Changed content rebuilds.
    let first_line = text.lines().next().unwrap();
    std::fs::write(&reviews, text.replacen(first_line, "", 1)).unwrap();
    let (_, how) = ReviewDb::open(&dir, &sources(f, &reviews), &params).unwrap();
    assert!(matches!(&how, Opened::Built(r) if r.contains("changed")), "{how:?}");
    // Other parameters live in another directory.
    let other = ReviewDbParams {
        filter: ecr_respond::clean::ReviewFilter { min_words: 30, ..Default::default() },
        ..params.clone()
    };
    let (_, how) = ReviewDb::open(&dir, &sources(f, &reviews), &other).unwrap();
    assert!(matches!(how, Opened::Built(_)), "{how:?}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).count(), 2);
    // A cap on reviews per movie (quick recipes) keeps the first ones and counts the rest.
    let filter = ecr_respond::clean::ReviewFilter { max_reviews_per_movie: Some(2), ..Default::default() };
    let (capped, _) =
        ReviewDb::open(&dir, &sources(f, &reviews), &ReviewDbParams { filter, ..params.clone() }).unwrap();
    let (full, _) = ReviewDb::open(&dir, &sources(f, &reviews), &params).unwrap();
    for m in 0..capped.movies().len() {
        let reviews: std::collections::BTreeSet<u32> =
            capped.movie_sentences(m).map(|i| capped.sentences()[i].review).collect();
        assert!((1..=2).contains(&reviews.len()), "movie {m}: {} reviews", reviews.len());
    }
    let over = capped.stats().dropped.get("over max_reviews_per_movie").copied().unwrap_or(0);
    assert!(over > 0 && capped.stats().kept_reviews + over == full.stats().kept_reviews, "{:?}", capped.stats());
    let _ = std::fs::remove_dir_all(&dir);
}

fn retriever() -> &'static Retriever {
    static R: OnceLock<Retriever> = OnceLock::new();
    R.get_or_init(|| {
        let f = fixture();
        let (db, _) = ReviewDb::open(&tmp("retriever"), &sources(f, &f.reviews), &ReviewDbParams::default()).unwrap();
        Retriever::new(Arc::new(db), world(f), RetrieveOptions::default()).unwrap()
    })
}

fn candidate(f: &Fixture, redial_id: u32) -> Option<Candidate> {
    let m = f.res.catalogue.get(redial_id)?;
    Some(Candidate { item: f.res.linker.movie_entity(redial_id)?, name: m.title.clone(), score: 1.0 })
}

/// Which database movie's sentences contain `text`.
fn owner(db: &ReviewDb, text: &str) -> Vec<usize> {
    (0..db.movies().len()).filter(|&m| db.movie_sentences(m).any(|i| db.sentences()[i].text == text)).collect()
}

#[test]
fn the_retriever_never_passes_another_movies_sentences_as_this_movies() {
    let f = fixture();
    let r = retriever();
    let db = r.db().unwrap();
    let history = vec![Utterance::new(Role::Seeker, "Hi! I'm in the mood for something emotional tonight.")];
    let user = "I loved movies that made me cry";
    // Movies with reviews: their own sentences only, best first.
    let mut with_reviews = 0;
    for m in db.movies() {
        let Some(c) = m.redial_ids.iter().find_map(|&id| candidate(f, id)) else { continue };
        with_reviews += 1;
        let got = r.retrieve(world(f), std::slice::from_ref(&c), &history, user).unwrap();
        assert_eq!(got.passages.len(), 3, "{}", c.name);
        for p in &got.passages {
            let src = PassageSource::parse(&p.source).unwrap();
            assert_eq!((src.similar_to.as_deref(), p.item), (None, c.item));
            assert_eq!(src.film, m.title);
            assert_eq!(owner(db, &p.text), vec![db.movie_of_redial(m.redial_ids[0]).unwrap()], "{:?}", p.text);
        }
        assert!(got.passages.windows(2).all(|w| w[0].score >= w[1].score));
        assert!(got.facts.iter().all(|x| x.head == c.name) && !got.facts.is_empty(), "{:?}", got.facts);
    }
    assert!(with_reviews >= 3);
    // Movies without reviews: emotional sentences of other films, marked with the film.
    let without: Vec<Candidate> = f
        .res
        .catalogue
        .movies()
        .iter()
        .filter(|m| db.movie_of_redial(m.id).is_none())
        .filter_map(|m| candidate(f, m.id))
        .step_by(500)
        .take(8)
        .collect();
    assert!(without.len() >= 5);
    for c in &without {
        let got = r.retrieve(world(f), std::slice::from_ref(c), &history, user).unwrap();
        assert!(!got.passages.is_empty(), "{}", c.name);
        assert!(got.entities.is_empty(), "no reviews, no review entities");
        for p in &got.passages {
            let src = PassageSource::parse(&p.source).unwrap();
            assert_eq!(src.similar_to.as_deref(), Some(c.name.as_str()));
            assert_ne!(p.item, c.item);
            assert_ne!(src.film, c.name);
            let owners = owner(db, &p.text);
            assert!(owners.iter().any(|&o| db.movies()[o].title == src.film), "{:?} is not from {}", p.text, src.film);
            let s = db.sentences().iter().find(|s| s.text == p.text).unwrap();
            assert!(s.is_emotional(), "{:?}", p.text);
        }
        assert!(got.passages.len() <= 3);
    }
}

/// The registry of the test recipes: the linker, Lua, and this crate's stages.
fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(ecr_data::EntityLinkerFactory).unwrap();
    registry.register(ecr_respond::RetrieverFactory).unwrap();
    registry.register(ecr_respond::PromptBuilderFactory).unwrap();
    registry
}

/// A recipe's header, linker and stand-in candidates stage (the real Lua script).
fn recipe_head(name: &str) -> String {
    let script = root().join("recipes/lua/mentioned_candidates.lua");
    format!(
        r#"[recipe]
name = "{name}"
pipeline = ["link", "candidates", "retrieve", "prompt"]
[stages.link]
use = "entity_linker"
[stages.candidates]
use = "lua"
with = {{ script = "{}", reads = ["user.entities", "history"], writes = ["candidates"] }}"#,
        script.display()
    )
}

#[test]
fn the_stages_run_in_an_engine_on_a_real_dialogue() {
    let f = fixture();
    let dir = tmp("engine");
    // A movie of the fixture with reviews, typed by title.
    let movie = f.res.catalogue.get(retriever().db().unwrap().movies()[0].redial_ids[0]).unwrap();
    let recipe = format!(
        r#"
{head}
[stages.retrieve]
use = "retriever"
[stages.retrieve.with]
reviews_file = "{reviews}"
model_dir = "{model}"
embedding_cache = "{cache}"
index_dir = "{index}"
[stages.prompt]
use = "prompt_builder"
[stages.prompt.with.template]
budget = 400
"#,
        head = recipe_head("respond-test"),
        reviews = f.reviews.display(),
        model = root().join("models/all-MiniLM-L6-v2").display(),
        cache = dir.join("emb").display(),
        index = dir.join("index").display(),
    );
    let path = dir.join("respond-test.toml");
    std::fs::write(&path, recipe).unwrap();
    let engine = ecr_engine::Engine::from_recipe_with(&path, &registry()).unwrap();
    let mut session = engine.session();
    let out = session.turn("Hi, I want a great movie for tonight").unwrap();
    assert!(out.turn.candidates.is_empty());
    let prompt = out.turn.prompt.unwrap();
    assert!(!prompt.contains("Movie Name") && !prompt.contains("First Sentence"), "no movie, no opening: {prompt}");
    let out = session.turn(&format!("I really loved {} , it was beautiful", movie.title)).unwrap();
    let t: &Turn = &out.turn;
    assert!(t.user.entities.iter().any(|e| e.kind == EntityKind::Movie && e.movie == Some(movie.id)));
    assert_eq!(t.candidates[0].name, movie.title);
    assert!(!t.passages.is_empty() && !t.facts.is_empty());
    let prompt = t.prompt.as_deref().unwrap();
    assert!(prompt.contains(&format!("Movie Name: {}", movie.title)), "{prompt}");
    assert!(prompt.contains(&t.passages[0].text) || prompt.contains("What viewers felt"), "{prompt}");
    assert!(prompt.ends_with(&format!("<|im_start|>assistant\nI think you would love {}.", movie.title)));
    assert!(ecr_respond::TokenCounter::count(&ecr_respond::EstimateCounter, prompt) <= 400);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn factual_consistency_on_the_real_kg() {
    use ecr_respond::metrics::RecommendedMovie;
    let f = fixture();
    let idx = ecr_respond::KnowledgeIndex::new(&f.res.catalogue, &f.res.kg, &f.res.linker);
    let fc = ecr_respond::FactChecker::new(&f.res.kg, &f.res.catalogue, &f.res.linker, &idx);
    let m = f.res.catalogue.movies().iter().find(|m| m.title == "Titanic (1997)").expect("Titanic in the catalogue");
    let movie = RecommendedMovie { item: f.res.linker.movie_entity(m.id).unwrap(), name: m.title.clone() };
    let ok = fc.claims("Titanic is James Cameron's epic with Leonardo DiCaprio and Kate Winslet.", &movie, &[]);
    assert_eq!(ok.len(), 3, "{ok:?}");
    assert!(ok.iter().all(|c| c.supported), "{ok:?}");
    let bad = fc.claims("Titanic stars Tom Cruise and was made by Pixar.", &movie, &[]);
    assert_eq!(
        bad.iter().map(|c| (c.name.as_str(), c.supported)).collect::<Vec<_>>(),
        vec![("Tom Cruise", false), ("Pixar", false)]
    );
    // Named by the user first: not the response's claim.
    assert!(fc.claims("Tom Cruise is not in it.", &movie, &["I like Tom Cruise".into()]).is_empty());
}

#[test]
fn the_no_knowledge_ablation_builds_no_database_and_prompts_without_knowledge() {
    let f = fixture();
    let dir = tmp("ablation");
    let recipe = format!(
        r#"
{head}
[stages.retrieve]
use = "retriever"
with = {{ model_dir = "{model}", index_dir = "{index}", reviews = false, facts = false }}
[stages.prompt]
use = "prompt_builder"
"#,
        head = recipe_head("respond-no-knowledge"),
        model = root().join("models/all-MiniLM-L6-v2").display(),
        index = dir.join("index").display(),
    );
    let path = dir.join("r.toml");
    std::fs::write(&path, recipe).unwrap();
    let engine = ecr_engine::Engine::from_recipe_with(&path, &registry()).unwrap();
    assert!(!dir.join("index").exists(), "no review database for a recipe without reviews");
    let titanic = f.res.catalogue.movies().iter().find(|m| m.title == "Titanic (1997)").unwrap();
    let out = engine.session().turn(&format!("I loved {}", titanic.title)).unwrap();
    let prompt = out.turn.prompt.unwrap();
    assert!(prompt.contains("Movie Name: Titanic (1997)"), "{prompt}");
    assert!(!prompt.contains("Related") && !prompt.contains("viewers felt"), "{prompt}");
    let _ = std::fs::remove_dir_all(&dir);
}
