//! Integration tests over the real data in `../shared/data` (or `$ECR_DATA_DIR`).
//! Counts here can be checked by hand against the files (`wc -l`, a JSON viewer).

use ecr_data::emotion_source::{EmotionSource, EmotionTable};
use ecr_data::{
    Catalogue, Kg, LinkerOptions, PrepareOptions, Prepared, Resources, data_dir, linking_report, load_annotations,
    load_conversations, load_reviews, prepare,
};
use ecr_engine::{Emotion, Feedback, Role};
use std::sync::OnceLock;

fn dir() -> std::path::PathBuf {
    data_dir().expect("the shared data directory: set ECR_DATA_DIR or put shared/data beside the project")
}

fn resources() -> &'static Resources {
    static R: OnceLock<Resources> = OnceLock::new();
    R.get_or_init(|| Resources::load(&dir(), &LinkerOptions::default()).expect("resources load"))
}

fn annotations() -> &'static EmotionTable {
    static A: OnceLock<EmotionTable> = OnceLock::new();
    A.get_or_init(|| {
        let d = dir();
        EmotionTable::load_annotations(&[
            &d.join("emotion/annotations_train.jsonl"),
            &d.join("emotion/annotations_test.jsonl"),
        ])
        .expect("annotations load")
    })
}

fn prepared() -> &'static Prepared {
    static P: OnceLock<Prepared> = OnceLock::new();
    P.get_or_init(|| prepare(resources(), annotations(), &PrepareOptions::default()).expect("prepare"))
}

#[test]
fn raw_files_have_the_documented_counts() {
    let d = dir();
    let test = load_conversations(&d.join("redial/test.jsonl")).unwrap();
    assert_eq!(test.len(), 1342, "the complete official test split");
    // The training file grows as more of the official split is found (2,270, then 5,296, ...):
    // check what data/README.md promises, not one snapshot's count.
    let train = load_conversations(&d.join("redial/train.jsonl")).unwrap();
    assert!(train.len() >= 5296, "train.jsonl has {} conversations, README says 5,296", train.len());
    let test_ids: std::collections::HashSet<&str> = test.iter().map(|c| c.id.as_str()).collect();
    let train_ids: std::collections::HashSet<&str> = train.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(train_ids.len(), train.len(), "conversations are deduplicated");
    assert!(train_ids.is_disjoint(&test_ids), "no training conversation is in the test split");
    let cat = Catalogue::load(&d.join("redial")).unwrap();
    assert_eq!(cat.len(), 6924);
    assert_eq!(cat.movies().iter().filter(|m| m.dbpedia.is_some()).count(), 6112);
    assert_eq!(cat.movies().iter().filter(|m| m.info.is_some()).count(), 6583);
    // A quoted title with commas, and a double space before the year.
    assert_eq!(cat.get(79370).unwrap().title, "The Way, Way Back (2013)");
    assert_eq!(cat.get(151656).unwrap().bare_title, "Police Academy");
    let kg = Kg::load(&d.join("kg")).unwrap();
    assert_eq!(kg.len(), 31161);
    assert_eq!(kg.triple_count(), 105364);
    assert_eq!(kg.items.len(), 6281);
    assert_eq!(kg.movies.len(), 5552);
    assert_eq!(kg.relations.len(), 25);
    assert_eq!(kg.relations[24], "self_loop");
    assert_eq!(kg.name(kg.id("<http://dbpedia.org/resource/Tom_Hanks>").unwrap()), Some("Tom Hanks"));
    let reviews = load_reviews(&d.join("reviews/imdb_reviews.jsonl")).unwrap();
    assert_eq!(reviews.len(), 8407);
    assert_eq!(reviews.iter().filter(|r| r.rating == 10).count(), 1913);
    assert!(reviews.iter().all(|r| !r.text.contains("<br />")));
    let ann = load_annotations(&d.join("emotion/annotations_train.jsonl")).unwrap();
    assert_eq!(ann.len(), 5000);
    assert_eq!(ann[0].id, "train:395:2");
    assert_eq!(ann[0].labels, vec![Emotion::Like]);
    assert_eq!(load_annotations(&d.join("emotion/annotations_test.jsonl")).unwrap().len(), 1000);
}

#[test]
fn annotation_ids_point_at_seeker_messages_with_the_same_text() {
    let d = dir();
    let convs = load_conversations(&d.join("redial/train.jsonl")).unwrap();
    let by_id: std::collections::HashMap<&str, &ecr_data::Conversation> =
        convs.iter().map(|c| (c.id.as_str(), c)).collect();
    let ann = load_annotations(&d.join("emotion/annotations_train.jsonl")).unwrap();
    let mut seeker = 0;
    for a in &ann {
        let c = by_id.get(a.conversation_id.as_str()).unwrap_or_else(|| panic!("{} not in train.jsonl", a.id));
        let m = &c.messages[a.message_index];
        seeker += usize::from(c.role_of(m.sender) == Some(Role::Seeker));
    }
    assert_eq!(seeker, ann.len(), "every annotation is of a seeker message");
}

#[test]
fn preparation_splits_segments_and_emits_instances() {
    let p = prepared();
    let n = load_conversations(&dir().join("redial/train.jsonl")).unwrap().len();
    assert_eq!(p.train.conversations.len() + p.valid.conversations.len(), n);
    let share = p.valid.conversations.len() as f64 / n as f64;
    assert!((share - 0.1).abs() < 0.02, "about 10% of train.jsonl held out, got {share:.3}");
    assert_eq!(p.test.conversations.len(), 1342);
    let ts = p.test.stats();
    assert_eq!(ts.messages, 23952);
    assert_eq!(ts.turns, 15704, "consecutive messages of one sender merged");
    assert_eq!(ts.recommender_turns, 7978, "= lines of kg/unicrs_test_processed.jsonl");
    for s in [&p.train, &p.valid, &p.test] {
        let st = s.stats();
        assert_eq!(st.liked + st.disliked + st.not_said, st.instances);
        assert!(st.liked > st.disliked && st.instances > 0, "{st:?}");
        assert!(st.gold_in_kg_share > 0.9, "{st:?}");
        // Turns alternate roles.
        for d in &s.dialogues {
            assert!(d.turns.windows(2).all(|w| w[0].role != w[1].role), "{}", d.conversation_id);
        }
        // Instance feedback agrees with the questionnaire.
        for i in s.instances.iter().take(500) {
            let c = &s.conversations[i.dialogue];
            let liked = c.initiator_questions.get(&i.movie).map(|a| a.liked);
            let expect = match liked {
                Some(1) => Feedback::Liked,
                Some(0) => Feedback::Disliked,
                _ => Feedback::NotSaid,
            };
            assert_eq!(i.feedback, expect);
            assert!(i.context.iter().all(|e| e.turn < i.turn));
        }
    }
    // Validation ids never appear in train, and the split is deterministic.
    let valid: std::collections::HashSet<&str> = p.valid.conversations.iter().map(|c| c.id.as_str()).collect();
    assert!(p.train.conversations.iter().all(|c| !valid.contains(c.id.as_str())));
    let again = prepare(resources(), annotations(), &PrepareOptions::default()).unwrap();
    assert_eq!(
        again.valid.conversations.iter().map(|c| c.id.as_str()).collect::<std::collections::HashSet<_>>(),
        valid
    );
    // Seeker emotions come from the annotations: message train:395:2 is labelled "like".
    let d395 = p.train.dialogues.iter().chain(&p.valid.dialogues).find(|d| d.conversation_id == "395").unwrap();
    let t = d395.turns.iter().find(|t| t.messages.contains(&2)).unwrap();
    assert_eq!(t.role, Role::Seeker);
    assert!(t.labels.iter().any(|&(e, _)| e == Emotion::Like), "{:?}", t.labels);
    assert!(annotations().emotions("train:395:2", "").is_some());
}

#[test]
fn cooccurrence_is_row_normalised_and_from_training_dialogues_only() {
    let p = prepared();
    let c = &p.cooccurrence;
    assert_eq!(c.n, 31161);
    assert!(c.nnz() > 1000, "nnz {}", c.nnz());
    for r in 0..c.n as u32 {
        let s: f32 = c.row(r).map(|(_, v)| v).sum();
        assert!(s == 0.0 || (s - 1.0).abs() < 1e-4, "row {r} sums to {s}");
    }
    let rebuilt = ecr_data::CoOccurrence::build(c.n, &p.train.dialogues);
    assert_eq!(&rebuilt, c);
    let with_test = ecr_data::CoOccurrence::build(c.n, p.train.dialogues.iter().chain(&p.test.dialogues));
    assert_ne!(&with_test, c, "test dialogues would change it");
}

#[test]
fn linking_agrees_with_unicrs_on_the_test_split() {
    let r = linking_report(resources(), 10).unwrap();
    assert_eq!(r.rows, 7978);
    assert_eq!(r.misaligned_rows, 0);
    assert!(r.gold.recall() > 0.95, "gold recall {:.3}", r.gold.recall());
    assert!(r.context.f1() > 0.8, "context F1 {:.3}", r.context.f1());
}

#[test]
fn linker_finds_typed_titles_people_and_genres() {
    let l = &resources().linker;
    assert!(l.unknown_aliases().is_empty(), "built-in aliases name KG entities: {:?}", l.unknown_aliases());
    let names = |t: &str| l.link(t).into_iter().map(|m| m.name).collect::<Vec<_>>();
    assert_eq!(names("I loved the matrix"), vec!["The Matrix (1999)"]);
    assert_eq!(names("anything with Tom Hanks? I like comedies"), vec!["Tom Hanks", "Comedy"]);
    assert!(names("I haven't seen it, I hope you have a good weekend").is_empty(), "{:?}", names("I haven't seen it"));
    let m = &l.link("have you seen @204870")[0];
    assert_eq!(m.name, "Deadpool 2 (2018)");
    assert!(m.entity.is_some(), "null in movie_entity.json, mapped by title");
}

#[test]
fn the_entity_linker_stage_runs_in_an_engine() {
    use ecr_engine::{Engine, Registry};
    let recipe = std::env::temp_dir().join(format!("ecr-data-stage-{}.toml", std::process::id()));
    std::fs::write(
        &recipe,
        "[recipe]\nname = \"link\"\npipeline = [\"link\"]\n\n[stages.link]\nuse = \"entity_linker\"\n[stages.link.with]\nstop_words = [\"tom\"]\n",
    )
    .unwrap();
    let mut reg = Registry::new();
    reg.register(ecr_data::EntityLinkerFactory).unwrap();
    let engine = Engine::from_recipe_with(&recipe, &reg).unwrap();
    let mut s = engine.session();
    let bad = recipe.with_extension("bad.toml");
    std::fs::write(
        &bad,
        "[recipe]\nname = \"x\"\npipeline = [\"link\"]\n[stages.link]\nuse = \"entity_linker\"\nwith = { aliases = { scifi = \"Sci_Fi_Nope\" } }\n",
    )
    .unwrap();
    let err = match Engine::from_recipe_with(&bad, &reg) {
        Ok(_) => panic!("an alias to a missing entity must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("Sci_Fi_Nope") && err.contains("entity2id"), "{err}");
    std::fs::remove_file(&bad).unwrap();
    let out = s.turn("I loved The Matrix and Tom Hanks, any sci-fi?").unwrap();
    let names: Vec<&str> = out.turn.user.entities.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["The Matrix (1999)", "Tom Hanks", "Science fiction"]);
    // An unknown key is refused with the key named.
    std::fs::write(&recipe, "[recipe]\nname = \"x\"\npipeline = [\"link\"]\n[stages.link]\nuse = \"entity_linker\"\nwith = { stopwords = [] }\n").unwrap();
    let err = match Engine::from_recipe_with(&recipe, &reg) {
        Ok(_) => panic!("an unknown key must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("stopwords"), "{err}");
    std::fs::remove_file(&recipe).unwrap();
}

#[test]
fn a_data_sample_is_a_stable_fraction_of_every_split() {
    use ecr_data::replay::RedialSplits;
    let d = dir();
    let all = RedialSplits::load(&d, 1.0).unwrap();
    let fifth = RedialSplits::load(&d, 0.2).unwrap();
    for (name, whole, part) in
        [("train", &all.train, &fifth.train), ("valid", &all.valid, &fifth.valid), ("test", &all.test, &fifth.test)]
    {
        let share = part.len() as f64 / whole.len() as f64;
        assert!((0.15..0.25).contains(&share), "{name}: {} of {}", part.len(), whole.len());
        let ids: std::collections::HashSet<&str> = whole.iter().map(|c| c.id.as_str()).collect();
        assert!(part.iter().all(|c| ids.contains(c.id.as_str())), "{name}: the sample is a subset");
    }
    // The sample is part of the identity of what is trained from it.
    assert_ne!(all.fingerprint, fifth.fingerprint);
    assert_eq!(fifth.fingerprint, RedialSplits::fingerprint(&d, 0.2).unwrap());
    assert_eq!(all.fingerprint, RedialSplits::fingerprint(&d, 1.0).unwrap());
}
