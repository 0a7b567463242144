//! Response metrics (ECR_REFERENCE.md §5.2) and the records they are
//! computed from.
//!
//! * Dist-n: distinct n-grams over all responses / number of non-empty responses.
//! * BLEU-n: NLTK's `sentence_bleu` with all weight on order n, one reference,
//!   no smoothing, summed and divided by the number of non-empty responses.
//!   NLTK returns 0 when no unigram matches; otherwise the score is the
//!   brevity penalty times the clipped n-gram precision.
//! * `mean_length`: words per response; `names_movie`: share of responses
//!   with a recommended movie that write its title.
//! * `factual_consistency`: of the people, companies and movies a response
//!   names (linked with the data layer's linker), besides the recommended
//!   movie and anything the dialogue itself mentioned, the share that the KG
//!   (one hop from the movie) or movie_info (director, writer, star) supports.
//!   An entity counts as a person or company when the KG has it as the tail
//!   of a people/company relation of some movie; genres, countries and
//!   languages are not claims.
//! * `emotion_intensity`: feeling words per 100 words of what the model wrote
//!   (the response after the recipe's opening sentence, which is the same for
//!   every recipe), averaged over responses ([`EmotionLexicon::intensity`]).

use crate::emotion::EmotionLexicon;
use crate::error::{RespondError, Result};
use crate::knowledge::{KnowledgeIndex, Support, name_key, support};
use ecr_data::{Catalogue, Kg, Linker};
use ecr_engine::{EntityKind, Fact, Passage};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

/// Relations whose tails are people or companies.
pub const PEOPLE_AND_COMPANIES: [&str; 13] = [
    "starring",
    "director",
    "writer",
    "producer",
    "executiveProducer",
    "musicComposer",
    "composer",
    "cinematography",
    "editing",
    "productionCompany",
    "distributor",
    "company",
    "narrator",
];

/// The movie a response recommends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommendedMovie {
    /// KG entity id.
    pub item: u32,
    /// Title with year.
    pub name: String,
}

/// One evaluated response with what produced it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResponseRecord {
    /// Where it comes from (e.g. `test:<conversation>:<message index>`).
    pub id: String,
    /// The dialogue before the response, oldest first, movies written out.
    pub context: Vec<String>,
    /// The movie it recommends, if the turn had one.
    pub movie: Option<RecommendedMovie>,
    /// The generator prompt.
    pub prompt: String,
    /// The retrieved review passages.
    pub passages: Vec<Passage>,
    /// The retrieved facts.
    pub facts: Vec<Fact>,
    /// The generated response.
    pub response: String,
    /// The opening sentence the response starts with (the prompt builder's, not generated).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub opening: String,
    /// The gold response of the dataset.
    pub gold: String,
}

/// The metrics over a set of responses (keys as `ecr eval --json` writes them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseMetrics {
    /// Dist-1.
    #[serde(rename = "dist@1")]
    pub dist1: f64,
    /// Dist-2.
    #[serde(rename = "dist@2")]
    pub dist2: f64,
    /// Dist-3.
    #[serde(rename = "dist@3")]
    pub dist3: f64,
    /// Dist-4.
    #[serde(rename = "dist@4")]
    pub dist4: f64,
    /// BLEU-1.
    #[serde(rename = "bleu@1")]
    pub bleu1: f64,
    /// BLEU-2.
    #[serde(rename = "bleu@2")]
    pub bleu2: f64,
    /// BLEU-3.
    #[serde(rename = "bleu@3")]
    pub bleu3: f64,
    /// BLEU-4.
    #[serde(rename = "bleu@4")]
    pub bleu4: f64,
    /// Mean words per response.
    pub mean_length: f64,
    /// Share of responses with a recommended movie that name it.
    pub names_movie: f64,
    /// Share of claims (entities tied to the movie) that are supported (1 when there are none).
    pub factual_consistency: f64,
    /// Number of claims checked.
    pub claims: usize,
    /// Feeling words per 100 generated words, mean over responses (opening sentence excluded).
    pub emotion_intensity: f64,
    /// The same with each feeling word counted once per response (repetition discounted).
    pub emotion_intensity_distinct: f64,
    /// Number of responses.
    pub n: usize,
}

/// The words of a response as ECR scores them: special tokens removed, whitespace-split.
pub fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().filter(|w| !matches!(*w, "<pad>" | "<|endoftext|>" | "<|im_end|>")).collect()
}

/// Dist-n: distinct n-grams over all `responses` / non-empty responses (0 when none).
pub fn dist_n(responses: &[Vec<&str>], n: usize) -> f64 {
    let n_sent = responses.iter().filter(|r| !r.is_empty()).count();
    if n_sent == 0 {
        return 0.0;
    }
    let set: HashSet<&[&str]> = responses.iter().flat_map(|r| r.windows(n)).collect();
    set.len() as f64 / n_sent as f64
}

fn counts<'a>(w: &[&'a str], n: usize) -> HashMap<Vec<&'a str>, usize> {
    let mut c = HashMap::new();
    for g in w.windows(n) {
        *c.entry(g.to_vec()).or_default() += 1;
    }
    c
}

/// Clipped n-gram matches of `hyp` against `reference`, and the number of n-grams of `hyp`.
fn matches(hyp: &[&str], reference: &[&str], n: usize) -> (usize, usize) {
    let r = counts(reference, n);
    let h = counts(hyp, n);
    let m = h.iter().map(|(g, &c)| c.min(r.get(g).copied().unwrap_or(0))).sum();
    (m, hyp.len().saturating_sub(n - 1))
}

/// NLTK's `sentence_bleu(reference, hyp, weights)` with all weight on order
/// `n`, no smoothing: 0 without a unigram match, else the brevity penalty
/// times the clipped n-gram precision (0 when `hyp` has no n-gram).
pub fn sentence_bleu_n(hyp: &[&str], reference: &[&str], n: usize) -> f64 {
    if hyp.is_empty() || matches(hyp, reference, 1).0 == 0 {
        return 0.0;
    }
    let (m, total) = matches(hyp, reference, n);
    let p = m as f64 / total.max(1) as f64;
    let (c, r) = (hyp.len() as f64, reference.len() as f64);
    let bp = if c > r { 1.0 } else { (1.0 - r / c).exp() };
    bp * p
}

/// Whether `response` writes the movie's title (with or without its year),
/// case-insensitively, on word boundaries.
pub fn names_movie(response: &str, title: &str) -> bool {
    let (bare, _) = ecr_data::text::split_year(title);
    let hay = response.to_lowercase();
    [title.to_lowercase(), bare.to_lowercase()].iter().filter(|t| !t.is_empty()).any(|t| {
        hay.match_indices(t.as_str()).any(|(i, _)| {
            let before = hay[..i].chars().next_back();
            let after = hay[i + t.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
    })
}

/// One entity a response ties to the recommended movie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// Display name.
    pub name: String,
    /// KG entity id.
    pub entity: Option<u32>,
    /// Whether the KG or movie_info supports it.
    pub supported: bool,
}

/// Finds and checks the claims of responses.
pub struct FactChecker<'a> {
    kg: &'a Kg,
    catalogue: &'a Catalogue,
    linker: &'a Linker,
    index: &'a KnowledgeIndex,
    claimable: HashSet<u32>,
}

impl<'a> FactChecker<'a> {
    /// A checker over the KG, catalogue and linker.
    pub fn new(kg: &'a Kg, catalogue: &'a Catalogue, linker: &'a Linker, index: &'a KnowledgeIndex) -> Self {
        let rels: HashSet<u16> = kg
            .relations
            .iter()
            .enumerate()
            .filter(|(_, r)| PEOPLE_AND_COMPANIES.contains(&r.as_str()))
            .map(|(i, _)| i as u16)
            .collect();
        let rels = &rels;
        let claimable = kg
            .edges
            .iter()
            .flat_map(|(&h, l)| l.iter().filter(move |&&(r, t)| rels.contains(&r) && t != h).map(|&(_, t)| t))
            .collect();
        FactChecker { kg, catalogue, linker, index, claimable }
    }

    /// The people, companies and movies `response` names besides `movie` and
    /// what `context` mentions, each checked against the movie's support.
    pub fn claims(&self, response: &str, movie: &RecommendedMovie, context: &[String]) -> Vec<Claim> {
        self.claims_against(response, movie, &self.support(movie.item), context)
    }

    /// What supports claims about `item` (computed once per movie when many texts are checked).
    pub fn support(&self, item: u32) -> Support {
        support(self.kg, self.catalogue, self.index, item)
    }

    /// [`FactChecker::claims`] against the movie's support `sup` ([`FactChecker::support`]).
    pub fn claims_against(
        &self,
        response: &str,
        movie: &RecommendedMovie,
        sup: &Support,
        context: &[String],
    ) -> Vec<Claim> {
        let said: HashSet<String> =
            context.iter().flat_map(|c| self.linker.link(c)).map(|m| name_key(&m.name)).collect();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for m in self.linker.link(response) {
            let key = name_key(&m.name);
            let is_movie = m.kind == EntityKind::Movie;
            let is_person_or_company = m.entity.is_some_and(|e| self.claimable.contains(&e));
            let is_rec =
                m.entity == Some(movie.item) || key == name_key(&movie.name) || names_movie(&m.name, &movie.name);
            if !(is_movie || is_person_or_company) || is_rec || said.contains(&key) || !seen.insert(key) {
                continue;
            }
            let name = crate::knowledge::display_name(&m.name);
            out.push(Claim { supported: sup.supports(m.entity, &name), name, entity: m.entity });
        }
        out
    }

    /// Every metric over `records`.
    pub fn metrics(&self, records: &[ResponseRecord]) -> ResponseMetrics {
        let hyps: Vec<Vec<&str>> = records.iter().map(|r| words(&r.response)).collect();
        let refs: Vec<Vec<&str>> = records.iter().map(|r| words(&r.gold)).collect();
        let n_sent = hyps.iter().filter(|h| !h.is_empty()).count();
        let bleu = |n: usize| {
            if n_sent == 0 {
                return 0.0;
            }
            hyps.iter().zip(&refs).map(|(h, r)| sentence_bleu_n(h, r, n)).sum::<f64>() / n_sent as f64
        };
        let with_movie: Vec<&ResponseRecord> = records.iter().filter(|r| r.movie.is_some()).collect();
        let named =
            with_movie.iter().filter(|r| r.movie.as_ref().is_some_and(|m| names_movie(&r.response, &m.name))).count();
        let claims: Vec<Claim> = with_movie
            .iter()
            .flat_map(|r| r.movie.as_ref().map(|m| self.claims(&r.response, m, &r.context)).unwrap_or_default())
            .collect();
        let supported = claims.iter().filter(|c| c.supported).count();
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        ResponseMetrics {
            dist1: dist_n(&hyps, 1),
            dist2: dist_n(&hyps, 2),
            dist3: dist_n(&hyps, 3),
            dist4: dist_n(&hyps, 4),
            bleu1: bleu(1),
            bleu2: bleu(2),
            bleu3: bleu(3),
            bleu4: bleu(4),
            mean_length: ratio(hyps.iter().map(Vec::len).sum(), records.len()),
            names_movie: ratio(named, with_movie.len()),
            factual_consistency: if claims.is_empty() { 1.0 } else { ratio(supported, claims.len()) },
            claims: claims.len(),
            emotion_intensity: emotion_intensity(records),
            emotion_intensity_distinct: mean_over_responses(records, EmotionLexicon::distinct_intensity),
            n: records.len(),
        }
    }
}

/// Mean [`EmotionLexicon::intensity`] of the generated part of each response (0 when none has one).
pub fn emotion_intensity(records: &[ResponseRecord]) -> f64 {
    mean_over_responses(records, EmotionLexicon::intensity)
}

/// Mean of a lexicon measure over what the model wrote (the response after its opening sentence).
fn mean_over_responses(records: &[ResponseRecord], f: fn(&EmotionLexicon, &str) -> Option<f64>) -> f64 {
    let lexicon = EmotionLexicon::default();
    let v: Vec<f64> = records
        .iter()
        .filter_map(|r| f(&lexicon, r.response.strip_prefix(r.opening.as_str()).unwrap_or(&r.response)))
        .collect();
    if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
}

/// Write each record as one JSON line.
pub fn write_jsonl(path: &Path, records: &[ResponseRecord]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| RespondError::io(path, e))?);
    for r in records {
        let line = serde_json::to_string(r).map_err(|e| RespondError::Invalid(e.to_string()))?;
        writeln!(f, "{line}").map_err(|e| RespondError::io(path, e))?;
    }
    f.flush().map_err(|e| RespondError::io(path, e))
}

fn cell(s: &str) -> String {
    ecr_data::text::collapse_ws(s).replace('|', "\\|")
}

/// A Markdown table of the first `n` records: the last context utterance,
/// the movie, the response and the gold response side by side.
pub fn markdown_sample(records: &[ResponseRecord], n: usize) -> String {
    let mut out = String::from("| # | dialogue (last utterance) | movie | response | gold |\n|---|---|---|---|---|\n");
    for (i, r) in records.iter().take(n).enumerate() {
        let last = r.context.last().map_or("", String::as_str);
        let movie = r.movie.as_ref().map_or("", |m| m.name.as_str());
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            i + 1,
            cell(last),
            cell(movie),
            cell(&r.response),
            cell(&r.gold)
        ));
    }
    out
}

/// Write [`markdown_sample`] of the first 10 records to `path`.
pub fn write_markdown_sample(path: &Path, records: &[ResponseRecord]) -> Result<()> {
    std::fs::write(path, markdown_sample(records, 10)).map_err(|e| RespondError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knowledge::tests::world;

    fn w(s: &str) -> Vec<&str> {
        words(s)
    }

    #[test]
    fn dist_counts_distinct_ngrams_per_response() {
        let r = vec![w("a b a b"), w("a b c"), w("")];
        // unigrams {a, b, c} = 3 over 2 non-empty; bigrams {ab, ba, bc} = 3; trigrams {aba, bab, abc} = 3; 4-grams {abab} = 1.
        assert_eq!(dist_n(&r, 1), 1.5);
        assert_eq!(dist_n(&r, 2), 1.5);
        assert_eq!(dist_n(&r, 3), 1.5);
        assert_eq!(dist_n(&r, 4), 0.5);
        assert_eq!(dist_n(&[], 1), 0.0);
    }

    #[test]
    fn bleu_matches_nltk_by_hand() {
        // hyp 6 words, ref 7: BP = exp(1 - 7/6) = 0.846482.
        let hyp = w("the cat sat on the mat");
        let reference = w("the cat is sitting on the mat");
        let bp = (1.0f64 - 7.0 / 6.0).exp();
        // Unigrams: the×2 (ref has 2), cat, on, mat match; sat not: 5/6.
        assert!((sentence_bleu_n(&hyp, &reference, 1) - bp * 5.0 / 6.0).abs() < 1e-12);
        // Bigrams: "the cat", "on the", "the mat" match of 5: 3/5.
        assert!((sentence_bleu_n(&hyp, &reference, 2) - bp * 3.0 / 5.0).abs() < 1e-12);
        // Trigrams: "on the mat" of 4.
        assert!((sentence_bleu_n(&hyp, &reference, 3) - bp * 1.0 / 4.0).abs() < 1e-12);
        assert_eq!(sentence_bleu_n(&hyp, &reference, 4), 0.0);
        // Longer hypothesis: no penalty; clipping counts "the" at most twice.
        let hyp = w("the the the cat sat on the mat");
        assert!((sentence_bleu_n(&hyp, &reference, 1) - 5.0 / 8.0).abs() < 1e-12);
        // No unigram match at all: 0 whatever the order.
        assert_eq!(sentence_bleu_n(&w("x y"), &reference, 1), 0.0);
        assert_eq!(sentence_bleu_n(&w(""), &reference, 1), 0.0);
        // Too short for the order: precision 0/1.
        assert_eq!(sentence_bleu_n(&w("the"), &reference, 2), 0.0);
    }

    #[test]
    fn movie_names_are_found_on_word_boundaries() {
        assert!(names_movie("You should watch titanic tonight", "Titanic (1997)"));
        assert!(names_movie("Titanic (1997) is great", "Titanic (1997)"));
        assert!(!names_movie("Titanics are ships", "Titanic (1997)"));
        assert!(!names_movie("A nice film", "Titanic (1997)"));
    }

    fn record(response: &str, gold: &str, movie: Option<(u32, &str)>) -> ResponseRecord {
        ResponseRecord {
            id: "t".into(),
            context: vec!["I like Jaws (1975) a lot".into()],
            movie: movie.map(|(item, name)| RecommendedMovie { item, name: name.into() }),
            response: response.into(),
            gold: gold.into(),
            ..Default::default()
        }
    }

    #[test]
    fn factual_consistency_flags_unsupported_people_on_hand_made_responses() {
        let (cat, kg, linker) = world();
        let idx = KnowledgeIndex::new(&cat, &kg, &linker);
        let fc = FactChecker::new(&kg, &cat, &linker, &idx);
        let titanic = RecommendedMovie { item: 0, name: "Titanic (1997)".into() };
        let ctx = vec!["I like Jaws (1975) a lot".to_string()];
        // Supported: KG starring (Kate Winslet), director (James Cameron).
        let c = fc.claims("Titanic stars Kate Winslet and was directed by James Cameron.", &titanic, &ctx);
        assert_eq!(
            c.iter().map(|c| (c.name.as_str(), c.supported)).collect::<Vec<_>>(),
            vec![("Kate Winslet", true), ("James Cameron", true)]
        );
        // Unsupported: Roy Scheider (Jaws' star) and Steven Spielberg (Jaws' director).
        let c = fc.claims("Titanic has Roy Scheider, directed by Steven Spielberg!", &titanic, &ctx);
        assert_eq!(c.iter().filter(|c| !c.supported).count(), 2, "{c:?}");
        // The movie the user mentioned is not a claim; the recommended movie is not either.
        assert!(fc.claims("Like Jaws, Titanic (1997) is great.", &titanic, &ctx).is_empty());
        // Studios count: 20th Century Fox is Titanic's, Universal Pictures is not.
        let c = fc.claims("Made by 20th Century Fox, not Universal Pictures.", &titanic, &ctx);
        assert_eq!(c.iter().map(|c| c.supported).collect::<Vec<_>>(), vec![true, false]);

        let records = vec![
            record("Titanic stars Kate Winslet .", "you should see titanic", Some((0, "Titanic (1997)"))),
            record("It has Roy Scheider .", "titanic stars kate winslet", Some((0, "Titanic (1997)"))),
            record("hello there", "hello", None),
        ];
        let m = fc.metrics(&records);
        assert_eq!((m.n, m.claims), (3, 2));
        assert_eq!(m.factual_consistency, 0.5);
        assert_eq!(m.names_movie, 0.5);
        assert!((m.mean_length - 12.0 / 3.0).abs() < 1e-12, "5 + 5 + 2 words");
        // Dist-1: {Titanic, stars, Kate, Winslet, ., It, has, Roy, Scheider, hello, there} = 11 over 3.
        assert!((m.dist1 - 11.0 / 3.0).abs() < 1e-12);
        let json = serde_json::to_value(&m).unwrap();
        // Intensity: r0 "Titanic stars Kate Winslet ." 0 of 5 words, r1 0 of 4, r2 0 of 2.
        assert_eq!(m.emotion_intensity, 0.0);
        let mut moved = record("I think you would love it. It made me cry, deeply moving", "", None);
        moved.opening = "I think you would love it.".into();
        // The opening's "love" is not the model's: cry, deeply, moving = 3 of 6 words.
        assert!((emotion_intensity(&[moved]) - 50.0).abs() < 1e-12);
        // Repetition raises the intensity, not its distinct variant: great great sad = 3 and 2 of 4.
        let mut again = record("Great great, so sad", "", None);
        again.opening = String::new();
        let again = [again];
        assert!((emotion_intensity(&again) - 75.0).abs() < 1e-12);
        assert!((mean_over_responses(&again, EmotionLexicon::distinct_intensity) - 50.0).abs() < 1e-12);
        for k in [
            "dist@1",
            "dist@4",
            "bleu@1",
            "bleu@4",
            "mean_length",
            "names_movie",
            "factual_consistency",
            "emotion_intensity",
            "emotion_intensity_distinct",
            "n",
        ] {
            assert!(json.get(k).is_some(), "{k} in {json}");
        }
        // BLEU-1 by hand: r0: hyp 5 words vs ref 4, matches none case-sensitively ("Titanic" vs "titanic")
        // -> 0; r1: hyp 4, ref 4, no match -> 0; r2: "hello" matches, BP 1 (2 > 1), 1/2.
        assert!((m.bleu1 - 0.5 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn records_are_written_as_jsonl_and_markdown() {
        let dir = std::env::temp_dir().join(format!("ecr-respond-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let recs: Vec<ResponseRecord> =
            (0..12).map(|i| record(&format!("response {i} | pipe"), "gold", Some((0, "Titanic (1997)")))).collect();
        write_jsonl(&dir.join("r.jsonl"), &recs).unwrap();
        let back: Vec<ResponseRecord> = std::fs::read_to_string(dir.join("r.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, recs);
        write_markdown_sample(&dir.join("s.md"), &recs).unwrap();
        let md = std::fs::read_to_string(dir.join("s.md")).unwrap();
        assert_eq!(md.lines().count(), 12, "header, rule and 10 rows");
        assert!(md.contains("| 1 | I like Jaws (1975) a lot | Titanic (1997) | response 0 \\| pipe | gold |"), "{md}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
