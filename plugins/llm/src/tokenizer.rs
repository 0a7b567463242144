//! The tokenizer stored in the GGUF metadata, built with `tokenizers` at load time.
//!
//! SmolLM2 uses a gpt2-style byte-level BPE (`tokenizer.ggml.model = gpt2`): every byte is mapped
//! to a printable character before merging, the pre-tokenizer splits digits one by one and then
//! applies the gpt2 regex. Control tokens (`token_type` 3, e.g. `<|im_start|>`) are special tokens
//! that the text may contain literally.

use crate::gguf::GgufFile;
use crate::{LlmError, Result};
use std::collections::HashMap;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

/// GGUF `token_type` of control tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;

/// The model's tokenizer and the raw bytes of every token (for streaming decoding).
pub struct LlmTokenizer {
    inner: Tokenizer,
    token_bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
    ids: HashMap<String, u32>,
    eos: u32,
    bos: Option<u32>,
}

impl LlmTokenizer {
    /// Build the tokenizer from `tokenizer.ggml.*` in the file's metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = g.meta("tokenizer.ggml.model")?.to_string().map_err(|e| g.error(e.to_string()))?;
        if model != "gpt2" {
            return Err(g.error(format!("tokenizer.ggml.model `{model}` is not supported (only gpt2-style BPE)")));
        }
        let tokens = g.meta_strings("tokenizer.ggml.tokens")?;
        let merges = g.meta_strings("tokenizer.ggml.merges")?;
        let types = g.meta_ints("tokenizer.ggml.token_type")?;
        if types.len() != tokens.len() {
            return Err(g.error(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| g.error(format!("tokenizer.ggml.merges: `{m}` is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| g.error(format!("building the BPE from tokenizer.ggml.*: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        inner.with_decoder(Some(ByteLevel::default()));
        let special: Vec<bool> = types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect();
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&special)
            .filter(|(_, s)| **s)
            .map(|(t, _)| AddedToken::from(t.to_string(), true).normalized(false))
            .collect();
        inner.add_special_tokens(specials).map_err(|e| g.error(format!("adding the special tokens: {e}")))?;

        let unbyte = byte_level_inverse();
        let token_bytes = tokens
            .iter()
            .zip(&special)
            .map(|(t, &s)| {
                if s {
                    t.as_bytes().to_vec()
                } else {
                    t.chars().map(|c| unbyte.get(&c).copied().unwrap_or(b'?')).collect()
                }
            })
            .collect();
        let eos = g.meta_opt_u32("tokenizer.ggml.eos_token_id").unwrap_or(0);
        let bos = g.meta_opt_u32("tokenizer.ggml.bos_token_id");
        let ids = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        Ok(Self { inner, token_bytes, special, ids, eos, bos })
    }

    /// Token ids of `text`; special tokens written literally (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(|e| LlmError::Tokenizer(e.to_string()))?.get_ids().to_vec())
    }

    /// The text of `ids` (special tokens kept literally), as `tokenizers` decodes it.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| LlmError::Tokenizer(e.to_string()))
    }

    /// The bytes a token stands for (its literal text for a special token); empty for an unknown id.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether `id` is a control token such as `<|im_end|>`.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The id of a token given as it is written in the vocabulary (e.g. `<|im_end|>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// End-of-sequence id (`tokenizer.ggml.eos_token_id`; `<|im_end|>` = 2 for SmolLM2-Instruct).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Beginning-of-sequence id, if the file names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// gpt2's byte-to-character table inverted: printable bytes stand for themselves, the others were
/// shifted to code points from 256 up, in byte order.
fn byte_level_inverse() -> HashMap<char, u8> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut map = HashMap::with_capacity(256);
    let mut next = 256u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        map.insert(char::from_u32(c).expect("code points below 512 are chars"), b);
    }
    map
}

/// Turns the bytes of generated tokens into text pieces that are each valid UTF-8, holding back a
/// multi-byte character split across tokens until it is complete; the pieces concatenated equal
/// the whole text (`String::from_utf8_lossy` of all bytes).
#[derive(Debug, Default)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    /// A stream with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a token's bytes; returns the text completed by them (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The first `valid_up_to` bytes are valid UTF-8 by definition of the error.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"));
                    match e.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Invalid bytes in the middle: replace them as from_utf8_lossy does.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// End of generation: what is still pending, with an unfinished character replaced.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
