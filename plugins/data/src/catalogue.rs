//! The ReDial movie catalogue: `redial/movies_with_mentions.csv` (id, title
//! with year, mentions), `redial/movie_entity.json` (id → DBpedia URI or
//! null) and `redial/movie_info.json` (id → name, genres, people, plot).

use crate::error::DataError;
use crate::jsonl::{read_json, read_text};
use crate::text::split_year;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Metadata of a movie from `movie_info.json`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct MovieInfo {
    /// Title with year.
    pub name: String,
    /// Lowercase genres.
    pub genre: Vec<String>,
    /// One-sentence plot.
    pub plot: String,
    /// Directors.
    pub director: Vec<String>,
    /// Writers.
    pub writer: Vec<String>,
    /// Main cast.
    pub star: Vec<String>,
    /// IMDb id (`tt...`).
    pub imdb_id: String,
}

impl Movie {
    /// A movie from its id, catalogue title (`Title (1999)`) and mention count.
    pub fn new(id: u32, title: &str, mentions: u32) -> Self {
        let (bare_title, year) = split_year(title);
        Movie { id, title: crate::text::collapse_ws(title), bare_title, year, mentions, dbpedia: None, info: None }
    }
}

/// One catalogue movie.
#[derive(Debug, Clone, PartialEq)]
pub struct Movie {
    /// ReDial movie id.
    pub id: u32,
    /// The title as written in the catalogue, whitespace collapsed (`Police Academy (1984)`).
    pub title: String,
    /// The title without its year (`Police Academy`).
    pub bare_title: String,
    /// The year, when the title has one.
    pub year: Option<u16>,
    /// Number of mentions in ReDial (`nbMentions`).
    pub mentions: u32,
    /// DBpedia URI from `movie_entity.json`, if mapped.
    pub dbpedia: Option<String>,
    /// Metadata from `movie_info.json`, if present.
    pub info: Option<MovieInfo>,
}

/// The movie catalogue, by ReDial id.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    movies: Vec<Movie>,
    by_id: HashMap<u32, usize>,
}

impl Catalogue {
    /// Load the three catalogue files from `redial_dir`.
    pub fn load(redial_dir: &Path) -> Result<Self, DataError> {
        let csv = redial_dir.join("movies_with_mentions.csv");
        let mut cat = Self::from_csv(&csv)?;
        let me_path = redial_dir.join("movie_entity.json");
        let me: BTreeMap<String, Option<String>> = read_json(&me_path)?;
        for (k, uri) in me {
            let id = parse_id(&k)
                .ok_or_else(|| DataError::file(&me_path, format!("key {k:?}: expected a numeric ReDial movie id")))?;
            if let Some(&i) = cat.by_id.get(&id) {
                cat.movies[i].dbpedia = uri.filter(|u| !u.trim().is_empty());
            }
        }
        let mi_path = redial_dir.join("movie_info.json");
        let mi: BTreeMap<String, MovieInfo> = read_json(&mi_path)?;
        for (k, info) in mi {
            let id = parse_id(&k)
                .ok_or_else(|| DataError::file(&mi_path, format!("key {k:?}: expected a numeric ReDial movie id")))?;
            if let Some(&i) = cat.by_id.get(&id) {
                cat.movies[i].info = Some(info);
            }
        }
        Ok(cat)
    }

    /// Parse `movies_with_mentions.csv` (header `movieId,movieName,nbMentions`;
    /// titles may be quoted and contain commas).
    pub fn from_csv(path: &Path) -> Result<Self, DataError> {
        let text = read_text(path)?;
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, h)) if h.trim_start_matches('\u{feff}').trim() == "movieId,movieName,nbMentions" => {}
            Some((_, h)) => {
                return Err(DataError::line(path, 1, format!("header {h:?}: expected movieId,movieName,nbMentions")));
            }
            None => return Err(DataError::file(path, "empty file: expected a header and one line per movie")),
        }
        let mut cat = Catalogue::default();
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let fields =
                split_csv_line(line).ok_or_else(|| DataError::line(path, i + 1, "unterminated quoted field"))?;
            let [id, title, n] = fields.as_slice() else {
                return Err(DataError::line(
                    path,
                    i + 1,
                    format!("{} fields: expected 3 (movieId,movieName,nbMentions)", fields.len()),
                ));
            };
            let id = parse_id(id)
                .ok_or_else(|| DataError::line(path, i + 1, format!("movieId {id:?}: expected a number")))?;
            let mentions = n
                .trim()
                .parse()
                .map_err(|_| DataError::line(path, i + 1, format!("nbMentions {n:?}: expected a number")))?;
            if cat.by_id.contains_key(&id) {
                return Err(DataError::line(path, i + 1, format!("movie id {id} appears twice")));
            }
            let (bare_title, year) = split_year(title);
            let title = crate::text::collapse_ws(title);
            cat.by_id.insert(id, cat.movies.len());
            cat.movies.push(Movie { id, title, bare_title, year, mentions, dbpedia: None, info: None });
        }
        Ok(cat)
    }

    /// A catalogue from movies given in code (for tests and tools); later
    /// duplicates of an id are ignored.
    pub fn from_movies(movies: Vec<Movie>) -> Self {
        let mut cat = Catalogue::default();
        for m in movies {
            if !cat.by_id.contains_key(&m.id) {
                cat.by_id.insert(m.id, cat.movies.len());
                cat.movies.push(m);
            }
        }
        cat
    }

    /// The movie with ReDial id `id`.
    pub fn get(&self, id: u32) -> Option<&Movie> {
        self.by_id.get(&id).map(|&i| &self.movies[i])
    }

    /// All movies in file order.
    pub fn movies(&self) -> &[Movie] {
        &self.movies
    }

    /// Number of movies.
    pub fn len(&self) -> usize {
        self.movies.len()
    }

    /// True when the catalogue is empty.
    pub fn is_empty(&self) -> bool {
        self.movies.is_empty()
    }
}

/// Parse a ReDial id written as a string.
pub fn parse_id(s: &str) -> Option<u32> {
    s.trim().parse().ok()
}

/// Split one CSV line into fields (RFC 4180 quoting, `""` inside quotes).
fn split_csv_line(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (false, '"') if cur.is_empty() => quoted = true,
            (false, ',') => out.push(std::mem::take(&mut cur)),
            (_, c) => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    out.push(cur);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_commas_and_errors() {
        assert_eq!(
            split_csv_line(r#"1,"We, the ""Women"" (1953)",3"#).unwrap(),
            vec!["1", "We, the \"Women\" (1953)", "3"]
        );
        assert!(split_csv_line(r#"1,"open,3"#).is_none());
        let p = std::env::temp_dir().join(format!("ecr-cat-{}.csv", std::process::id()));
        std::fs::write(&p, "movieId,movieName,nbMentions\n5,\"A, B  (2001)\",2\nx,Bad,1\n").unwrap();
        let e = Catalogue::from_csv(&p).unwrap_err().to_string();
        assert!(e.contains(":3:") && e.contains("movieId \"x\""), "{e}");
        std::fs::write(&p, "movieId,movieName,nbMentions\n5,\"A, B  (2001)\",2\n").unwrap();
        let c = Catalogue::from_csv(&p).unwrap();
        let m = c.get(5).unwrap();
        assert_eq!((m.title.as_str(), m.bare_title.as_str(), m.year), ("A, B (2001)", "A, B", Some(2001)));
        std::fs::remove_file(&p).unwrap();
    }
}
