//! Entity linking: movies written `@<id>`, movie titles typed by users (with
//! or without the year), and KG entities by name, in one Aho-Corasick
//! automaton built once.
//!
//! Rules (each pinned by a unit test):
//! * `@<digits>` is a catalogue movie when the id is in the catalogue.
//! * Patterns are lowercase, matched ASCII-case-insensitively on word
//!   boundaries (the characters before and after a match are not
//!   alphanumeric); the longest match wins, then the leftmost; matches never
//!   overlap each other or an `@<id>`.
//! * Movie titles link as `Title (1999)`, `Title 1999` and bare `Title`; a bare
//!   title shared by several movies links the most-mentioned one.
//! * KG entities link by display name and by the name without its qualifier
//!   (`Western (genre)` → `western`); a shared name links the exact display
//!   name first, then the entity with the most triples. Built-in aliases
//!   (`resources/aliases.tsv`: `comedies` → Comedy, `sci-fi` → Science
//!   fiction, ...) add the genre words people type.
//! * Priority when one surface form names several things: title with year >
//!   alias > bare catalogue title > KG entity name > KG movie outside the
//!   catalogue.
//! * Stop list (`resources/stop_words.txt` plus configured words): a bare
//!   title or name that is a stop word (also after a leading "the"/"a"/"an"),
//!   or has two or fewer words that are all stop words, or is shorter than 3
//!   characters, or has no letter, does not link. Titles with a year always do.
//! * Movies map to KG entities through [`crate::kg::link_movies`].

use crate::catalogue::Catalogue;
use crate::kg::{Kg, link_movies};
use crate::text::strip_qualifier;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use ecr_engine::{EntityKind, EntityMention};
use std::collections::{HashMap, HashSet};

/// The built-in stop list.
pub const STOP_WORDS: &str = include_str!("../resources/stop_words.txt");
/// The built-in aliases (`surface<TAB>DBpedia resource name`).
pub const ALIASES: &str = include_str!("../resources/aliases.tsv");

/// Options of the linker.
#[derive(Debug, Clone)]
pub struct LinkerOptions {
    /// Link typed movie titles (not only `@<id>`).
    pub titles: bool,
    /// Link KG entities (people, genres, companies, ...) by name.
    pub entities: bool,
    /// Use the built-in aliases.
    pub aliases: bool,
    /// Extra stop words (lowercase).
    pub extra_stop_words: Vec<String>,
    /// Extra aliases: `(surface, DBpedia resource name)`.
    pub extra_aliases: Vec<(String, String)>,
    /// Words that count as stop words because people write them mostly in
    /// lowercase (see [`common_words`]); filled by [`crate::Resources::load`]
    /// from the training dialogues.
    pub common_words: HashSet<String>,
}

impl Default for LinkerOptions {
    fn default() -> Self {
        LinkerOptions {
            titles: true,
            entities: true,
            aliases: true,
            extra_stop_words: vec![],
            extra_aliases: vec![],
            common_words: HashSet::new(),
        }
    }
}

/// What a pattern links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A catalogue movie.
    Movie(u32),
    /// A KG entity (movie outside the catalogue, or any other entity).
    Entity(u32),
}

/// Pattern priority: higher wins when two sources give the same surface form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Priority {
    KgMovie,
    KgName,
    KgExactName,
    BareTitle,
    Alias,
    TitleYear,
}

/// The entity linker: built once, then `link` per utterance (microseconds).
pub struct Linker {
    ac: Option<AhoCorasick>,
    targets: Vec<Target>,
    movie_entity: HashMap<u32, u32>,
    movie_title: HashMap<u32, String>,
    kg_names: Vec<String>,
    kg_movies: HashSet<u32>,
    unknown_aliases: Vec<(String, String)>,
}

impl std::fmt::Debug for Linker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Linker({} patterns)", self.targets.len())
    }
}

/// The stop list: built-in words plus `extra`.
pub fn stop_set(extra: &[String]) -> HashSet<String> {
    STOP_WORDS
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .map(str::to_lowercase)
        .chain(extra.iter().map(|w| w.trim().to_lowercase()))
        .collect()
}

/// Whether a bare name must not link on its own (see the module docs).
pub fn is_blocked(name: &str, stop: &HashSet<String>) -> bool {
    let lower = name.to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    if lower.len() < 3 || !lower.chars().any(char::is_alphabetic) || words.is_empty() {
        return true;
    }
    let words: Vec<String> = words
        .iter()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
        .filter(|w| !w.is_empty())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    if words.is_empty() {
        return true;
    }
    let content: &[&str] = match words.as_slice() {
        [first, rest @ ..] if !rest.is_empty() && matches!(*first, "the" | "a" | "an") => rest,
        all => all,
    };
    let all_stop = content.iter().all(|w| stop.contains(*w));
    stop.contains(&lower) || (content.len() == 1 && all_stop) || (content.len() <= 2 && all_stop)
}

fn norm(s: &str) -> String {
    crate::text::collapse_ws(s).to_lowercase()
}

impl Linker {
    /// Build the automaton from the catalogue and the KG.
    pub fn new(cat: &Catalogue, kg: &Kg, opts: &LinkerOptions) -> Self {
        let mut stop = stop_set(&opts.extra_stop_words);
        stop.extend(opts.common_words.iter().cloned());
        let movie_link = link_movies(cat, kg);
        let movie_entity: HashMap<u32, u32> = movie_link.iter().map(|(&m, &(e, _))| (m, e)).collect();
        let linked_entities: HashSet<u32> = movie_entity.values().copied().collect();
        // surface → (priority, tie-break key (higher wins), target)
        let mut best: HashMap<String, (Priority, i64, Target)> = HashMap::new();
        let mut offer = |surface: String, p: Priority, key: i64, t: Target| {
            if surface.is_empty() {
                return;
            }
            let e = best.entry(surface).or_insert((p, key, t));
            if (p, key) > (e.0, e.1) {
                *e = (p, key, t);
            }
        };
        if opts.titles {
            for m in cat.movies() {
                let bare = norm(&m.bare_title);
                let key = i64::from(m.mentions);
                if let Some(y) = m.year {
                    offer(format!("{bare} ({y})"), Priority::TitleYear, key, Target::Movie(m.id));
                    offer(format!("{bare} {y}"), Priority::TitleYear, key, Target::Movie(m.id));
                }
                if !is_blocked(&bare, &stop) {
                    offer(bare, Priority::BareTitle, key, Target::Movie(m.id));
                }
            }
        }
        if opts.entities {
            for id in 0..kg.len() as u32 {
                let Some(name) = kg.name(id) else { continue };
                if name.is_empty() || linked_entities.contains(&id) {
                    continue;
                }
                let key = i64::from(kg.degree(id));
                let (exact, stripped) = if kg.is_movie(id) {
                    (Priority::KgMovie, Priority::KgMovie)
                } else {
                    (Priority::KgExactName, Priority::KgName)
                };
                let full = norm(name);
                if !is_blocked(strip_qualifier(&full), &stop) {
                    offer(full.clone(), exact, key, Target::Entity(id));
                }
                let bare = strip_qualifier(&full).to_string();
                if bare != full && !is_blocked(&bare, &stop) {
                    offer(bare, stripped, key, Target::Entity(id));
                }
            }
        }
        let mut aliases: Vec<(String, String)> = Vec::new();
        if opts.aliases {
            aliases.extend(ALIASES.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(|l| {
                let (s, r) = l.split_once('\t')?;
                Some((s.to_string(), r.trim().to_string()))
            }));
        }
        aliases.extend(opts.extra_aliases.iter().cloned());
        let mut unknown_aliases = Vec::new();
        for (surface, resource) in aliases {
            let uri = format!("<http://dbpedia.org/resource/{resource}>");
            match kg.id(&uri) {
                Some(id) => offer(norm(&surface), Priority::Alias, 0, Target::Entity(id)),
                None => unknown_aliases.push((surface, resource)),
            }
        }
        let mut patterns: Vec<(String, Target)> = best.into_iter().map(|(s, (_, _, t))| (s, t)).collect();
        patterns.sort_by(|a, b| a.0.cmp(&b.0));
        let ac = (!patterns.is_empty()).then(|| {
            AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .build(patterns.iter().map(|(s, _)| s.as_str()))
                .expect("patterns are plain strings of bounded size")
        });
        let kg_names = (0..kg.len() as u32).map(|i| kg.name(i).unwrap_or_default().to_string()).collect();
        let kg_movies = (0..kg.len() as u32).filter(|&i| kg.is_movie(i)).collect();
        Linker {
            ac,
            targets: patterns.into_iter().map(|(_, t)| t).collect(),
            movie_entity,
            movie_title: cat.movies().iter().map(|m| (m.id, m.title.clone())).collect(),
            kg_names,
            kg_movies,
            unknown_aliases,
        }
    }

    /// Aliases (built-in or configured) whose DBpedia resource is not in the KG:
    /// `(surface, resource)`; they link nothing.
    pub fn unknown_aliases(&self) -> &[(String, String)] {
        &self.unknown_aliases
    }

    /// Number of patterns in the automaton.
    pub fn pattern_count(&self) -> usize {
        self.targets.len()
    }

    /// The KG entity of a catalogue movie, if it maps into the KG.
    pub fn movie_entity(&self, movie: u32) -> Option<u32> {
        self.movie_entity.get(&movie).copied()
    }

    /// The catalogue title of a movie.
    pub fn movie_title(&self, movie: u32) -> Option<&str> {
        self.movie_title.get(&movie).map(String::as_str)
    }

    /// The mention of catalogue movie `movie` at `span`.
    pub fn movie_mention(&self, movie: u32, span: Option<(usize, usize)>) -> EntityMention {
        EntityMention {
            name: self.movie_title(movie).unwrap_or_default().to_string(),
            kind: EntityKind::Movie,
            entity: self.movie_entity(movie),
            movie: Some(movie),
            span,
        }
    }

    /// Link `text`: entities in order of appearance, each with its byte span.
    pub fn link(&self, text: &str) -> Vec<EntityMention> {
        let mut taken: Vec<(usize, usize, Target)> =
            self.link_at_mentions(text).into_iter().map(|(m, (s, e))| (s, e, Target::Movie(m))).collect();
        // Names and titles: all boundary-respecting matches, longest first.
        if let Some(ac) = &self.ac {
            let mut cands: Vec<(usize, usize, Target)> = ac
                .find_overlapping_iter(text)
                .filter(|m| is_boundary(text, m.start(), m.end()))
                .map(|m| (m.start(), m.end(), self.targets[m.pattern().as_usize()]))
                .collect();
            cands.sort_by(|a, b| (b.1 - b.0).cmp(&(a.1 - a.0)).then(a.0.cmp(&b.0)));
            for c in cands {
                if taken.iter().all(|t| c.1 <= t.0 || c.0 >= t.1) {
                    taken.push(c);
                }
            }
        }
        taken.sort_by_key(|t| t.0);
        taken
            .into_iter()
            .map(|(s, e, t)| match t {
                Target::Movie(m) => self.movie_mention(m, Some((s, e))),
                Target::Entity(id) => EntityMention {
                    name: self.kg_names.get(id as usize).cloned().unwrap_or_default(),
                    kind: if self.kg_movies.contains(&id) { EntityKind::Movie } else { EntityKind::Entity },
                    entity: Some(id),
                    movie: None,
                    span: Some((s, e)),
                },
            })
            .collect()
    }

    /// `text` with every `@<id>` of a catalogue movie replaced by its title
    /// (ReDial's written-out form), whitespace collapsed.
    pub fn write_out_movies(&self, text: &str) -> String {
        write_out_movies(text, |id| self.movie_title(id))
    }

    /// The `@<id>` mentions of catalogue movies in `text`: `(movie id, span)`.
    pub fn link_at_mentions(&self, text: &str) -> Vec<(u32, (usize, usize))> {
        at_mentions(text, |id| self.movie_title.contains_key(&id))
    }
}

/// The `@<id>` mentions in `text` whose id `known` accepts: `(movie id, span)`.
pub fn at_mentions(text: &str, known: impl Fn(u32) -> bool) -> Vec<(u32, (usize, usize))> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].find('@') {
        let at = i + off;
        let end = at + 1 + bytes[at + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if end > at + 1
            && let Ok(id) = text[at + 1..end].parse::<u32>()
            && known(id)
        {
            out.push((id, (at, end)));
        }
        i = end.max(at + 1);
    }
    out
}

/// `text` with every `@<id>` that `title` knows replaced by the title,
/// whitespace collapsed: what people read (and what the emotion tagger was trained on).
pub fn write_out_movies<'t>(text: &str, title: impl Fn(u32) -> Option<&'t str>) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut last = 0;
    for (id, (s, e)) in at_mentions(text, |id| title(id).is_some()) {
        out.push_str(&text[last..s]);
        out.push_str(title(id).unwrap_or_default());
        last = e;
    }
    out.push_str(&text[last..]);
    crate::text::collapse_ws(&out)
}

/// Whether `text[start..end]` sits on word boundaries: no letter or digit
/// right before or after, and no contraction glued to it (`haven't` does not
/// contain `haven`, `don't` does not contain `t`); a possessive `'s` may follow.
fn is_boundary(text: &str, start: usize, end: usize) -> bool {
    let is_apos = |c: char| c == '\'' || c == '\u{2019}';
    let mut before = text[..start].chars().rev();
    let b1 = before.next();
    if b1.is_some_and(char::is_alphanumeric)
        || (b1.is_some_and(is_apos) && before.next().is_some_and(char::is_alphanumeric))
    {
        return false;
    }
    let mut after = text[end..].chars();
    match after.next() {
        Some(c) if c.is_alphanumeric() => false,
        Some(c) if is_apos(c) => match after.next() {
            Some('s') | Some('S') => !after.next().is_some_and(char::is_alphanumeric),
            Some(c) => !c.is_alphanumeric(),
            None => true,
        },
        _ => true,
    }
}

/// Words people write mostly in lowercase: in `texts`, written in lowercase at
/// least `min_count` times and more often than capitalised. A single-word name
/// among them is a common word, not a name (`hope`, `weekend`, `haven`).
pub fn common_words<'a>(texts: impl IntoIterator<Item = &'a str>, min_count: u32) -> HashSet<String> {
    let mut counts: HashMap<String, (u32, u32)> = HashMap::new();
    for t in texts {
        for w in t.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-')) {
            let w = w.trim_matches(|c: char| c == '\'' || c == '-');
            if w.is_empty() || !w.chars().next().is_some_and(char::is_alphabetic) {
                continue;
            }
            let lower = w.to_lowercase();
            let e = counts.entry(lower.clone()).or_default();
            if lower == w { e.0 += 1 } else { e.1 += 1 }
        }
    }
    counts.into_iter().filter(|(_, (lc, cap))| *lc >= min_count && lc > cap).map(|(w, _)| w).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalogue::Movie;

    fn res(name: &str) -> String {
        format!("<http://dbpedia.org/resource/{name}>")
    }

    /// A tiny world: four movies, a few KG entities.
    pub(crate) fn world() -> (Catalogue, Kg) {
        let mut matrix = Movie::new(1, "The Matrix (1999)", 50);
        matrix.dbpedia = Some(res("The_Matrix"));
        let mut reloaded = Movie::new(2, "The Matrix Reloaded (2003)", 10);
        reloaded.dbpedia = Some(res("The_Matrix_Reloaded"));
        let it90 = Movie::new(3, "It (1990)", 5);
        let mut it17 = Movie::new(4, "It  (2017)", 200);
        it17.dbpedia = None; // mapped by title: "It (2017 film)"
        let up = Movie::new(5, "Up (2009)", 30);
        let cat = Catalogue::from_movies(vec![matrix, reloaded, it90, it17, up]);
        let uris = vec![
            res("The_Matrix"),
            res("The_Matrix_Reloaded"),
            res("It_(2017_film)"),
            res("Keanu_Reeves"),
            res("Comedy"),
            res("Western_(genre)"),
            res("The_Who"),
            res("Science_fiction"),
            res("Keanu"),
        ];
        let triples = [(0, 0, 3), (1, 0, 3), (0, 1, 7)];
        let kg = Kg::from_parts(uris, vec!["starring".into(), "genre".into()], &triples, &[0, 1, 2], &[0, 1, 2]);
        (cat, kg)
    }

    fn linked(l: &Linker, text: &str) -> Vec<(String, Option<u32>, Option<u32>)> {
        l.link(text).into_iter().map(|m| (m.name, m.movie, m.entity)).collect()
    }

    #[test]
    fn at_mentions_link_catalogue_movies_and_map_to_the_kg() {
        let (cat, kg) = world();
        let l = Linker::new(&cat, &kg, &LinkerOptions::default());
        let got = l.link("I liked @1 and @999 and @4, not @x");
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].movie, got[0].entity, got[0].span), (Some(1), Some(0), Some((8, 10))));
        assert_eq!((got[1].movie, got[1].entity), (Some(4), Some(2)), "It (2017) maps by title to It (2017 film)");
        assert_eq!(l.write_out_movies("see  @1 now"), "see The Matrix (1999) now");
    }

    #[test]
    fn movies_map_to_the_kg_by_uri_then_by_title_never_stealing_a_claimed_entity() {
        let (cat, kg) = world();
        let mut movies = cat.movies().to_vec();
        movies.push(crate::catalogue::Movie::new(6, "The Matrix (2021)", 1));
        let cat = Catalogue::from_movies(movies);
        let links = link_movies(&cat, &kg);
        assert_eq!(links.get(&1), Some(&(0, crate::kg::MovieLinkKind::Uri)));
        assert_eq!(links.get(&4), Some(&(2, crate::kg::MovieLinkKind::Title)), "It (2017) → It (2017 film)");
        assert_eq!(links.get(&3), None, "It (1990): the only It in the KG is the 2017 film");
        assert_eq!(links.get(&6), None, "<The_Matrix> belongs to The Matrix (1999)");
    }

    #[test]
    fn titles_with_and_without_year_case_insensitive() {
        let (cat, kg) = world();
        let l = Linker::new(&cat, &kg, &LinkerOptions::default());
        assert_eq!(linked(&l, "I loved the matrix"), vec![("The Matrix (1999)".into(), Some(1), Some(0))]);
        assert_eq!(linked(&l, "THE MATRIX 1999!"), vec![("The Matrix (1999)".into(), Some(1), Some(0))]);
        // Bare "It" and "Up" are stop words; with the year they link.
        assert!(linked(&l, "it was up to me").is_empty());
        assert_eq!(linked(&l, "It (1990) scared me")[0].1, Some(3));
        assert_eq!(linked(&l, "and Up (2009)")[0].1, Some(5));
    }

    #[test]
    fn longest_match_first_and_word_boundaries() {
        let (cat, kg) = world();
        let l = Linker::new(&cat, &kg, &LinkerOptions::default());
        let got = linked(&l, "the matrix reloaded with keanu reeves");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].1, Some(2), "Reloaded, not The Matrix");
        assert_eq!(got[1].0, "Keanu Reeves", "not the shorter Keanu");
        assert!(linked(&l, "thematrix and comedyish keanureeves").is_empty());
        assert!(linked(&l, "I haven't seen it; the matrix'd be").is_empty(), "contraction glued");
        assert!(linked(&l, "keanu'll come").is_empty(), "contraction glued after");
        assert_eq!(linked(&l, "keanu reeves's best")[0].0, "Keanu Reeves", "possessive is fine");
        assert_eq!(linked(&l, "(comedy)")[0].0, "Comedy");
    }

    #[test]
    fn stop_list_qualifiers_and_aliases() {
        let (cat, kg) = world();
        let l = Linker::new(&cat, &kg, &LinkerOptions::default());
        assert!(linked(&l, "who is in it?").is_empty(), "The Who is a stop-word name");
        assert_eq!(linked(&l, "I like westerns and western")[0].0, "Western (genre)");
        assert_eq!(
            linked(&l, "any sci-fi or comedies?"),
            vec![("Science fiction".into(), None, Some(7)), ("Comedy".into(), None, Some(4)),]
        );
        let opts = LinkerOptions {
            extra_stop_words: vec!["Comedy".into()],
            aliases: false,
            extra_aliases: vec![("keanu r".into(), "Keanu_Reeves".into()), ("x".into(), "No_Such_Thing".into())],
            ..Default::default()
        };
        let l = Linker::new(&cat, &kg, &opts);
        assert!(linked(&l, "a comedy").is_empty());
        assert_eq!(linked(&l, "Keanu R!")[0].0, "Keanu Reeves");
        assert_eq!(l.unknown_aliases(), &[("x".to_string(), "No_Such_Thing".to_string())]);
        let stop = stop_set(&[]);
        assert!(is_blocked("The Who", &stop) && is_blocked("Up", &stop) && is_blocked("42", &stop));
        assert!(!is_blocked("Star Wars", &stop) && !is_blocked("Keanu", &stop));
        assert!(is_blocked("Them!", &stop), "punctuation does not hide a stop word");
        let common = common_words(["I hope so, hope you do", "Hope is", "hope", "Netflix and netflix", "Netflix"], 3);
        assert!(common.contains("hope") && !common.contains("netflix"), "{common:?}");
        let opts = LinkerOptions { common_words: ["keanu".to_string()].into(), ..Default::default() };
        let l = Linker::new(&cat, &kg, &opts);
        assert!(linked(&l, "keanu").is_empty());
        assert_eq!(linked(&l, "keanu reeves")[0].0, "Keanu Reeves", "two-word names need a non-common word");
    }
}
