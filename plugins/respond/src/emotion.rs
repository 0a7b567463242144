//! A per-sentence emotion signal for review sentences: how many words of a
//! small built-in lexicon of feeling words (`resources/emotion_words.txt`)
//! the sentence uses. The project's emotion tagger is trained on seeker
//! utterances, not review prose, and would add a second model pass over
//! every sentence; the lexicon is cheap, transparent and deterministic.

use std::collections::HashSet;

/// The built-in lexicon.
pub const EMOTION_WORDS: &str = include_str!("../resources/emotion_words.txt");

/// The lexicon: whole words and stems (`love*` matches `loved`, `lovingly` does not).
#[derive(Debug, Clone)]
pub struct EmotionLexicon {
    words: HashSet<String>,
    stems: Vec<String>,
}

impl Default for EmotionLexicon {
    fn default() -> Self {
        Self::parse(EMOTION_WORDS)
    }
}

impl EmotionLexicon {
    /// Parse a lexicon (`#` comments, whitespace-separated entries, `*` = any ending).
    pub fn parse(text: &str) -> Self {
        let mut words = HashSet::new();
        let mut stems = Vec::new();
        for entry in text.lines().filter(|l| !l.trim_start().starts_with('#')).flat_map(str::split_whitespace) {
            let e = entry.to_lowercase();
            match e.strip_suffix('*') {
                Some(stem) => stems.push(stem.to_string()),
                None => {
                    words.insert(e);
                }
            }
        }
        EmotionLexicon { words, stems }
    }

    /// Number of lexicon words in `sentence` (case-insensitive, punctuation trimmed).
    pub fn score(&self, sentence: &str) -> u32 {
        self.feeling_words(sentence).count() as u32
    }

    /// Emotional intensity of `text`: feeling words per 100 words (`None` for a text without
    /// words). This is the `emotion_intensity` response metric. It is lexical on purpose: it reads
    /// the words a reader sees, costs no model pass, and does not depend on the tagger that chose
    /// the recommendations. Checked against people's labels: on the emotion annotations' test
    /// split, utterances labelled with a feeling score 8.6 and neutral-only ones 3.6
    /// (`plugins/respond/tests/real_data.rs`). It measures density, not style: ten-star review
    /// sentences score 3.5 (long, with plot) and recommenders' short ReDial turns 5.9.
    pub fn intensity(&self, text: &str) -> Option<f64> {
        let words = text.split_whitespace().count();
        (words > 0).then(|| 100.0 * self.score(text) as f64 / words as f64)
    }

    /// [`Self::intensity`] counting each feeling word once ("great … great" is one): distinct
    /// feeling words per 100 words. Repetition cannot raise it, so a rise in `intensity` that
    /// this one does not share is a model saying the same word again. The
    /// `emotion_intensity_distinct` response metric.
    pub fn distinct_intensity(&self, text: &str) -> Option<f64> {
        let words = text.split_whitespace().count();
        let distinct: HashSet<String> = self.feeling_words(text).collect();
        (words > 0).then(|| 100.0 * distinct.len() as f64 / words as f64)
    }

    /// The lexicon words of `text`, lowercased and trimmed, in order (repeats included).
    fn feeling_words<'a>(&'a self, text: &'a str) -> impl Iterator<Item = String> + 'a {
        text.split_whitespace()
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-').to_lowercase())
            .filter(|w| {
                !w.is_empty() && (self.words.contains(w) || self.stems.iter().any(|s| w.starts_with(s.as_str())))
            })
    }

    /// Number of entries (words and stems).
    pub fn len(&self) -> usize {
        self.words.len() + self.stems.len()
    }

    /// Whether the lexicon is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_and_stems() {
        let l = EmotionLexicon::default();
        assert_eq!(l.score("I LOVED it, and cried at the end!"), 2);
        assert_eq!(l.score("The film runs two hours."), 0);
        let l = EmotionLexicon::parse("# c\nsad lov*");
        assert_eq!(l.score("Sad, lovely, loving, sadly"), 3);
        assert_eq!(l.len(), 2);
        assert_eq!(l.intensity("sad and lovely film"), Some(50.0));
        assert_eq!(l.intensity("   "), None);
    }
}
