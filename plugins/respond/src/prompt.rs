//! The prompt builder: ECR's prompt fields (movie name, related entities,
//! knowledge from the KG, the opening sentence) plus review sentences and
//! the dialogue so far, rendered from a template in the recipe into the
//! generator's chat format, under a hard token budget.
//!
//! Template rules: `{movie}`, `{entities}`, `{facts}`, `{reviews}`,
//! `{similar_reviews}`, `{dialogue}` and `{opening}` are replaced; a line of
//! the `user` template whose placeholders all render empty is left out (so
//! a recipe without reviews or facts has no empty "knowledge" line).
//!
//! Budget: the whole rendered prompt (chat markup included) is counted with
//! a [`TokenCounter`], the generator's tokenizer once it is given one, else
//! [`EstimateCounter`]. While it is over budget, parts are dropped one at a
//! time in `drop_order` (within a part, the least relevant first: the
//! lowest-scored passage, the last fact, the oldest utterance); the user's
//! last utterance is never dropped, only cut (its end kept) as a last resort.

use crate::error::{RespondError, Result};
use crate::knowledge::fact_sentence;
use crate::retrieve::PassageSource;
use ecr_engine::{Candidate, Fact, Passage, Role, Utterance};
use serde::{Deserialize, Serialize};

/// Counts the tokens of a text as the generator will see it.
pub trait TokenCounter: Send + Sync {
    /// Number of tokens of `text` (chat markup included).
    fn count(&self, text: &str) -> usize;
}

impl<F: Fn(&str) -> usize + Send + Sync> TokenCounter for F {
    fn count(&self, text: &str) -> usize {
        self(text)
    }
}

/// A conservative stand-in for a BPE tokenizer: one token per three bytes
/// of each whitespace-separated word (at least one per word), plus one per
/// line break. English words average about 1.3 BPE tokens; this counts about
/// two, so a prompt within its estimated budget is within its real one.
#[derive(Debug, Clone, Copy, Default)]
pub struct EstimateCounter;

impl TokenCounter for EstimateCounter {
    fn count(&self, text: &str) -> usize {
        let words: usize = text.split_whitespace().map(|w| w.len().div_ceil(3).max(1)).sum();
        words + text.matches('\n').count()
    }
}

/// The generator's chat format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatFormat {
    /// ChatML (SmolLM2): `<|im_start|>role\n...<|im_end|>\n`, ending with an open assistant turn.
    Chatml,
    /// Plain text: system, user, assistant prefix, separated by blank lines.
    Plain,
}

/// A droppable part of the prompt, as named in `drop_order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// Sentences of similar movies' reviews.
    SimilarReviews,
    /// Sentences of the movie's own reviews.
    Reviews,
    /// Entities the reviews mention.
    Entities,
    /// KG and movie_info facts.
    Facts,
    /// Dialogue utterances before the user's last one.
    Dialogue,
}

/// The prompt template and budget (the recipe's `[stages.prompt.with]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptConfig {
    /// The system message.
    pub system: String,
    /// The user message template.
    pub user: String,
    /// The start of the assistant's reply (the generator continues it).
    pub assistant: String,
    /// ECR's "First Sentence"; `{movie}` is replaced.
    pub opening: String,
    /// Hard limit on the prompt's tokens.
    pub budget: usize,
    /// Which parts go first when over budget.
    pub drop_order: Vec<Part>,
    /// At most this many utterances of dialogue (the user's last included).
    pub dialogue_turns: usize,
    /// How a seeker's utterance is labelled in `{dialogue}`.
    pub user_label: String,
    /// How the system's utterance is labelled in `{dialogue}`.
    pub system_label: String,
    /// The chat format.
    pub format: ChatFormat,
}

impl Default for PromptConfig {
    fn default() -> Self {
        PromptConfig {
            system: "You are a warm movie recommender chatting with a user. Recommend the movie named below in two \
                     or three sentences, sharing how it makes viewers feel. Use only the facts given."
                .into(),
            user: "Movie Name: {movie}\nRelated Entities: {entities}\nRelated Knowledge: {facts}\n\
                   What viewers felt: {reviews}\nWhat viewers felt about similar films: {similar_reviews}\n\
                   Dialogue so far:\n{dialogue}\nFirst Sentence: {opening}"
                .into(),
            assistant: "{opening}".into(),
            opening: "I think you would love {movie}.".into(),
            budget: 512,
            drop_order: vec![Part::SimilarReviews, Part::Entities, Part::Dialogue, Part::Reviews, Part::Facts],
            dialogue_turns: 6,
            user_label: "User".into(),
            system_label: "Recommender".into(),
            format: ChatFormat::Chatml,
        }
    }
}

impl PromptConfig {
    /// The first invalid value as `(key, message)`.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        if self.budget < 16 {
            return Err((
                "budget".into(),
                format!("{} tokens: too small for any prompt (use at least 16)", self.budget),
            ));
        }
        if self.dialogue_turns == 0 {
            return Err(("dialogue_turns".into(), "must be at least 1 (the user's last utterance)".into()));
        }
        for (key, t) in
            [("system", &self.system), ("user", &self.user), ("assistant", &self.assistant), ("opening", &self.opening)]
        {
            if let Some(bad) = unknown_placeholder(t) {
                return Err((
                    key.into(),
                    format!(
                        "unknown placeholder {{{bad}}}: use movie, entities, facts, reviews, similar_reviews, dialogue or opening"
                    ),
                ));
            }
        }
        Ok(())
    }
}

const PLACEHOLDERS: [&str; 7] = ["movie", "entities", "facts", "reviews", "similar_reviews", "dialogue", "opening"];

fn unknown_placeholder(t: &str) -> Option<String> {
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let j = after.find('}')?;
        let name = &after[..j];
        if !PLACEHOLDERS.contains(&name) {
            return Some(name.to_string());
        }
        rest = &after[j + 1..];
    }
    None
}

/// What goes into one prompt.
#[derive(Debug, Clone, Copy)]
pub struct PromptInput<'a> {
    /// Ranked candidates; the first `items` are named.
    pub candidates: &'a [Candidate],
    /// How many candidates the prompt names.
    pub items: usize,
    /// Retrieved passages.
    pub passages: &'a [Passage],
    /// Facts.
    pub facts: &'a [Fact],
    /// Related entities.
    pub entities: &'a [String],
    /// The dialogue before this turn.
    pub history: &'a [Utterance],
    /// The user's utterance, movies written out.
    pub user: &'a str,
}

/// A rendered prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    /// The whole prompt.
    pub text: String,
    /// The assistant prefix it ends with (the response starts with it).
    pub response_prefix: String,
    /// Its tokens as counted.
    pub tokens: usize,
    /// What was dropped to fit, e.g. `similar_reviews:2`.
    pub dropped: Vec<String>,
}

/// The parts of one prompt, each list most important first.
#[derive(Debug, Clone)]
struct Parts {
    movie: String,
    entities: Vec<String>,
    facts: Vec<String>,
    reviews: Vec<String>,
    similar: Vec<String>,
    /// Earlier utterances, oldest first.
    dialogue: Vec<String>,
    last: String,
}

impl Parts {
    fn list(&mut self, p: Part) -> &mut Vec<String> {
        match p {
            Part::SimilarReviews => &mut self.similar,
            Part::Reviews => &mut self.reviews,
            Part::Entities => &mut self.entities,
            Part::Facts => &mut self.facts,
            Part::Dialogue => &mut self.dialogue,
        }
    }
}

fn fill(t: &str, values: &[(&str, &str)]) -> String {
    let mut out = t.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// The prompt builder.
#[derive(Debug, Clone)]
pub struct PromptBuilder {
    config: PromptConfig,
}

impl PromptBuilder {
    /// A builder for a validated config.
    pub fn new(config: PromptConfig) -> Result<Self> {
        config.validate().map_err(|(k, m)| RespondError::Invalid(format!("prompt.{k}: {m}")))?;
        Ok(PromptBuilder { config })
    }

    /// The config.
    pub fn config(&self) -> &PromptConfig {
        &self.config
    }

    fn parts(&self, input: &PromptInput<'_>) -> Parts {
        let c = &self.config;
        let items = &input.candidates[..input.candidates.len().min(input.items.max(1))];
        let movie = items.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
        let (mut reviews, mut similar) = (Vec::new(), Vec::new());
        for p in input.passages {
            match PassageSource::parse(&p.source) {
                Some(PassageSource { similar_to: None, .. }) => reviews.push(format!("\"{}\"", p.text)),
                Some(PassageSource { film, similar_to: Some(_), .. }) => {
                    similar.push(format!("(about {film}) \"{}\"", p.text));
                }
                // A passage from another retriever: name its item's source, never the movie.
                None => similar.push(format!("({}) \"{}\"", p.source, p.text)),
            }
        }
        let label = |u: &Utterance| if u.role == Role::Seeker { &c.user_label } else { &c.system_label };
        let keep = c.dialogue_turns.saturating_sub(1);
        let start = input.history.len().saturating_sub(keep);
        Parts {
            movie,
            entities: input.entities.to_vec(),
            facts: input.facts.iter().map(fact_sentence).collect(),
            reviews,
            similar,
            dialogue: input.history[start..].iter().map(|u| format!("{}: {}", label(u), u.text)).collect(),
            last: input.user.to_string(),
        }
    }

    fn render(&self, p: &Parts) -> (String, String) {
        let c = &self.config;
        // No movie to recommend this turn: no opening sentence either.
        let opening = if p.movie.is_empty() { String::new() } else { fill(&c.opening, &[("movie", &p.movie)]) };
        let mut dialogue = p.dialogue.clone();
        dialogue.push(format!("{}: {}", c.user_label, p.last));
        let values = [
            ("movie", p.movie.clone()),
            ("entities", p.entities.join(", ")),
            ("facts", p.facts.join(" ")),
            ("reviews", p.reviews.join(" ")),
            ("similar_reviews", p.similar.join(" ")),
            ("dialogue", dialogue.join("\n")),
            ("opening", opening),
        ];
        let refs: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let user: Vec<String> = c
            .user
            .lines()
            .filter(|line| {
                let used: Vec<&(&str, &str)> =
                    refs.iter().filter(|(k, _)| line.contains(&format!("{{{k}}}"))).collect();
                used.is_empty() || used.iter().any(|(_, v)| !v.is_empty())
            })
            .map(|line| fill(line, &refs))
            .collect();
        let (system, user, assistant) = (fill(&c.system, &refs), user.join("\n"), fill(&c.assistant, &refs));
        let text = match c.format {
            ChatFormat::Chatml => format!(
                "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}"
            ),
            ChatFormat::Plain => format!("{system}\n\n{user}\n\n{assistant}"),
        };
        (text, assistant)
    }

    /// Render the prompt within the budget, as counted by `counter`.
    pub fn build(&self, input: &PromptInput<'_>, counter: &dyn TokenCounter) -> Result<Prompt> {
        let budget = self.config.budget;
        let mut parts = self.parts(input);
        let mut dropped: Vec<(Part, usize)> = Vec::new();
        let mut order = self.config.drop_order.iter().copied();
        let mut current = order.next();
        loop {
            let (text, prefix) = self.render(&parts);
            let tokens = counter.count(&text);
            if tokens <= budget {
                let dropped = dropped.iter().map(|(p, n)| format!("{}:{n}", part_name(*p))).collect();
                return Ok(Prompt { text, response_prefix: prefix, tokens, dropped });
            }
            // Drop one item of the current part (oldest utterance, else the last item).
            while let Some(p) = current {
                let list = parts.list(p);
                if list.is_empty() {
                    current = order.next();
                    continue;
                }
                if p == Part::Dialogue {
                    list.remove(0);
                } else {
                    list.pop();
                }
                match dropped.last_mut() {
                    Some((q, n)) if *q == p => *n += 1,
                    _ => dropped.push((p, 1)),
                }
                break;
            }
            if current.is_none() {
                return self.cut_last(parts, dropped, counter);
            }
        }
    }

    /// Everything droppable is gone: keep the longest end of the user's
    /// utterance that fits, or fail when even the bare frame does not.
    fn cut_last(&self, mut parts: Parts, dropped: Vec<(Part, usize)>, counter: &dyn TokenCounter) -> Result<Prompt> {
        let budget = self.config.budget;
        let words: Vec<String> = parts.last.split_whitespace().map(str::to_string).collect();
        let fits = |parts: &mut Parts, keep: usize| {
            parts.last = words[words.len() - keep..].join(" ");
            let (text, prefix) = self.render(parts);
            let n = counter.count(&text);
            (n <= budget).then_some((text, prefix, n))
        };
        // The largest `keep` that fits (fit is monotone in `keep` for any sane counter).
        let (mut lo, mut hi) = (0usize, words.len());
        let Some(mut best) = fits(&mut parts, 0) else {
            let (text, _) = self.render(&parts);
            return Err(RespondError::Invalid(format!(
                "prompt.budget: {budget} tokens cannot hold the template with no knowledge and no dialogue ({} tokens): raise budget or shorten the template",
                counter.count(&text)
            )));
        };
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            match fits(&mut parts, mid) {
                Some(r) => {
                    best = r;
                    lo = mid;
                }
                None => hi = mid - 1,
            }
        }
        let mut dropped: Vec<String> = dropped.iter().map(|(p, n)| format!("{}:{n}", part_name(*p))).collect();
        dropped.push(format!("user_words:{}", words.len() - lo));
        Ok(Prompt { text: best.0, response_prefix: best.1, tokens: best.2, dropped })
    }
}

fn part_name(p: Part) -> &'static str {
    match p {
        Part::SimilarReviews => "similar_reviews",
        Part::Reviews => "reviews",
        Part::Entities => "entities",
        Part::Facts => "facts",
        Part::Dialogue => "dialogue",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str) -> Candidate {
        Candidate { item: 1, name: name.into(), score: 1.0 }
    }

    fn passage(text: &str, film: &str, similar_to: Option<&str>) -> Passage {
        let source = PassageSource { film: film.into(), similar_to: similar_to.map(Into::into), review: "r".into() };
        Passage { item: 1, text: text.into(), score: 0.5, source: source.render() }
    }

    fn fact(rel: &str, tail: &str) -> Fact {
        Fact { head: "Jaws (1975)".into(), relation: rel.into(), tail: tail.into() }
    }

    struct Fixture {
        cands: Vec<Candidate>,
        passages: Vec<Passage>,
        facts: Vec<Fact>,
        entities: Vec<String>,
        history: Vec<Utterance>,
    }

    fn fixture() -> Fixture {
        Fixture {
            cands: vec![cand("Jaws (1975)")],
            passages: vec![
                passage("The shark scenes terrified me.", "Jaws (1975)", None),
                passage("I jumped out of my seat.", "Jaws (1975)", None),
                passage("A thrilling ride.", "Alien (1979)", Some("Jaws (1975)")),
            ],
            facts: vec![fact("director", "Steven Spielberg"), fact("starring", "Roy Scheider")],
            entities: vec!["Amity Island".into()],
            history: (0..6)
                .map(|i| {
                    let role = if i % 2 == 0 { Role::Seeker } else { Role::Recommender };
                    Utterance::new(role, format!("utterance number {i} about movies and more movies"))
                })
                .collect(),
        }
    }

    fn input(f: &Fixture) -> PromptInput<'_> {
        PromptInput {
            candidates: &f.cands,
            items: 1,
            passages: &f.passages,
            facts: &f.facts,
            entities: &f.entities,
            history: &f.history,
            user: "I want something scary with the sea",
        }
    }

    #[test]
    fn renders_chatml_with_every_field_and_attributes_similar_reviews() {
        let f = fixture();
        let b = PromptBuilder::new(PromptConfig { budget: 10_000, ..Default::default() }).unwrap();
        let p = b.build(&input(&f), &EstimateCounter).unwrap();
        assert!(p.text.starts_with("<|im_start|>system\nYou are a warm movie recommender"), "{}", p.text);
        assert!(
            p.text.contains("<|im_end|>\n<|im_start|>user\nMovie Name: Jaws (1975)\nRelated Entities: Amity Island\n")
        );
        assert!(p.text.contains(
            "Related Knowledge: Jaws (1975) was directed by Steven Spielberg. Jaws (1975) stars Roy Scheider."
        ));
        assert!(p.text.contains("What viewers felt: \"The shark scenes terrified me.\" \"I jumped out of my seat.\""));
        assert!(p.text.contains("similar films: (about Alien (1979)) \"A thrilling ride.\""));
        assert!(p.text.contains("Recommender: utterance number 5"));
        assert!(!p.text.contains("utterance number 0"), "dialogue_turns = 6 keeps 5 earlier utterances");
        assert!(p.text.ends_with("User: I want something scary with the sea\nFirst Sentence: I think you would love Jaws (1975).<|im_end|>\n<|im_start|>assistant\nI think you would love Jaws (1975)."));
        assert_eq!(p.response_prefix, "I think you would love Jaws (1975).");
        assert!(p.dropped.is_empty());
    }

    #[test]
    fn empty_fields_leave_their_lines_out() {
        let f = fixture();
        let b = PromptBuilder::new(PromptConfig { budget: 10_000, ..Default::default() }).unwrap();
        let inp = PromptInput { passages: &[], facts: &[], entities: &[], ..input(&f) };
        let p = b.build(&inp, &EstimateCounter).unwrap();
        assert!(!p.text.contains("Related") && !p.text.contains("viewers felt"), "{}", p.text);
        assert!(p.text.contains("Movie Name: Jaws (1975)\nDialogue so far:"));
    }

    /// The budget holds exactly for the counter given, at every size, and
    /// parts go in drop order.
    #[test]
    fn never_exceeds_the_budget_for_the_counter_given() {
        let f = fixture();
        let words = |t: &str| t.split_whitespace().count();
        let chars = |t: &str| t.chars().count();
        let counters: [&dyn TokenCounter; 3] = [&EstimateCounter, &words, &chars];
        for counter in counters {
            let full = PromptBuilder::new(PromptConfig { budget: 100_000, ..Default::default() })
                .unwrap()
                .build(&input(&f), counter)
                .unwrap()
                .tokens;
            let mut last_ok = None;
            for budget in (16..=full + 5).rev() {
                let b = PromptBuilder::new(PromptConfig { budget, ..Default::default() }).unwrap();
                match b.build(&input(&f), counter) {
                    Ok(p) => {
                        assert!(
                            p.tokens <= budget && counter.count(&p.text) == p.tokens,
                            "budget {budget}: {}",
                            p.tokens
                        );
                        assert!(p.text.contains("Movie Name: Jaws (1975)"), "the movie is never dropped");
                        last_ok = Some(budget);
                    }
                    Err(e) => {
                        assert!(e.to_string().contains("prompt.budget"), "{e}");
                        assert!(last_ok.is_some(), "a larger budget fitted before");
                    }
                }
            }
        }
        // Order: similar reviews go first, then entities, then dialogue.
        let estimate = |b: usize| {
            PromptBuilder::new(PromptConfig { budget: b, ..Default::default() })
                .unwrap()
                .build(&input(&f), &words)
                .unwrap()
        };
        let full = estimate(100_000).tokens;
        let p = estimate(full - 3);
        assert_eq!(p.dropped, vec!["similar_reviews:1"]);
        assert!(!p.text.contains("Alien") && p.text.contains("Amity Island"));
        let p = estimate(full - 40);
        assert!(p.dropped.starts_with(&["similar_reviews:1".into(), "entities:1".into()]), "{:?}", p.dropped);
        assert!(p.text.contains("User: I want something scary with the sea"), "the last utterance stays");
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = PromptBuilder::new(PromptConfig { user: "Movie: {film}".into(), ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("prompt.user") && e.to_string().contains("{film}"), "{e}");
        assert!(PromptBuilder::new(PromptConfig { budget: 3, ..Default::default() }).is_err());
    }
}
