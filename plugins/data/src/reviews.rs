//! IMDb reviews of ReDial movies (`reviews/imdb_reviews.jsonl`).

use crate::error::DataError;
use crate::jsonl::for_each_line;
use serde::Deserialize;
use std::path::Path;

/// One IMDb user review.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Review {
    /// IMDb id of the movie (`tt...`).
    pub imdb_id: String,
    /// The ReDial ids of the movie.
    #[serde(deserialize_with = "de_ids")]
    pub redial_ids: Vec<u32>,
    /// Rating, 1-10 stars.
    pub rating: u8,
    /// The text (HTML line breaks `<br />` replaced by newlines at load).
    pub text: String,
    /// Where it came from (path in the Large Movie Review Dataset).
    #[serde(default)]
    pub source: String,
}

fn de_ids<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    let v: Vec<serde_json::Value> = Vec::deserialize(d)?;
    v.iter()
        .map(|x| match x {
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .map(|o| o.ok_or_else(|| serde::de::Error::custom("redial_ids: expected numeric movie ids")))
        .collect()
}

/// Load the reviews; errors name the file and line (also a rating outside 1-10).
pub fn load_reviews(path: &Path) -> Result<Vec<Review>, DataError> {
    let mut out = Vec::new();
    for_each_line(path, |line, mut r: Review| {
        if !(1..=10).contains(&r.rating) {
            return Err(DataError::line(path, line, format!("rating {}: expected 1 to 10 stars", r.rating)));
        }
        r.text = crate::text::html_unescape(&r.text.replace("<br />", "\n").replace("<br/>", "\n"));
        out.push(r);
        Ok(())
    })?;
    Ok(out)
}
