//! An example ecr stage as a dynamic library: surface cues of the user's text.
//!
//! It implements ecr's C ABI version 1 (see `ecr_engine::dylib` and
//! `plugins/examples/ecr_stage.h`) and is the template for plugins: copy the
//! five exports, keep the `guard` around every body, and replace [`Cues`].
//!
//! The stage reads `user.text` and writes one extension field (default
//! `ext.cues`) holding
//!
//! ```json
//! {"words": 7, "question": true, "negated": false,
//!  "emotion_prior": {"like": 0.5, "curious": 0.5, ...}}
//! ```
//!
//! `emotion_prior` is a keyword prior over ECR's nine emotions: each word of
//! the text found in a label's keyword list counts for that label; the counts
//! are normalised, and a text with no keyword gets all mass on `neutral`.
//!
//! Recipe configuration (`[stages.<id>.with.config]`, all optional):
//! - `field`: the extension field to write (`"ext.cues"`); declare it in `writes`;
//! - `lexicon`: extra keywords, `{ label = ["word", ...] }`, added to the built-in ones.

use serde_json::{Map, Value, json};
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The ABI version this library implements.
const ECR_ABI_VERSION: u32 = 1;

/// ECR's nine emotion labels, in the reference order.
const LABELS: [&str; 9] =
    ["like", "curious", "happy", "grateful", "negative", "neutral", "nostalgia", "agreement", "surprise"];

/// Built-in keywords per label (lowercase words).
const KEYWORDS: [(&str, &[&str]); 8] = [
    ("like", &["love", "loved", "like", "liked", "enjoy", "enjoyed", "favorite", "favourite", "great", "best"]),
    ("curious", &["wonder", "curious", "recommend", "recommendation", "suggest", "suggestions", "any", "what"]),
    ("happy", &["happy", "glad", "fun", "funny", "awesome", "haha", "lol", "cool", "excited"]),
    ("grateful", &["thanks", "thank", "thx", "appreciate", "grateful"]),
    ("negative", &["hate", "hated", "boring", "bad", "awful", "terrible", "scary", "worst", "sad", "annoying"]),
    ("nostalgia", &["remember", "childhood", "kid", "classic", "classics", "old", "nostalgic", "grew"]),
    ("agreement", &["yes", "yeah", "yep", "sure", "agree", "ok", "okay", "right", "definitely"]),
    ("surprise", &["wow", "really", "omg", "surprised", "surprising", "whoa", "unexpected"]),
];

/// Words that negate what follows.
const NEGATIONS: [&str; 12] =
    ["not", "no", "never", "don't", "didn't", "doesn't", "isn't", "wasn't", "can't", "won't", "nothing", "neither"];

/// Words that start a question.
const QUESTION_WORDS: [&str; 14] =
    ["what", "which", "who", "how", "any", "can", "could", "do", "does", "have", "is", "are", "should", "would"];

/// The stage: immutable after create, so concurrent runs need no lock.
struct Cues {
    field: String,
    /// (label, keywords), label in [`LABELS`].
    lexicon: Vec<(&'static str, Vec<String>)>,
}

impl Cues {
    fn new(config: &Value) -> Result<Self, String> {
        let config = config.as_object().ok_or("config must be a JSON object")?;
        for key in config.keys() {
            if key != "field" && key != "lexicon" {
                return Err(format!("unknown config key {key:?}: expected field or lexicon"));
            }
        }
        let field = match config.get("field") {
            None => "ext.cues".to_string(),
            Some(Value::String(f)) if f.starts_with("ext.") && f.len() > 4 => f.clone(),
            Some(other) => return Err(format!("config.field must be a string \"ext.<name>\", not {other}")),
        };
        let mut lexicon: Vec<(&'static str, Vec<String>)> =
            KEYWORDS.iter().map(|(l, words)| (*l, words.iter().map(|w| w.to_string()).collect())).collect();
        if let Some(extra) = config.get("lexicon") {
            let extra = extra.as_object().ok_or("config.lexicon must be a table label → list of words")?;
            for (label, words) in extra {
                let label = LABELS
                    .iter()
                    .find(|l| **l == label.as_str())
                    .ok_or_else(|| format!("config.lexicon: unknown emotion {label:?}: expected one of {LABELS:?}"))?;
                let words = words.as_array().ok_or_else(|| format!("config.lexicon.{label} must be a list"))?;
                let slot = match lexicon.iter_mut().find(|(l, _)| l == label) {
                    Some((_, v)) => v,
                    None => {
                        lexicon.push((label, Vec::new()));
                        &mut lexicon.last_mut().expect("just pushed").1
                    }
                };
                for w in words {
                    let w = w.as_str().ok_or_else(|| format!("config.lexicon.{label}: {w} is not a string"))?;
                    slot.push(w.to_lowercase());
                }
            }
        }
        Ok(Cues { field, lexicon })
    }

    fn run(&self, input: &Value) -> Result<Value, String> {
        let text = input
            .get("user.text")
            .and_then(Value::as_str)
            .ok_or("the input has no user.text string: declare reads = [\"user.text\"]")?;
        let lower = text.to_lowercase();
        let words: Vec<&str> =
            lower.split(|c: char| !(c.is_alphanumeric() || c == '\'')).filter(|w| !w.is_empty()).collect();
        let question = text.contains('?') || words.first().is_some_and(|w| QUESTION_WORDS.contains(w));
        let negated = words.iter().any(|w| NEGATIONS.contains(w) || w.ends_with("n't"));
        let mut counts = [0f64; 9];
        for w in &words {
            for (label, keywords) in &self.lexicon {
                if keywords.iter().any(|k| k == w) {
                    let i = LABELS.iter().position(|l| l == label).unwrap_or(5);
                    counts[i] += 1.0;
                }
            }
        }
        let total: f64 = counts.iter().sum();
        let prior: Map<String, Value> = LABELS
            .iter()
            .zip(counts)
            .map(|(l, c)| {
                let p = if total > 0.0 {
                    c / total
                } else if *l == "neutral" {
                    1.0
                } else {
                    0.0
                };
                (l.to_string(), json!(p))
            })
            .collect();
        let cues = json!({"words": words.len(), "question": question, "negated": negated, "emotion_prior": prior});
        Ok(json!({ self.field.clone(): cues }))
    }
}

/// Run `f`, turning a panic into an error message (a panic must not unwind into the host).
fn guard<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("the plugin panicked: {what}"))
        }
    }
}

/// A string for the host; freed by [`ecr_string_free`].
fn to_c(s: String) -> *mut c_char {
    CString::new(s.replace('\0', " ")).map_or(std::ptr::null_mut(), CString::into_raw)
}

/// Parse a JSON argument from the host.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn parse(p: *const c_char, what: &str) -> Result<Value, String> {
    if p.is_null() {
        return Err(format!("{what} is NULL"));
    }
    // SAFETY: per this function's contract.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    serde_json::from_slice(bytes).map_err(|e| format!("{what} is not valid JSON: {e}"))
}

/// The ABI version (ECR_ABI_VERSION).
#[unsafe(no_mangle)]
pub extern "C" fn ecr_abi_version() -> u32 {
    ECR_ABI_VERSION
}

/// Create the stage from its config JSON; NULL and `*err_out` on error.
///
/// # Safety
/// `config_json` is a NUL-terminated string; `err_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ecr_stage_create(config_json: *const c_char, err_out: *mut *mut c_char) -> *mut c_void {
    // SAFETY: per this function's contract.
    match guard(|| Cues::new(&unsafe { parse(config_json, "config") }?)) {
        Ok(cues) => Box::into_raw(Box::new(cues)).cast(),
        Err(message) => {
            if !err_out.is_null() {
                // SAFETY: checked non-NULL; the caller passes a writable pointer.
                unsafe { *err_out = to_c(message) };
            }
            std::ptr::null_mut()
        }
    }
}

/// Run the stage: 0 and the output JSON in `*out_json`, or 1 and a message.
///
/// # Safety
/// `stage` came from [`ecr_stage_create`] and is not dropped; `input_json` is a
/// NUL-terminated string; `out_json` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ecr_stage_run(
    stage: *mut c_void,
    input_json: *const c_char,
    out_json: *mut *mut c_char,
) -> i32 {
    if stage.is_null() || out_json.is_null() {
        return 2;
    }
    // SAFETY: per this function's contract; `Cues` is only read.
    let cues = unsafe { &*stage.cast::<Cues>() };
    // SAFETY: per this function's contract.
    let result = guard(|| cues.run(&unsafe { parse(input_json, "input") }?));
    let (code, text) = match result {
        Ok(v) => (0, v.to_string()),
        Err(message) => (1, message),
    };
    // SAFETY: checked non-NULL above.
    unsafe { *out_json = to_c(text) };
    code
}

/// Drop a stage created by [`ecr_stage_create`].
///
/// # Safety
/// `stage` came from [`ecr_stage_create`] and is dropped once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ecr_stage_drop(stage: *mut c_void) {
    if !stage.is_null() {
        // SAFETY: per this function's contract.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(stage.cast::<Cues>()) })));
    }
}

/// Free a string this library returned.
///
/// # Safety
/// `s` is NULL or a string this library returned, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ecr_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: per this function's contract: it came from CString::into_raw.
        drop(unsafe { CString::from_raw(s) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cues_of_a_question_with_keywords() {
        let c = Cues::new(&json!({})).unwrap();
        let out = c.run(&json!({"user.text": "Any good horror movies? I loved Alien, thanks!"})).unwrap();
        let cues = &out["ext.cues"];
        assert_eq!(cues["words"], json!(8));
        assert_eq!(cues["question"], json!(true));
        assert_eq!(cues["negated"], json!(false));
        // any → curious, loved → like, thanks → grateful
        let p = &cues["emotion_prior"];
        for l in ["curious", "like", "grateful"] {
            assert!((p[l].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9, "{p}");
        }
        assert_eq!(p["neutral"], json!(0.0));
    }

    #[test]
    fn no_keyword_means_neutral_and_config_is_checked() {
        let c = Cues::new(&json!({"field": "ext.c", "lexicon": {"negative": ["meh"]}})).unwrap();
        let out = c.run(&json!({"user.text": "I don't know"})).unwrap();
        assert_eq!(out["ext.c"]["emotion_prior"]["neutral"], json!(1.0));
        assert_eq!(out["ext.c"]["negated"], json!(true));
        let out = c.run(&json!({"user.text": "meh"})).unwrap();
        assert_eq!(out["ext.c"]["emotion_prior"]["negative"], json!(1.0));
        assert!(Cues::new(&json!({"lexicon": {"joy": []}})).err().unwrap().contains("joy"));
        assert!(Cues::new(&json!({"colour": 1})).err().unwrap().contains("colour"));
        assert!(c.run(&json!({})).unwrap_err().contains("user.text"));
    }
}
