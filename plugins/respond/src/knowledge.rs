//! What the KG and `movie_info.json` say about a movie: facts for the
//! prompt (ECR §4.3: one hop over starring, director, writer,
//! productionCompany, musicComposer; here also the plot and genres of
//! `movie_info.json`), and the set of names a response may tie to the movie
//! (for the factual-consistency metric).

use ecr_data::text::strip_qualifier;
use ecr_data::{Catalogue, Kg, Linker};
use ecr_engine::Fact;
use std::collections::{HashMap, HashSet};

/// The relations ECR renders as knowledge (§4.3), in the order facts are listed.
pub const ECR_RELATIONS: [&str; 5] = ["director", "starring", "writer", "musicComposer", "productionCompany"];

/// The relation names of facts taken from `movie_info.json`.
pub mod info_relations {
    /// The one-sentence plot.
    pub const PLOT: &str = "plot";
    /// The genres, comma-joined.
    pub const GENRE: &str = "genre";
}

/// Maps built once over the KG and catalogue: the ReDial ids of each KG
/// movie entity, and every entity's incoming edges.
#[derive(Debug, Clone, Default)]
pub struct KnowledgeIndex {
    redial_of_entity: HashMap<u32, Vec<u32>>,
    incoming: HashMap<u32, Vec<(u16, u32)>>,
}

impl KnowledgeIndex {
    /// Build the maps (tens of milliseconds over the full KG).
    pub fn new(catalogue: &Catalogue, kg: &Kg, linker: &Linker) -> Self {
        let mut redial_of_entity: HashMap<u32, Vec<u32>> = HashMap::new();
        for m in catalogue.movies() {
            if let Some(e) = linker.movie_entity(m.id) {
                redial_of_entity.entry(e).or_default().push(m.id);
            }
        }
        let mut incoming: HashMap<u32, Vec<(u16, u32)>> = HashMap::new();
        for (&h, list) in &kg.edges {
            for &(r, t) in list {
                if t != h {
                    incoming.entry(t).or_default().push((r, h));
                }
            }
        }
        KnowledgeIndex { redial_of_entity, incoming }
    }

    /// The ReDial ids of a KG movie entity (most movies have one).
    pub fn redial_ids(&self, entity: u32) -> &[u32] {
        self.redial_of_entity.get(&entity).map_or(&[], Vec::as_slice)
    }

    /// The entities one hop from `entity` in either direction (self loops excluded).
    pub fn neighbours<'a>(&'a self, kg: &'a Kg, entity: u32) -> impl Iterator<Item = (u16, u32)> + 'a {
        let out = kg.edges.get(&entity).into_iter().flatten().copied().filter(move |&(_, t)| t != entity);
        out.chain(self.incoming.get(&entity).into_iter().flatten().copied())
    }
}

/// A KG display name as people write it: qualifier stripped and URI
/// percent-escapes decoded (`%22Little Billy%22 Rhodes` → `"Little Billy" Rhodes`).
pub fn display_name(kg_name: &str) -> String {
    let b = strip_qualifier(kg_name).as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| strip_qualifier(kg_name).to_string())
}

/// A name as compared between sources: qualifier stripped, lowercase, whitespace collapsed.
pub fn name_key(name: &str) -> String {
    ecr_data::text::collapse_ws(strip_qualifier(name)).to_lowercase()
}

/// Facts about the movie `item` (KG entity) called `title`: its plot and
/// genres, then people and companies by relation (`relations`, in that
/// order): movie_info's people first (in billing order), then the KG's
/// one-hop tails not already named. At most `max` facts (0: no limit).
pub fn movie_facts(
    kg: &Kg,
    catalogue: &Catalogue,
    index: &KnowledgeIndex,
    item: u32,
    title: &str,
    relations: &[String],
    max: usize,
) -> Vec<Fact> {
    let fact =
        |relation: &str, tail: &str| Fact { head: title.to_string(), relation: relation.into(), tail: tail.into() };
    let info = index.redial_ids(item).iter().find_map(|&id| catalogue.get(id).and_then(|m| m.info.as_ref()));
    let mut facts = Vec::new();
    if let Some(i) = info {
        if !i.plot.trim().is_empty() {
            facts.push(fact(info_relations::PLOT, i.plot.trim()));
        }
        if !i.genre.is_empty() {
            facts.push(fact(info_relations::GENRE, &i.genre.join(", ")));
        }
    }
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for rel in relations {
        let from_info: &[String] = match (info, rel.as_str()) {
            (Some(i), "director") => &i.director,
            (Some(i), "starring") => &i.star,
            (Some(i), "writer") => &i.writer,
            _ => &[],
        };
        let from_kg = kg
            .edges
            .get(&item)
            .into_iter()
            .flatten()
            .filter(|&&(r, t)| t != item && kg.relations.get(r as usize).is_some_and(|n| n == rel))
            .filter_map(|&(_, t)| kg.name(t))
            .map(display_name);
        for name in from_info.iter().cloned().chain(from_kg) {
            if seen.insert((rel.clone(), name_key(&name))) {
                facts.push(fact(rel, &name));
            }
        }
    }
    if max > 0 {
        facts.truncate(max);
    }
    facts
}

/// A fact as a sentence for the prompt (`Titanic (1997) stars Kate Winslet.`).
pub fn fact_sentence(f: &Fact) -> String {
    let (h, t) = (&f.head, &f.tail);
    match f.relation.as_str() {
        info_relations::PLOT => format!("Plot of {h}: {t}"),
        info_relations::GENRE => format!("{h} is a {t} film."),
        "starring" => format!("{h} stars {t}."),
        "director" => format!("{h} was directed by {t}."),
        "writer" => format!("{h} was written by {t}."),
        "musicComposer" => format!("The music of {h} is by {t}."),
        "productionCompany" => format!("{h} was produced by {t}."),
        other => format!("{h}'s {other} is {t}."),
    }
}

/// What supports claims about a movie: the KG entities one hop from it and
/// the name keys ([`name_key`]) of those entities and of movie_info's
/// director, writer and star lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Support {
    /// KG entity ids one hop from the movie (and the movie itself).
    pub entities: HashSet<u32>,
    /// Name keys of every supported person, company or movie.
    pub names: HashSet<String>,
}

impl Support {
    /// Whether an entity (by KG id, else by name) is supported.
    pub fn supports(&self, entity: Option<u32>, name: &str) -> bool {
        entity.is_some_and(|e| self.entities.contains(&e)) || self.names.contains(&name_key(name))
    }
}

/// The [`Support`] of the movie `item` (KG entity).
pub fn support(kg: &Kg, catalogue: &Catalogue, index: &KnowledgeIndex, item: u32) -> Support {
    let mut s = Support::default();
    s.entities.insert(item);
    if let Some(n) = kg.name(item) {
        s.names.insert(name_key(n));
    }
    for (_, e) in index.neighbours(kg, item) {
        s.entities.insert(e);
        if let Some(n) = kg.name(e) {
            s.names.insert(name_key(n));
        }
    }
    for &id in index.redial_ids(item) {
        if let Some(m) = catalogue.get(id) {
            s.names.insert(name_key(&m.bare_title));
            if let Some(i) = &m.info {
                s.names.extend(i.director.iter().chain(&i.writer).chain(&i.star).map(|n| name_key(n)));
            }
        }
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ecr_data::catalogue::{Movie, MovieInfo};
    use ecr_data::{Catalogue, LinkerOptions};

    fn res(name: &str) -> String {
        format!("<http://dbpedia.org/resource/{name}>")
    }

    /// Two movies, their people, one studio; Titanic has movie_info.
    pub(crate) fn world() -> (Catalogue, Kg, Linker) {
        let mut titanic = Movie::new(10, "Titanic (1997)", 100);
        titanic.dbpedia = Some(res("Titanic_(1997_film)"));
        titanic.info = Some(MovieInfo {
            name: "Titanic (1997)".into(),
            genre: vec!["drama".into(), "romance".into()],
            plot: "A seventeen-year-old aristocrat falls in love aboard the ill-fated ship.".into(),
            director: vec!["James Cameron".into()],
            writer: vec!["James Cameron".into()],
            star: vec!["Leonardo DiCaprio".into(), "Kate Winslet".into()],
            imdb_id: "tt0120338".into(),
        });
        let mut jaws = Movie::new(20, "Jaws (1975)", 50);
        jaws.dbpedia = Some(res("Jaws_(film)"));
        let cat = Catalogue::from_movies(vec![titanic, jaws]);
        let uris = vec![
            res("Titanic_(1997_film)"), // 0
            res("Jaws_(film)"),         // 1
            res("James_Cameron"),       // 2
            res("Kate_Winslet"),        // 3
            res("Steven_Spielberg"),    // 4
            res("20th_Century_Fox"),    // 5
            res("James_Horner"),        // 6
            res("Roy_Scheider"),        // 7
            res("Billy_Zane"),          // 8
            res("Universal_Pictures"),  // 9
        ];
        let rels = vec!["director".into(), "starring".into(), "productionCompany".into(), "musicComposer".into()];
        let triples =
            [(0, 0, 2), (0, 1, 3), (0, 1, 8), (0, 2, 5), (0, 3, 6), (1, 0, 4), (1, 1, 7), (1, 2, 9), (0, 0, 0)];
        let kg = Kg::from_parts(uris, rels, &triples, &[0, 1], &[0, 1]);
        let linker = Linker::new(&cat, &kg, &LinkerOptions::default());
        (cat, kg, linker)
    }

    #[test]
    fn facts_come_from_movie_info_then_the_kg_without_repeats() {
        let (cat, kg, linker) = world();
        let idx = KnowledgeIndex::new(&cat, &kg, &linker);
        assert_eq!(idx.redial_ids(0), &[10]);
        let rels: Vec<String> = ECR_RELATIONS.iter().map(|s| s.to_string()).collect();
        let facts = movie_facts(&kg, &cat, &idx, 0, "Titanic (1997)", &rels, 0);
        let got: Vec<(&str, &str)> = facts.iter().map(|f| (f.relation.as_str(), f.tail.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("plot", "A seventeen-year-old aristocrat falls in love aboard the ill-fated ship."),
                ("genre", "drama, romance"),
                ("director", "James Cameron"),
                ("starring", "Leonardo DiCaprio"),
                ("starring", "Kate Winslet"),
                ("starring", "Billy Zane"),
                ("writer", "James Cameron"),
                ("musicComposer", "James Horner"),
                ("productionCompany", "20th Century Fox"),
            ]
        );
        assert_eq!(movie_facts(&kg, &cat, &idx, 0, "Titanic (1997)", &rels, 3).len(), 3);
        assert_eq!(fact_sentence(&facts[3]), "Titanic (1997) stars Leonardo DiCaprio.");
        // Jaws has no movie_info: KG facts only.
        let jaws = movie_facts(&kg, &cat, &idx, 1, "Jaws (1975)", &rels, 0);
        assert_eq!(
            jaws[0],
            Fact { head: "Jaws (1975)".into(), relation: "director".into(), tail: "Steven Spielberg".into() }
        );
    }

    #[test]
    fn support_is_one_hop_plus_movie_info_people() {
        let (cat, kg, linker) = world();
        let idx = KnowledgeIndex::new(&cat, &kg, &linker);
        let s = support(&kg, &cat, &idx, 0);
        assert!(s.supports(Some(3), "Kate Winslet") && s.supports(None, "leonardo  dicaprio"));
        assert!(!s.supports(Some(4), "Steven Spielberg"), "Spielberg directed Jaws, not Titanic");
        assert!(s.supports(None, "Titanic"));
        assert_eq!(display_name("%22Little Billy%22 Rhodes"), "\"Little Billy\" Rhodes");
        assert_eq!(display_name("100%_Love (film)"), "100%_Love");
    }
}
