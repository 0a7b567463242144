//! Review text preparation as ECR does it (ECR_REFERENCE.md §1.7, step 4):
//! clean the text, drop repetitive reviews, split into sentences, drop
//! fragments that talk about the review or its rating, drop short reviews,
//! keep the head and tail of long ones.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The review filter's thresholds (the recipe's `[stages.retrieve.with.reviews]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewFilter {
    /// Keep reviews with at least this many stars (ECR: only 10-star reviews).
    pub min_rating: u8,
    /// Drop reviews with fewer words than this after fragment filtering (ECR: 20).
    pub min_words: usize,
    /// Reviews longer than this keep their leading and trailing sentences,
    /// up to half of it each (ECR, DialoGPT setting: 150).
    pub max_words: usize,
    /// Drop reviews whose word-repetition rate is above this (ECR: 0.5).
    pub max_repetition: f64,
    /// Keep at most this many reviews per movie, the first ones in the file (ECR keeps all; a
    /// quick recipe caps them so that the database builds in a fraction of the time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_reviews_per_movie: Option<usize>,
}

impl Default for ReviewFilter {
    fn default() -> Self {
        ReviewFilter { min_rating: 10, min_words: 20, max_words: 150, max_repetition: 0.5, max_reviews_per_movie: None }
    }
}

impl ReviewFilter {
    /// The first invalid value as `(key, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=10).contains(&self.min_rating) {
            return Err(("min_rating".into(), format!("{} stars: expected 1 to 10", self.min_rating)));
        }
        if self.max_words < 2 || self.min_words > self.max_words {
            return Err((
                "max_words".into(),
                format!("max_words {} must be >= 2 and >= min_words {}", self.max_words, self.min_words),
            ));
        }
        if !(0.0..=1.0).contains(&self.max_repetition) {
            return Err(("max_repetition".into(), format!("{} is not in [0, 1]", self.max_repetition)));
        }
        if self.max_reviews_per_movie == Some(0) {
            return Err(("max_reviews_per_movie".into(), "0 keeps no review: use at least 1, or leave it out".into()));
        }
        Ok(())
    }
}

/// Why a review was dropped (counted in the build summary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// Fewer stars than `min_rating`.
    Rating,
    /// Word-repetition rate above `max_repetition`.
    Repetition,
    /// Fewer than `min_words` words left.
    Short,
}

/// HTML line breaks to spaces, entities unescaped, whitespace collapsed.
pub fn clean_text(text: &str) -> String {
    let t = text.replace("<br />", " ").replace("<br/>", " ").replace("<br>", " ");
    ecr_data::text::collapse_ws(&ecr_data::text::html_unescape(&t))
}

/// ECR's repetition rate: the number of words whose lower-cased form occurs
/// more than once, over the number of words (0 for an empty text).
pub fn repetition_rate(text: &str) -> f64 {
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    if words.is_empty() {
        return 0.0;
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &words {
        *counts.entry(w).or_default() += 1;
    }
    let repeated: usize = counts.values().filter(|&&c| c > 1).sum();
    repeated as f64 / words.len() as f64
}

/// Split on `.`, `?` and `!`, each delimiter kept with its sentence (a run of
/// delimiters such as `?!` or `...` stays together); fragments are trimmed
/// and empty ones dropped.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        cur.push(c);
        if matches!(c, '.' | '?' | '!') {
            while let Some(&n) = chars.peek() {
                if !matches!(n, '.' | '?' | '!' | '"' | '\'' | ')') {
                    break;
                }
                cur.push(n);
                chars.next();
            }
            push_fragment(&mut out, &mut cur);
        }
    }
    push_fragment(&mut out, &mut cur);
    out
}

fn push_fragment(out: &mut Vec<String>, cur: &mut String) {
    let t = cur.trim();
    if t.chars().any(char::is_alphanumeric) {
        out.push(t.to_string());
    }
    cur.clear();
}

/// Whether ECR drops this fragment: it mentions the review (`review`,
/// `Review`, `REVIEW`) or contains `10` (a rating).
pub fn is_meta_fragment(s: &str) -> bool {
    s.contains("review") || s.contains("Review") || s.contains("REVIEW") || s.contains("10")
}

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

/// Keep the leading sentences while their total stays within `half` words,
/// and the trailing sentences likewise (ECR's head+tail truncation); a
/// sentence is never kept twice.
pub fn head_tail(sentences: Vec<String>, half: usize) -> Vec<String> {
    let mut head = 0;
    let mut total = 0;
    while head < sentences.len() && total + words(&sentences[head]) <= half {
        total += words(&sentences[head]);
        head += 1;
    }
    let mut tail = sentences.len();
    total = 0;
    while tail > head && total + words(&sentences[tail - 1]) <= half {
        total += words(&sentences[tail - 1]);
        tail -= 1;
    }
    let mut out = sentences;
    out.drain(head..tail);
    out
}

/// The sentences ECR keeps of one review, or why it drops the review.
pub fn review_sentences(text: &str, rating: u8, filter: &ReviewFilter) -> Result<Vec<String>, Dropped> {
    if rating < filter.min_rating {
        return Err(Dropped::Rating);
    }
    let text = clean_text(text);
    if repetition_rate(&text) > filter.max_repetition {
        return Err(Dropped::Repetition);
    }
    let sentences: Vec<String> = split_sentences(&text).into_iter().filter(|s| !is_meta_fragment(s)).collect();
    let n: usize = sentences.iter().map(|s| words(s)).sum();
    if n < filter.min_words {
        return Err(Dropped::Short);
    }
    Ok(if n > filter.max_words { head_tail(sentences, filter.max_words / 2) } else { sentences })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_removes_breaks_entities_and_extra_space() {
        assert_eq!(clean_text("Great  film.<br /><br />Loved &quot;it&quot;\n too"), "Great film. Loved \"it\" too");
    }

    #[test]
    fn repetition_rate_counts_words_of_repeated_types() {
        // "the" ×2 and "cat" ×2 out of 5 words.
        assert!((repetition_rate("The cat the CAT sat") - 0.8).abs() < 1e-12);
        assert_eq!(repetition_rate("all words differ"), 0.0);
        assert_eq!(repetition_rate(""), 0.0);
    }

    #[test]
    fn sentences_keep_their_delimiters() {
        assert_eq!(
            split_sentences("Wow!! Is it good? Yes. It is... \"really\" good.\" End"),
            vec!["Wow!!", "Is it good?", "Yes.", "It is...", "\"really\" good.\"", "End"]
        );
        assert!(split_sentences(" . ! ").is_empty());
    }

    #[test]
    fn meta_fragments_and_head_tail_truncation() {
        assert!(is_meta_fragment("I give it 10 stars.") && is_meta_fragment("My Review:"));
        assert!(!is_meta_fragment("A great movie."));
        let s: Vec<String> = ["a b c.", "d e.", "f g h i.", "j.", "k l."].iter().map(|x| x.to_string()).collect();
        // half = 5: head "a b c." + "d e." (5 words), tail "k l." + "j." (3 words; "f g h i." would make 7).
        assert_eq!(head_tail(s.clone(), 5), vec!["a b c.", "d e.", "j.", "k l."]);
        assert_eq!(head_tail(s.clone(), 100), s, "short enough: nothing dropped, nothing doubled");
    }

    #[test]
    fn review_filter_follows_ecr() {
        let f = ReviewFilter { min_words: 5, max_words: 10, ..Default::default() };
        assert_eq!(review_sentences("Fine film with many words here.", 9, &f), Err(Dropped::Rating));
        assert_eq!(review_sentences("good good good good good bad.", 10, &f), Err(Dropped::Repetition));
        assert_eq!(review_sentences("Rated 10 of 10, wow. Short one.", 10, &f), Err(Dropped::Short));
        let long = "One two three four. Five six seven eight. Nine ten eleven. Twelve thirteen fourteen fifteen.";
        assert_eq!(
            review_sentences(long, 10, &f).unwrap(),
            vec!["One two three four.", "Twelve thirteen fourteen fifteen."]
        );
        assert!(ReviewFilter { min_rating: 11, ..Default::default() }.validate().is_err());
        assert!(ReviewFilter::default().validate().is_ok());
    }
}
