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

/// The knowledge index over the fixture's resources, built once.
fn knowledge() -> &'static ecr_respond::KnowledgeIndex {
    static K: OnceLock<ecr_respond::KnowledgeIndex> = OnceLock::new();
    K.get_or_init(|| {
        let f = fixture();
        ecr_respond::KnowledgeIndex::new(&f.res.catalogue, &f.res.kg, &f.res.linker)
    })
}

/// The evaluation's fact checker over the fixture's resources.
fn fact_checker() -> ecr_respond::FactChecker<'static> {
    let f = fixture();
    ecr_respond::FactChecker::new(&f.res.kg, &f.res.catalogue, &f.res.linker, knowledge())
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
    let fc = fact_checker();
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

/// An engine whose last stage is ecr.toml's own prompt builder (its template, read from the
/// recipe), after a Lua stage that declares the knowledge fields (a fine-tuning sample brings its
/// own): what the generator's fine-tuning renders its samples through.
fn ecr_prompt_engine(dir: &Path) -> ecr_engine::Engine {
    let ecr: toml::Value = toml::from_str(&std::fs::read_to_string(root().join("recipes/ecr.toml")).unwrap()).unwrap();
    std::fs::write(dir.join("knowledge.lua"), "function run(turn) end\n").unwrap();
    let recipe = r#"
[recipe]
name = "finetune-test"
pipeline = ["knowledge", "prompt"]
[stages.knowledge]
use = "lua"
with = { script = "knowledge.lua", writes = ["candidates", "passages", "facts", "ext.review_entities"] }
[stages.prompt]
use = "prompt_builder"
"#;
    let mut recipe: toml::Value = toml::from_str(recipe).unwrap();
    recipe["stages"]["prompt"].as_table_mut().unwrap().insert("with".into(), ecr["stages"]["prompt"]["with"].clone());
    let path = dir.join("finetune-test.toml");
    std::fs::write(&path, toml::to_string(&recipe).unwrap()).unwrap();
    ecr_engine::Engine::from_recipe_with(&path, &registry()).unwrap()
}

fn sample_options(inject: f64) -> ecr_respond::finetune::FinetuneConfig {
    ecr_respond::finetune::FinetuneConfig { inject, valid_share: 0.34, ..Default::default() }
}

fn samples(inject: f64) -> Vec<ecr_respond::finetune::SampleFields> {
    samples_of(&sample_options(inject))
}

fn samples_of(config: &ecr_respond::finetune::FinetuneConfig) -> Vec<ecr_respond::finetune::SampleFields> {
    let f = fixture();
    let db = retriever().db().unwrap();
    let idx = knowledge();
    ecr_respond::finetune::sample_fields(db, &f.res, idx, config)
}

/// `target = "emotional"`: a target is the feeling sentences of one review, in order, and its
/// facts are named in them; reviews without one give no sample.
#[test]
fn emotional_targets_keep_a_reviews_feeling_sentences_and_their_facts_only() {
    use ecr_respond::finetune::TargetSentences;
    let db = retriever().db().unwrap();
    let all = samples(0.0);
    let emotional = samples_of(&ecr_respond::finetune::FinetuneConfig {
        target: TargetSentences::Emotional,
        ..sample_options(0.0)
    });
    assert!(!emotional.is_empty() && emotional.len() <= all.len());
    let feeling: std::collections::HashMap<&str, bool> =
        db.sentences().iter().map(|s| (s.text.as_str(), s.is_emotional())).collect();
    let (mut shorter, mut fewer_facts) = (0, 0);
    for s in &emotional {
        assert!(s.target.iter().all(|t| feeling[t.as_str()]), "a sentence without feeling in {:?}", s.target);
        // The same review's full target holds these sentences in the same order.
        let full = all
            .iter()
            .find(|a| a.item == s.item && s.target.iter().all(|t| a.target.contains(t)))
            .expect("an emotional target is part of one review");
        let kept: Vec<&String> = full.target.iter().filter(|t| feeling[t.as_str()]).collect();
        assert_eq!(kept, s.target.iter().collect::<Vec<_>>());
        shorter += usize::from(kept.len() < full.target.len());
        // Facts come from the kept sentences: a subset of the whole review's.
        assert!(s.facts.iter().all(|f| full.facts.contains(f)), "{:?} vs {:?}", s.facts, full.facts);
        fewer_facts += usize::from(s.facts.len() < full.facts.len());
    }
    assert!(shorter > 0, "some reviews have sentences without feeling");
    assert!(fewer_facts > 0, "some facts are named only in sentences without feeling");
}

#[test]
fn finetuning_samples_carry_the_prompt_fields_of_their_own_movie_only() {
    use ecr_respond::knowledge::{display_name, fact_sentence};
    let f = fixture();
    let db = retriever().db().unwrap();
    let idx = knowledge();
    let plain = samples(0.0);
    // One sample per kept review of a KG movie.
    let reviews: std::collections::BTreeSet<(usize, u32)> = (0..db.movies().len())
        .flat_map(|m| db.movie_sentences(m).map(move |i| (m, db.sentences()[i].review)))
        .collect();
    assert_eq!(plain.len(), reviews.len());
    assert!(plain.iter().any(|s| s.held_out) && plain.iter().any(|s| !s.held_out));
    let mut with_facts = 0;
    for s in &plain {
        let m = db.movies().iter().position(|m| m.title == s.movie).unwrap();
        assert_eq!(Some(s.item), db.movies()[m].redial_ids.iter().find_map(|&id| f.res.linker.movie_entity(id)));
        // Every fact is about this movie: a one-hop KG neighbour under the fact's relation.
        for fact in &s.facts {
            assert_eq!(fact.head, s.movie);
            let ok = idx.neighbours(&f.res.kg, s.item).any(|(r, t)| {
                f.res.kg.relations[r as usize] == fact.relation
                    && f.res.kg.name(t).map(display_name).as_deref() == Some(fact.tail.as_str())
            });
            assert!(ok, "{fact:?} is not a KG fact of {}", s.movie);
        }
        with_facts += usize::from(!s.facts.is_empty());
        // Without injection the target is exactly one review of this movie, in order; the
        // prompt's review sentences are this movie's too, from its other reviews.
        let of_review = |r: u32| -> Vec<&str> {
            db.movie_sentences(m)
                .map(|i| &db.sentences()[i])
                .filter(|x| x.review == r)
                .map(|x| x.text.as_str())
                .collect()
        };
        let review = db
            .movie_sentences(m)
            .map(|i| db.sentences()[i].review)
            .find(|&r| of_review(r) == s.target)
            .unwrap_or_else(|| panic!("the target of a {} sample is none of its reviews: {:?}", s.movie, s.target));
        for r in &s.reviews {
            let x = db.movie_sentences(m).map(|i| &db.sentences()[i]).find(|x| &x.text == r).expect("own movie");
            assert_ne!(x.review, review, "the target's own review is not in its prompt");
        }
    }
    assert!(with_facts > 0, "some reviews name the movie's people");
    // With injection p = 1 every fact becomes a sentence of the target, before its first mention.
    let injected = samples(1.0);
    for (a, b) in plain.iter().zip(&injected) {
        assert_eq!(b.target.len(), a.target.len() + a.facts.len());
        for fact in &a.facts {
            assert!(b.target.contains(&fact_sentence(fact)), "{fact:?} in {:?}", b.target);
        }
    }

    // Rendered through ecr.toml's prompt builder: the template's fields, this movie's only.
    let dir = tmp("finetune-render");
    let engine = ecr_prompt_engine(&dir);
    let titles: Vec<&str> = db.movies().iter().map(|m| m.title.as_str()).collect();
    for s in plain.iter().filter(|s| !s.facts.is_empty()).take(5) {
        let (prompt, opening) = ecr_respond::finetune::render(&engine, s).unwrap();
        assert!(prompt.contains(&format!("Movie Name: {}\n", s.movie)), "{prompt}");
        assert_eq!(opening, format!("I think you would love {}.", s.movie));
        assert!(prompt.ends_with(&format!("<|im_start|>assistant\n{opening}")), "{prompt}");
        for fact in &s.facts {
            assert!(prompt.contains(&fact_sentence(fact)), "{fact:?} missing: {prompt}");
        }
        for e in &s.entities {
            assert!(prompt.contains(e.as_str()), "{e} missing: {prompt}");
        }
        for line in prompt.lines().filter(|l| l.contains(": ")) {
            let key = line.split(": ").next().unwrap();
            assert!(
                ["Movie Name", "Related Entities", "Related Knowledge", "What viewers felt", "First Sentence"]
                    .iter()
                    .any(|k| key.ends_with(k)),
                "a line outside the template's fields: {line}"
            );
        }
        for other in titles.iter().filter(|t| **t != s.movie) {
            assert!(!prompt.contains(other), "another movie, {other}, in the prompt of {}", s.movie);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `similar_share` and `knowledge = "retrieved"` make training prompts look like inference
/// prompts for a movie without reviews: similar films' feeling sentences, marked as such, never
/// the movie's own; the retriever's facts about the movie first, then the review's.
#[test]
fn inference_like_samples_show_similar_films_and_the_retrievers_facts() {
    use ecr_respond::finetune::{FinetuneConfig, PromptKnowledge};
    use ecr_respond::knowledge::movie_facts;
    let f = fixture();
    let db = retriever().db().unwrap();
    let idx = knowledge();
    let plain = samples(0.0);
    let config = FinetuneConfig { similar_share: 0.5, knowledge: PromptKnowledge::Retrieved, ..sample_options(0.0) };
    let like = samples_of(&config);
    assert_eq!(like.len(), plain.len());
    let with_similar = like.iter().filter(|s| !s.similar.is_empty()).count();
    let share = with_similar as f64 / like.len() as f64;
    assert!((0.4..0.6).contains(&share), "share with similar films {share}");
    let titles: std::collections::HashMap<&str, usize> =
        db.movies().iter().enumerate().map(|(m, x)| (x.title.as_str(), m)).collect();
    let feeling: std::collections::HashMap<&str, bool> =
        db.sentences().iter().map(|s| (s.text.as_str(), s.is_emotional())).collect();
    let mut more_facts = 0;
    for (a, b) in plain.iter().zip(&like) {
        // Same review, same target: only the prompt changes.
        assert_eq!((a.item, &a.target, &a.entities), (b.item, &b.target, &b.entities));
        if b.similar.is_empty() {
            assert_eq!(a.reviews, b.reviews);
        } else {
            assert!(b.reviews.is_empty(), "own reviews and similar films in one prompt");
            let (mut films, config_o) = (std::collections::HashMap::<u32, usize>::new(), config.reviews.options());
            assert!(b.similar.len() <= config_o.similar_k);
            for p in &b.similar {
                let src = PassageSource::parse(&p.source).expect("a retriever source");
                assert_eq!(src.similar_to.as_deref(), Some(b.movie.as_str()));
                assert_ne!(src.film, b.movie, "a similar film is another film");
                assert!(titles.contains_key(src.film.as_str()));
                assert_ne!(p.item, b.item);
                assert!(feeling[p.text.as_str()], "a similar film's sentence expresses a feeling: {}", p.text);
                *films.entry(p.item).or_default() += 1;
            }
            assert!(films.values().all(|&n| n <= config_o.per_movie), "{films:?}");
        }
        // The retriever's facts about this movie first, then the review's not among them.
        let r = movie_facts(&f.res.kg, &f.res.catalogue, idx, b.item, &b.movie, &config.reviews.relations, 8);
        assert_eq!(&b.facts[..r.len()], &r[..]);
        assert!(a.facts.iter().all(|x| b.facts.iter().any(|y| y.relation == x.relation && y.tail == x.tail)));
        assert!(b.facts.iter().all(|x| x.head == b.movie));
        more_facts += usize::from(b.facts.len() > a.facts.len());
    }
    assert!(more_facts > plain.len() / 2, "most prompts gain the retriever's facts: {more_facts}");
    // Injection draws from the prompt's facts, the retriever's too, never the plot: with p = 1 every
    // such fact is a sentence of the target, and the targets of `plain` are unchanged.
    let all_in = samples_of(&FinetuneConfig { inject: 1.0, ..config.clone() });
    for (b, c) in like.iter().zip(&all_in) {
        let injected: Vec<&String> = c.target.iter().filter(|t| !b.target.contains(t)).collect();
        for x in b.facts.iter() {
            let sentence = ecr_respond::knowledge::fact_sentence(x);
            let plot = sentence.starts_with("Plot of ");
            assert_eq!(c.target.contains(&sentence), !plot || b.target.contains(&sentence), "{sentence}");
        }
        assert!(injected.len() <= b.facts.len(), "{injected:?}");
    }
    // Rendered: similar films under their own line, attributed to their film.
    let dir = tmp("finetune-render-similar");
    let engine = ecr_prompt_engine(&dir);
    for s in like.iter().filter(|s| !s.similar.is_empty()).take(3) {
        let (prompt, _) = ecr_respond::finetune::render(&engine, s).unwrap();
        let line = prompt.lines().find(|l| l.starts_with("What viewers felt about similar films: ")).expect(&prompt);
        // The best one at least: over the budget, the prompt builder drops similar films' first.
        assert!(line.contains(&s.similar[0].text), "{} missing: {prompt}", s.similar[0].text);
        assert!(!prompt.lines().any(|l| l.starts_with("What viewers felt: ")), "{prompt}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `drop_unsupported`: no target sentence names a person, company or movie that the KG and
/// movie_info do not tie to the review's movie, and those sentences are the only ones left out.
#[test]
fn targets_without_unsupported_claims_leave_out_exactly_the_sentences_that_make_them() {
    use ecr_respond::finetune::{FinetuneConfig, TargetSentences};
    use ecr_respond::metrics::RecommendedMovie;
    let fc = fact_checker();
    let unsupported = |item: u32, movie: &str, text: &str| {
        let rec = RecommendedMovie { item, name: movie.to_string() };
        fc.claims(text, &rec, &[]).iter().any(|c| !c.supported)
    };
    let config = FinetuneConfig { target: TargetSentences::Emotional, ..sample_options(0.0) };
    let all = samples_of(&config);
    let kept = samples_of(&FinetuneConfig { drop_unsupported: true, ..config.clone() });
    assert!(!kept.is_empty() && kept.len() <= all.len());
    for s in &kept {
        assert!(s.target.iter().all(|t| !unsupported(s.item, &s.movie, t)), "{} {:?}", s.movie, s.target);
    }
    let mut dropped = 0;
    for s in &all {
        for t in &s.target {
            let still = kept.iter().any(|k| k.item == s.item && k.target.contains(t));
            if unsupported(s.item, &s.movie, t) {
                assert!(!still, "{t:?} names an unsupported entity and was kept");
                dropped += 1;
            } else {
                assert!(still, "{t:?} makes no unsupported claim and was left out");
            }
        }
    }
    assert!(dropped > 0, "the fixture's reviews name people or films their movie's KG does not support");
}

#[test]
fn a_short_finetuning_run_lowers_the_held_out_loss_and_the_adapter_loads() {
    use ecr_respond::finetune::{ADAPTER_FILE, FinetuneConfig, train_adapter};
    let dir = tmp("finetune-train");
    let engine = ecr_prompt_engine(&dir);
    let fields = samples(0.1);
    let config = FinetuneConfig {
        lora: ecr_llm::lora::LoraConfig { rank: 4, layers: 2, dropout: 0.0, ..Default::default() },
        train: ecr_neural::fit::FitConfig {
            epochs: 2,
            batch_size: 2,
            lr: 3e-3,
            weight_decay: 0.0,
            warmup: 0.0,
            seed: 42,
        },
        max_samples: 6,
        max_valid: 3,
        max_target_tokens: 40,
        // ecr.toml's inverse token frequency weights: the training loss is weighted, the held-out
        // perplexity below is the plain cross-entropy's.
        itf: 0.2,
        ..Default::default()
    };
    let gguf = root().join("models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let t = std::time::Instant::now();
    // One decoder thread: the tests beside this one keep the cores busy.
    let load = ecr_llm::LoadOptions { threads: Some(1), ..Default::default() };
    let m = train_adapter(&config, &gguf, &load, &fields, &engine, &dir, "test", false).unwrap();
    eprintln!("short fine-tuning run: {:.1} s, {m}", t.elapsed().as_secs_f64());
    let (before, after) = (m["valid_perplexity_base"].as_f64().unwrap(), m["valid_perplexity_tuned"].as_f64().unwrap());
    assert!(after < before, "held-out perplexity {before} → {after}");
    assert_eq!((m["train_samples"].as_u64(), m["valid_samples"].as_u64()), (Some(6), Some(3)));
    let epochs = m["fit"]["epochs"].as_array().unwrap();
    assert!(
        epochs[1]["train_loss"].as_f64().unwrap() < epochs[0]["train_loss"].as_f64().unwrap(),
        "training loss falls: {epochs:?}"
    );
    // The adapter loads onto its base with the recipe's shape, and not with another rank.
    let file = dir.join(ADAPTER_FILE);
    let opts = ecr_llm::LoadOptions::default();
    ecr_llm::Llm::load_with_adapter(&gguf, &opts, &file, Some(&config.lora)).unwrap();
    let other = ecr_llm::lora::LoraConfig { rank: 8, ..config.lora.clone() };
    let Err(e) = ecr_llm::Llm::load_with_adapter(&gguf, &opts, &file, Some(&other)) else {
        panic!("an adapter of rank 4 loaded as rank 8");
    };
    let e = e.to_string();
    assert!(e.contains("rank 4") && e.contains("retrain"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The mean of `xs` (0 when empty).
fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

#[test]
fn emotion_intensity_is_higher_on_utterances_people_labelled_with_a_feeling() {
    use ecr_respond::emotion::EmotionLexicon;
    let lex = EmotionLexicon::default();
    let dir = data_dir().unwrap();
    // The annotations' test split: utterances people labelled with a feeling against the ones
    // they labelled neutral only.
    let (mut felt, mut neutral) = (Vec::new(), Vec::new());
    let text = std::fs::read_to_string(dir.join("emotion/annotations_test.jsonl")).unwrap();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let labels: Vec<&str> = v["labels"].as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
        let Some(x) = lex.intensity(v["utterance"].as_str().unwrap()) else { continue };
        if labels.iter().all(|&l| l == "neutral") {
            neutral.push(x);
        } else if !labels.contains(&"neutral") {
            felt.push(x);
        }
    }
    let (f, n) = (mean(&felt), mean(&neutral));
    eprintln!(
        "emotion intensity (feeling words per 100 words): labelled with a feeling {f:.2} ({} utterances), \
         neutral only {n:.2} ({})",
        felt.len(),
        neutral.len(),
    );
    assert!(felt.len() > 500 && neutral.len() > 100);
    assert!(f > 1.5 * n, "labelled {f:.2} vs neutral {n:.2}");
}

#[test]
fn a_finetuning_generator_without_its_adapter_says_how_to_train_it_and_refuses_candle() {
    let dir = tmp("finetune-missing");
    std::fs::write(dir.join("prompt.lua"), "function run(turn) end\n").unwrap();
    let gguf = root().join("models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let recipe = |decoder: &str| {
        format!(
            r#"
[recipe]
name = "needs-adapter"
pipeline = ["prompt", "generate"]
[stages.prompt]
use = "lua"
with = {{ script = "prompt.lua", writes = ["prompt"] }}
[stages.generate]
use = "generator"
[stages.generate.with]
model = "{}"
adapter = "adapter-here"
load = {{ decoder = "{decoder}" }}
[stages.generate.with.finetune]
max_samples = 10
"#,
            gguf.display()
        )
    };
    let mut registry = registry();
    registry.register(ecr_respond::GeneratorFactory).unwrap();
    let path = dir.join("needs-adapter.toml");
    std::fs::write(&path, recipe("fast")).unwrap();
    let Err(e) = ecr_engine::Engine::from_recipe_with(&path, &registry) else { panic!("built without its adapter") };
    let e = e.to_string();
    assert!(e.contains("adapter-here/adapter.safetensors does not exist"), "{e}");
    assert!(e.contains("ecr train -r") && e.contains("needs-adapter.toml --stage generate"), "{e}");

    std::fs::write(&path, recipe("candle")).unwrap();
    let Err(e) = ecr_engine::Recipe::load(&path, &registry) else { panic!("candle accepted with an adapter") };
    let e = e.to_string();
    assert!(e.contains("load.decoder") && e.contains("needs decoder = \"fast\""), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
