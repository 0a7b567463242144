//! An on-disk cache of sentence embeddings, keyed by model and text, so that
//! training, evaluation and labelling never embed the same text twice.
//!
//! One file per model: `<dir>/<model id>.emb`. Layout (little endian): the
//! magic `ECREMB01`, the dimension (u32), the model id's length (u32) and
//! bytes, then fixed-size records `[16-byte key | dim × f32]` where the key is
//! the first 16 bytes of the sha256 of the text. New embeddings are appended;
//! a torn last record (an interrupted write) is dropped when the file is opened.

use crate::error::{NeuralError, Result};
use crate::text::TextEncoder;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"ECREMB01";

/// The cache key of a text.
pub type TextKey = [u8; 16];

/// The cache key of `text`: the first 16 bytes of its sha256.
pub fn text_key(text: &str) -> TextKey {
    let d = Sha256::digest(text.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// Embeddings of one model, loaded from and appended to one file.
pub struct EmbeddingCache {
    model_id: String,
    path: PathBuf,
    dim: usize,
    index: HashMap<TextKey, usize>,
    data: Vec<f32>,
}

impl EmbeddingCache {
    /// Open (or create) the cache of the model `model_id` with embeddings of
    /// `dim` floats under `dir`.
    pub fn open(dir: &Path, model_id: &str, dim: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| NeuralError::io(dir, e))?;
        let safe: String =
            model_id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.@".contains(c) { c } else { '_' }).collect();
        let path = dir.join(format!("{safe}.emb"));
        let mut cache =
            EmbeddingCache { model_id: model_id.to_string(), path, dim, index: HashMap::new(), data: Vec::new() };
        if cache.path.exists() {
            cache.read(model_id)?;
        } else {
            let mut f = File::create(&cache.path).map_err(|e| NeuralError::io(&cache.path, e))?;
            let mut header = Vec::new();
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&(dim as u32).to_le_bytes());
            header.extend_from_slice(&(model_id.len() as u32).to_le_bytes());
            header.extend_from_slice(model_id.as_bytes());
            f.write_all(&header).map_err(|e| NeuralError::io(&cache.path, e))?;
        }
        Ok(cache)
    }

    fn read(&mut self, model_id: &str) -> Result<()> {
        let path = self.path.clone();
        let bad = |m: String| NeuralError::bad_file(&path, format!("{m}; delete the file to rebuild the cache"));
        let mut bytes = Vec::new();
        File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|e| NeuralError::io(&path, e))?;
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(bad("not an ecr embedding cache (bad header)".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize;
        let (dim, id_len) = (u32_at(8), u32_at(12));
        let id = bytes.get(16..16 + id_len).map(String::from_utf8_lossy).unwrap_or_default();
        if dim != self.dim || id != model_id {
            return Err(bad(format!(
                "holds embeddings of {id:?} (dim {dim}), expected {model_id:?} (dim {})",
                self.dim
            )));
        }
        let start = 16 + id_len;
        let rec = 16 + 4 * dim;
        let n = (bytes.len() - start) / rec;
        self.data.reserve(n * dim);
        for r in 0..n {
            let o = start + r * rec;
            let mut k = [0u8; 16];
            k.copy_from_slice(&bytes[o..o + 16]);
            let pos = self.data.len() / dim;
            self.data
                .extend(bytes[o + 16..o + rec].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            self.index.insert(k, pos);
        }
        let whole = start + n * rec;
        if whole != bytes.len() {
            tracing::warn!(file = %path.display(), "dropping a torn last record of the embedding cache");
            let f = OpenOptions::new().write(true).open(&path).map_err(|e| NeuralError::io(&path, e))?;
            f.set_len(whole as u64).map_err(|e| NeuralError::io(&path, e))?;
        }
        Ok(())
    }

    /// Open the cache of `encoder` under `dir`.
    pub fn for_encoder(dir: &Path, encoder: &TextEncoder) -> Result<Self> {
        Self::open(dir, encoder.id(), encoder.dim())
    }

    /// The id of the model whose embeddings this cache holds.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of cached embeddings.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The cached embedding of `text`.
    pub fn get(&self, text: &str) -> Option<&[f32]> {
        self.index.get(&text_key(text)).map(|&i| &self.data[i * self.dim..(i + 1) * self.dim])
    }

    /// Add embeddings (appended to the file at once).
    pub fn insert_many<'a>(&mut self, items: impl IntoIterator<Item = (&'a str, &'a [f32])>) -> Result<()> {
        let f = OpenOptions::new().append(true).open(&self.path).map_err(|e| NeuralError::io(&self.path, e))?;
        let mut w = BufWriter::new(f);
        for (text, v) in items {
            if v.len() != self.dim {
                return Err(NeuralError::Invalid(format!(
                    "embedding of dimension {} given to a cache of dimension {}",
                    v.len(),
                    self.dim
                )));
            }
            let k = text_key(text);
            if self.index.contains_key(&k) {
                continue;
            }
            w.write_all(&k).map_err(|e| NeuralError::io(&self.path, e))?;
            for x in v {
                w.write_all(&x.to_le_bytes()).map_err(|e| NeuralError::io(&self.path, e))?;
            }
            self.index.insert(k, self.data.len() / self.dim);
            self.data.extend_from_slice(v);
        }
        w.flush().map_err(|e| NeuralError::io(&self.path, e))?;
        Ok(())
    }
}

/// Embed `texts` with `encoder`, taking what `cache` has and adding what it
/// lacks (embedded in chunks, each appended as soon as it is done). Shows a
/// progress bar when `progress` is true. One vector per text, in input order.
pub fn embed_cached<S: AsRef<str>>(
    encoder: &TextEncoder,
    cache: Option<&mut EmbeddingCache>,
    texts: &[S],
    progress: bool,
) -> Result<Vec<Vec<f32>>> {
    let Some(cache) = cache else {
        return encoder.embed(texts);
    };
    if cache.model_id() != encoder.id() || cache.dim != encoder.dim() {
        return Err(NeuralError::Invalid(format!(
            "embedding cache {} holds embeddings of {}, not of the encoder {}: open the cache for the encoder that embeds",
            cache.path().display(),
            cache.model_id(),
            encoder.id()
        )));
    }
    let mut missing: Vec<&str> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in texts {
        let t = t.as_ref();
        if cache.get(t).is_none() && seen.insert(t) {
            missing.push(t);
        }
    }
    if !missing.is_empty() {
        let bar = if progress {
            let b = indicatif::ProgressBar::new(missing.len() as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("embedding {bar:40} {pos}/{len} texts [{elapsed}<{eta}]")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        for chunk in missing.chunks(512) {
            let vecs = encoder.embed(chunk)?;
            cache.insert_many(chunk.iter().copied().zip(vecs.iter().map(Vec::as_slice)))?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
    }
    texts
        .iter()
        .map(|t| {
            cache.get(t.as_ref()).map(<[f32]>::to_vec).ok_or_else(|| {
                NeuralError::Invalid(format!("embedding cache {} lost a text it just stored", cache.path().display()))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ecr-neural-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn cache_round_trips_and_rejects_another_model() {
        let dir = tmp_dir("cache");
        {
            let mut c = EmbeddingCache::open(&dir, "m@1", 3).unwrap();
            c.insert_many([("a", &[1f32, 2.0, 3.0][..]), ("b", &[4f32, 5.0, 6.0][..])]).unwrap();
            assert_eq!(c.len(), 2);
        }
        let c = EmbeddingCache::open(&dir, "m@1", 3).unwrap();
        assert_eq!(c.get("b"), Some(&[4f32, 5.0, 6.0][..]));
        assert_eq!(c.get("c"), None);
        // The same file opened for another model id is refused (ids map to file names, so copy it).
        std::fs::copy(c.path(), dir.join("m@2.emb")).unwrap();
        let err = EmbeddingCache::open(&dir, "m@2", 3).err().unwrap().to_string();
        assert!(err.contains("m@1") && err.contains("delete the file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn torn_last_record_is_dropped() {
        let dir = tmp_dir("torn");
        let path = {
            let mut c = EmbeddingCache::open(&dir, "m", 2).unwrap();
            c.insert_many([("a", &[1f32, 2.0][..])]).unwrap();
            c.path().to_path_buf()
        };
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[7u8; 10]).unwrap();
        drop(f);
        let c = EmbeddingCache::open(&dir, "m", 2).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.get("a"), Some(&[1f32, 2.0][..]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
