//! The DBpedia knowledge graph of UniCRS/ECR (`kg/*.json`) and the mapping of
//! catalogue movies to KG entities.

use crate::catalogue::Catalogue;
use crate::error::DataError;
use crate::jsonl::read_json;
use crate::text::{strip_qualifier, uri_display_name};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// The KG: entities, relations, triples, and the item/movie sets.
#[derive(Debug, Clone, Default)]
pub struct Kg {
    uris: Vec<String>,
    names: Vec<String>,
    by_uri: HashMap<String, u32>,
    /// Relation names by id (the URI's last segment, e.g. `starring`, `self_loop`).
    pub relations: Vec<String>,
    /// Head id → `(relation id, tail id)` as in `dbpedia_subkg.json` (self loops included).
    pub edges: HashMap<u32, Vec<(u16, u32)>>,
    /// `item_ids.json`: the movies ranked at evaluation.
    pub items: HashSet<u32>,
    /// `movie_ids.json`: entity ids of movies.
    pub movies: HashSet<u32>,
    degree: Vec<u32>,
}

impl Kg {
    /// Load `entity2id.json`, `relation2id.json`, `dbpedia_subkg.json`,
    /// `item_ids.json` and `movie_ids.json` from `kg_dir`.
    pub fn load(kg_dir: &Path) -> Result<Self, DataError> {
        let e_path = kg_dir.join("entity2id.json");
        let e2i: HashMap<String, u32> = read_json(&e_path)?;
        let n = e2i.values().max().map_or(0, |&m| m as usize + 1);
        let mut uris = vec![String::new(); n];
        for (uri, &id) in &e2i {
            let slot = &mut uris[id as usize];
            if !slot.is_empty() {
                return Err(DataError::file(
                    &e_path,
                    format!("entity id {id} is given to {slot} and {uri}: ids must be unique"),
                ));
            }
            *slot = uri.clone();
        }
        let names = uris.iter().map(|u| uri_display_name(u)).collect();
        let r_path = kg_dir.join("relation2id.json");
        let r2i: HashMap<String, u16> = read_json(&r_path)?;
        let mut relations = vec![String::new(); r2i.values().max().map_or(0, |&m| m as usize + 1)];
        for (uri, &id) in &r2i {
            let u = uri.trim().trim_start_matches('<').trim_end_matches('>');
            relations[id as usize] = u.rsplit('/').next().unwrap_or(u).to_string();
        }
        let s_path = kg_dir.join("dbpedia_subkg.json");
        let sub: BTreeMap<String, Vec<(u16, u32)>> = read_json(&s_path)?;
        let mut edges = HashMap::with_capacity(sub.len());
        let mut degree = vec![0u32; n];
        for (h, list) in sub {
            let head: u32 = h
                .parse()
                .map_err(|_| DataError::file(&s_path, format!("key {h:?}: expected a numeric head entity id")))?;
            for &(r, t) in &list {
                if r as usize >= relations.len() || t as usize >= n || head as usize >= n {
                    return Err(DataError::file(
                        &s_path,
                        format!(
                            "triple ({head}, {r}, {t}): relation or entity id out of range ({} relations, {n} entities)",
                            relations.len()
                        ),
                    ));
                }
                if t != head {
                    degree[head as usize] += 1;
                    degree[t as usize] += 1;
                }
            }
            edges.insert(head, list);
        }
        let items: Vec<u32> = read_json(&kg_dir.join("item_ids.json"))?;
        let movies: Vec<u32> = read_json(&kg_dir.join("movie_ids.json"))?;
        Ok(Kg {
            uris,
            names,
            by_uri: e2i,
            relations,
            edges,
            items: items.into_iter().collect(),
            movies: movies.into_iter().collect(),
            degree,
        })
    }

    /// A KG from parts: entity URIs by id, triples `(head, relation, tail)`,
    /// relation names by id, item and movie ids (for tests and tools).
    pub fn from_parts(
        uris: Vec<String>,
        relations: Vec<String>,
        triples: &[(u32, u16, u32)],
        items: &[u32],
        movies: &[u32],
    ) -> Self {
        let n = uris.len();
        let mut edges: HashMap<u32, Vec<(u16, u32)>> = HashMap::new();
        let mut degree = vec![0u32; n];
        for &(h, r, t) in triples {
            edges.entry(h).or_default().push((r, t));
            if h != t && (h as usize) < n && (t as usize) < n {
                degree[h as usize] += 1;
                degree[t as usize] += 1;
            }
        }
        Kg {
            names: uris.iter().map(|u| uri_display_name(u)).collect(),
            by_uri: uris.iter().enumerate().map(|(i, u)| (u.clone(), i as u32)).collect(),
            uris,
            relations,
            edges,
            items: items.iter().copied().collect(),
            movies: movies.iter().copied().collect(),
            degree,
        }
    }

    /// Number of entity ids (max id + 1).
    pub fn len(&self) -> usize {
        self.uris.len()
    }

    /// True when the KG has no entities.
    pub fn is_empty(&self) -> bool {
        self.uris.is_empty()
    }

    /// The id of a URI (`<http://dbpedia.org/resource/...>`).
    pub fn id(&self, uri: &str) -> Option<u32> {
        self.by_uri.get(uri).copied()
    }

    /// The URI of an entity id.
    pub fn uri(&self, id: u32) -> Option<&str> {
        self.uris.get(id as usize).map(String::as_str)
    }

    /// The display name of an entity id (`Tom Hanks`, `Up (2009 film)`).
    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(String::as_str)
    }

    /// Number of non-self-loop triples the entity takes part in.
    pub fn degree(&self, id: u32) -> u32 {
        self.degree.get(id as usize).copied().unwrap_or(0)
    }

    /// Whether the entity is a movie (in `movie_ids.json` or `item_ids.json`).
    pub fn is_movie(&self, id: u32) -> bool {
        self.movies.contains(&id) || self.items.contains(&id)
    }

    /// Number of triples as stored (self loops included).
    pub fn triple_count(&self) -> usize {
        self.edges.values().map(Vec::len).sum()
    }
}

/// How a catalogue movie was mapped to a KG entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovieLinkKind {
    /// Through its `movie_entity.json` URI.
    Uri,
    /// By title: `movie_entity.json` is null or its URI is not in the KG, and a
    /// KG movie has the same bare title (and the same year when the KG name has one).
    Title,
}

/// Catalogue movie id → KG entity id.
///
/// First the movie's `movie_entity.json` URI if it is in the KG; otherwise a
/// KG movie entity (in `movie_ids` or `item_ids`) whose name without its
/// qualifier equals the bare title, case-insensitively, preferring a
/// qualifier `(<year> film)` that matches the year, then `(film)` or no
/// qualifier, then a sole candidate whose qualifier names no year. Entities that
/// another catalogue movie maps to by URI are never taken by title. Ambiguous titles stay unmapped.
pub fn link_movies(cat: &Catalogue, kg: &Kg) -> HashMap<u32, (u32, MovieLinkKind)> {
    let mut by_title: HashMap<String, Vec<(String, u32)>> = HashMap::new();
    for id in kg.movies.iter().chain(kg.items.iter()).copied().collect::<HashSet<_>>() {
        let Some(name) = kg.name(id) else { continue };
        let bare = strip_qualifier(name);
        let qual = name[bare.len()..].trim().trim_start_matches('(').trim_end_matches(')').to_string();
        by_title.entry(bare.to_lowercase()).or_default().push((qual, id));
    }
    for v in by_title.values_mut() {
        v.sort_by_key(|&(_, id)| id);
    }
    let mut out = HashMap::new();
    for m in cat.movies() {
        if let Some(id) = m.dbpedia.as_deref().and_then(|u| kg.id(u)) {
            out.insert(m.id, (id, MovieLinkKind::Uri));
        }
    }
    // An entity that another catalogue movie maps to by URI is taken (Jumanji (2017) is not <Jumanji>).
    let claimed: HashSet<u32> = out.values().map(|&(e, _)| e).collect();
    for m in cat.movies() {
        if out.contains_key(&m.id) {
            continue;
        }
        let Some(cands) = by_title.get(&m.bare_title.to_lowercase()) else { continue };
        let cands: Vec<&(String, u32)> = cands.iter().filter(|(_, id)| !claimed.contains(id)).collect();
        let with_year = m.year.and_then(|y| cands.iter().find(|(q, _)| *q == format!("{y} film")));
        let plain = || cands.iter().find(|(q, _)| q.is_empty() || q == "film");
        let other_year = |q: &str| q.split(' ').any(|w| w.len() == 4 && w.bytes().all(|b| b.is_ascii_digit()));
        let sole = || (cands.len() == 1 && !other_year(&cands[0].0)).then(|| &cands[0]);
        if let Some((_, id)) = with_year.or_else(plain).or_else(sole) {
            out.insert(m.id, (*id, MovieLinkKind::Title));
        }
    }
    out
}
