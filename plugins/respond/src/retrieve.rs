//! The retriever: for the top recommended items, the review sentences most
//! relevant to the dialogue, the KG / movie_info facts, and the entities
//! the movie's reviews talk about.
//!
//! * A movie with reviews: its `k` sentences most similar to the dialogue
//!   (exact dot product over its own sentences, a few hundred at most).
//! * A movie without reviews (most of the catalogue): emotional sentences
//!   of reviews of *other* movies, found through the HNSW index with a query
//!   that mixes the dialogue and the movie's description (title, genres,
//!   plot), re-ranked by dialogue similarity plus the similarity of the two
//!   movies' descriptions, at most `per_movie` per film. Such a passage's
//!   `item` is the film it is about and its `source` says
//!   `similar to <target>: review of <film> | <review>`, so a prompt can
//!   never attribute it to the recommended movie.

use crate::error::Result;
use crate::knowledge::{KnowledgeIndex, movie_facts};
use crate::reviewdb::{ReviewDb, dot, movie_description};
use ecr_data::{Catalogue, Kg, Linker};
use ecr_engine::{Candidate, Fact, Passage, Utterance};
use ecr_neural::TextEncoder;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// What the retriever looks up (the recipe's `[stages.retrieve.with]`, minus paths).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrieveOptions {
    /// How many of the top candidates to retrieve for.
    pub items: usize,
    /// Review passages: off for the no-knowledge and no-reviews ablations.
    pub reviews: bool,
    /// Sentences of the movie's own reviews.
    pub k: usize,
    /// Sentences of similar movies' reviews when the movie has none.
    pub similar_k: usize,
    /// At most this many similar-movie sentences per film.
    pub per_movie: usize,
    /// HNSW search width.
    pub ef: usize,
    /// History utterances before the user's that make the dialogue context.
    pub context_turns: usize,
    /// KG and movie_info facts: off for the no-knowledge ablation.
    pub facts: bool,
    /// KG relations rendered as facts, in order.
    pub relations: Vec<String>,
    /// At most this many facts per item (0: no limit).
    pub max_facts: usize,
    /// Entities the movie's reviews mention (at least twice), at most this many.
    pub entities: usize,
}

impl Default for RetrieveOptions {
    fn default() -> Self {
        RetrieveOptions {
            items: 1,
            reviews: true,
            k: 3,
            similar_k: 3,
            per_movie: 2,
            ef: 96,
            context_turns: 2,
            facts: true,
            relations: crate::knowledge::ECR_RELATIONS.iter().map(|s| s.to_string()).collect(),
            max_facts: 8,
            entities: 4,
        }
    }
}

/// Where a passage comes from, as written in [`Passage::source`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassageSource {
    /// The film the sentence is about (its title with year).
    pub film: String,
    /// For a sentence about another film: the recommended movie it stands in for.
    pub similar_to: Option<String>,
    /// The review it was taken from.
    pub review: String,
}

impl PassageSource {
    /// The `source` string: `review of <film> | <review>` or
    /// `similar to <target>: review of <film> | <review>`.
    pub fn render(&self) -> String {
        match &self.similar_to {
            None => format!("review of {} | {}", self.film, self.review),
            Some(t) => format!("similar to {t}: review of {} | {}", self.film, self.review),
        }
    }

    /// Parse a `source` written by [`PassageSource::render`].
    pub fn parse(s: &str) -> Option<Self> {
        let (head, review) = s.rsplit_once(" | ")?;
        let (similar_to, rest) = match head.strip_prefix("similar to ") {
            Some(r) => {
                let (t, rest) = r.split_once(": review of ")?;
                (Some(t.to_string()), rest)
            }
            None => (None, head.strip_prefix("review of ")?),
        };
        Some(PassageSource { film: rest.to_string(), similar_to, review: review.to_string() })
    }
}

/// What the retriever found for one turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Retrieved {
    /// Review sentences, the movie's own first (best first), then similar movies'.
    pub passages: Vec<Passage>,
    /// Facts about the items.
    pub facts: Vec<Fact>,
    /// Entities the items' reviews talk about (display names).
    pub entities: Vec<String>,
}

/// The shared resources a retrieval needs, by reference.
#[derive(Clone, Copy)]
pub struct World<'a> {
    /// The KG.
    pub kg: &'a Kg,
    /// The catalogue.
    pub catalogue: &'a Catalogue,
    /// The linker (writes `@<id>` mentions out as titles).
    pub linker: &'a Linker,
    /// The sentence encoder (the one that embedded the database).
    pub encoder: &'a TextEncoder,
}

/// The retriever: the review database and the maps over the KG.
pub struct Retriever {
    /// None: facts only (the review options are off).
    db: Option<Arc<ReviewDb>>,
    index: KnowledgeIndex,
    /// KG entity of each database movie (None: not in the KG; never used as a similar film).
    movie_entity: Vec<Option<u32>>,
    options: RetrieveOptions,
}

/// The dialogue context: the last `turns` history utterances and the user's
/// text, movies written out, one line each.
pub fn context_text(linker: &Linker, history: &[Utterance], user: &str, turns: usize) -> String {
    let start = history.len().saturating_sub(turns);
    history[start..]
        .iter()
        .map(|u| u.text.as_str())
        .chain(std::iter::once(user))
        .map(|t| linker.write_out_movies(t))
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Retriever {
    /// A retriever of facts only (no review database: `options.reviews` is ignored).
    pub fn facts_only(world: World<'_>, options: RetrieveOptions) -> Self {
        let index = KnowledgeIndex::new(world.catalogue, world.kg, world.linker);
        Retriever { db: None, index, movie_entity: Vec::new(), options }
    }

    /// A retriever over `db`; `world` must be the resources the database was built with.
    pub fn new(db: Arc<ReviewDb>, world: World<'_>, options: RetrieveOptions) -> Result<Self> {
        if db.encoder_id() != world.encoder.id() {
            return Err(crate::RespondError::Invalid(format!(
                "the review database {} was embedded by {}, not by the configured encoder {}: rebuild it",
                db.dir().display(),
                db.encoder_id(),
                world.encoder.id()
            )));
        }
        let index = KnowledgeIndex::new(world.catalogue, world.kg, world.linker);
        let movie_entity = movie_entities(&db, world.linker);
        Ok(Retriever { db: Some(db), index, movie_entity, options })
    }

    /// The database, unless the retriever is facts-only.
    pub fn db(&self) -> Option<&ReviewDb> {
        self.db.as_deref()
    }

    /// The KG maps.
    pub fn index(&self) -> &KnowledgeIndex {
        &self.index
    }

    /// The options.
    pub fn options(&self) -> &RetrieveOptions {
        &self.options
    }

    /// The database movie of a KG item, if it has reviews.
    pub fn db_movie(&self, item: u32) -> Option<usize> {
        let db = self.db.as_deref()?;
        self.index.redial_ids(item).iter().find_map(|&r| db.movie_of_redial(r))
    }

    /// Retrieve for the top candidates given the dialogue so far.
    pub fn retrieve(
        &self,
        world: World<'_>,
        candidates: &[Candidate],
        history: &[Utterance],
        user: &str,
    ) -> Result<Retrieved> {
        let _span = tracing::debug_span!("retrieve", candidates = candidates.len()).entered();
        let o = &self.options;
        let items = &candidates[..candidates.len().min(o.items)];
        let mut out = Retrieved::default();
        if items.is_empty() {
            return Ok(out);
        }
        if o.facts {
            for c in items {
                out.facts.extend(movie_facts(
                    world.kg,
                    world.catalogue,
                    &self.index,
                    c.item,
                    &c.name,
                    &o.relations,
                    o.max_facts,
                ));
            }
        }
        let (true, Some(db)) = (o.reviews, self.db.as_deref()) else { return Ok(out) };
        // One encoder call: the context, then the description of each item without reviews.
        let context = context_text(world.linker, history, user, o.context_turns);
        let mut texts = vec![context];
        let without: Vec<&Candidate> = items.iter().filter(|c| self.db_movie(c.item).is_none()).collect();
        for c in &without {
            let d = self.index.redial_ids(c.item).iter().find_map(|&r| movie_description(world.catalogue, r));
            texts.push(d.unwrap_or_else(|| c.name.clone()));
        }
        let vecs = world.encoder.embed(&texts)?;
        let ctx = &vecs[0];
        let mut desc_of: HashMap<u32, &[f32]> = HashMap::new();
        for (c, v) in without.iter().zip(&vecs[1..]) {
            desc_of.insert(c.item, v);
        }
        for c in items {
            match self.db_movie(c.item) {
                Some(m) => {
                    out.passages.extend(self.own_passages(db, m, c, ctx));
                    out.entities.extend(self.review_entities(db, world.kg, m, c.item));
                }
                None => out.passages.extend(self.similar_passages(db, c, ctx, desc_of[&c.item])),
            }
        }
        out.entities.dedup();
        Ok(out)
    }

    fn own_passages(&self, db: &ReviewDb, movie: usize, c: &Candidate, ctx: &[f32]) -> Vec<Passage> {
        db.exact(ctx, db.movie_sentences(movie), self.options.k)
            .into_iter()
            .map(|(i, score)| sentence_passage(db, i, c.item, score, None))
            .collect()
    }

    fn similar_passages(&self, db: &ReviewDb, c: &Candidate, ctx: &[f32], desc: &[f32]) -> Vec<Passage> {
        similar_sentences(db, &self.movie_entity, c.item, ctx, desc, &self.options)
            .into_iter()
            .map(|(i, film, score)| sentence_passage(db, i, film, score, Some(&c.name)))
            .collect()
    }

    /// The entities the movie's reviews mention at least twice, most
    /// mentioned first (ECR's per-movie review entities), without the movie itself.
    fn review_entities(&self, db: &ReviewDb, kg: &Kg, movie: usize, item: u32) -> Vec<String> {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for i in db.movie_sentences(movie) {
            for &e in &db.sentences()[i].entities {
                if e != item {
                    *counts.entry(e).or_default() += 1;
                }
            }
        }
        let mut v: Vec<(u32, usize)> = counts.into_iter().filter(|&(_, n)| n >= 2).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter()
            .filter_map(|(e, _)| kg.name(e).map(crate::knowledge::display_name))
            .take(self.options.entities)
            .collect()
    }
}

/// The KG entity of each movie of `db` (None: not in the KG).
pub fn movie_entities(db: &ReviewDb, linker: &Linker) -> Vec<Option<u32>> {
    db.movies().iter().map(|m| m.redial_ids.iter().find_map(|&r| linker.movie_entity(r))).collect()
}

/// Sentence `sentence` of `db` as a passage about `item`; `similar_to` names the recommended
/// movie it stands in for when it is about another film.
pub fn sentence_passage(db: &ReviewDb, sentence: usize, item: u32, score: f32, similar_to: Option<&str>) -> Passage {
    let s = &db.sentences()[sentence];
    let film = db.movies()[s.movie as usize].title.clone();
    let source = PassageSource {
        film,
        similar_to: similar_to.map(str::to_string),
        review: db.review_source(s.review).to_string(),
    };
    Passage { item, text: s.text.clone(), score, source: source.render() }
}

/// Emotional sentences of other films' reviews that stand in for `item` (a movie without reviews
/// of its own): found through the index with `ctx + desc` (the dialogue and the movie's
/// description), re-ranked by the sentence's similarity to `ctx` plus that of the two films'
/// descriptions, at most `per_movie` per film, `similar_k` in all, best first. `movie_entity`
/// maps each database movie to its KG item (None: never used). Returns
/// `(sentence, the film's item, score)`.
pub fn similar_sentences(
    db: &ReviewDb,
    movie_entity: &[Option<u32>],
    item: u32,
    ctx: &[f32],
    desc: &[f32],
    o: &RetrieveOptions,
) -> Vec<(usize, u32, f32)> {
    if o.similar_k == 0 {
        return Vec::new();
    }
    let query: Vec<f32> = ctx.iter().zip(desc).map(|(a, b)| a + b).collect();
    let sentences = db.sentences();
    let film = |i: usize| movie_entity.get(sentences[i].movie as usize).copied().flatten();
    let keep = |i: usize| sentences[i].is_emotional() && film(i).is_some_and(|e| e != item);
    let pool = (o.similar_k * o.per_movie.max(1) * 8).max(32);
    let mut hits: Vec<(usize, f32)> = db
        .search(&query, pool, o.ef.max(pool), &keep)
        .into_iter()
        .map(|(i, _)| (i, dot(ctx, db.vector(i)) + dot(desc, db.description_vector(sentences[i].movie as usize))))
        .collect();
    hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut per: HashMap<u32, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, score) in hits {
        let n = per.entry(sentences[i].movie).or_default();
        if *n >= o.per_movie.max(1) {
            continue;
        }
        *n += 1;
        let Some(f) = film(i) else { continue };
        out.push((i, f, score));
        if out.len() == o.similar_k {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_trip_and_name_the_film() {
        let own = PassageSource { film: "Jaws (1975)".into(), similar_to: None, review: "aclImdb/x.txt".into() };
        assert_eq!(own.render(), "review of Jaws (1975) | aclImdb/x.txt");
        assert_eq!(PassageSource::parse(&own.render()), Some(own));
        let sim = PassageSource {
            film: "Jaws (1975)".into(),
            similar_to: Some("Titanic (1997)".into()),
            review: "aclImdb/y.txt".into(),
        };
        assert_eq!(sim.render(), "similar to Titanic (1997): review of Jaws (1975) | aclImdb/y.txt");
        assert_eq!(PassageSource::parse(&sim.render()), Some(sim));
        assert_eq!(PassageSource::parse("nonsense"), None);
    }
}
