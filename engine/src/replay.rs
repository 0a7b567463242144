//! Replaying a recipe's stages over a dataset once: the dialogue-shaping
//! stages' output cached on disk, the rest run over the cached turns.
//!
//! A trainable stage gets its inputs by replaying the stages before it over
//! the training dialogues ([`Engine::replay`]). The costly part is the stages
//! that shape the dialogue itself: those that write the history or the user
//! utterance (the linker, the emotion tagger); their output for a given
//! dataset depends only on their configurations and trained artefacts. So
//! [`replay_cached`] replays the prefix of stages up to the last such stage
//! once, keeps the turns under a key made of that prefix's fingerprint and
//! the data's, and runs the remaining stages (which only add fields such as
//! `local_emotions`) over the cached turns with [`Engine::run_batch`]: the
//! same stages, the same code path, without the repeated cost. Recipes that
//! share the prefix (ECR's ablations) share the cache.
//!
//! On disk (`<cache dir>/<key>.jsonl`): one line per dialogue, holding its
//! final history and, per seeker turn, the turn without its history and the
//! history's length (a turn's history is a prefix of the final one; a turn
//! whose history is not is stored whole).

use crate::engine::{Engine, EngineError};
use crate::fingerprint::Fingerprint;
use crate::turn::{Field, Turn, Utterance};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

/// One dialogue as stored.
#[derive(Serialize, Deserialize)]
struct Stored {
    history: Vec<Utterance>,
    turns: Vec<StoredTurn>,
}

#[derive(Serialize, Deserialize)]
struct StoredTurn {
    /// The turn's history is `history[..prefix]` of the dialogue; `None`: kept in `turn`.
    prefix: Option<usize>,
    turn: Turn,
}

fn pack(turns: &[Turn]) -> Stored {
    let history = turns.last().map(|t| {
        let mut h = t.history.clone();
        h.push(t.user.clone());
        h
    });
    let history = history.unwrap_or_default();
    let turns = turns
        .iter()
        .map(|t| {
            let n = t.history.len();
            if history.get(..n) == Some(t.history.as_slice()) {
                StoredTurn { prefix: Some(n), turn: Turn { history: Vec::new(), ..t.clone() } }
            } else {
                StoredTurn { prefix: None, turn: t.clone() }
            }
        })
        .collect();
    Stored { history, turns }
}

fn unpack(s: Stored) -> Vec<Turn> {
    s.turns
        .into_iter()
        .map(|st| match st.prefix {
            Some(n) => Turn { history: s.history[..n.min(s.history.len())].to_vec(), ..st.turn },
            None => st.turn,
        })
        .collect()
}

/// Whether a stage with these writes shapes the dialogue (its output is
/// carried into later turns by the session).
fn shapes_dialogue(writes: &[Field]) -> bool {
    writes.iter().any(|w| matches!(w, Field::History | Field::UserText | Field::UserEntities | Field::UserEmotions))
}

/// What [`replay_cached`] needs besides the engine and the dialogues.
pub struct ReplayKey<'a> {
    /// Fingerprint after each of the engine's stages, in order (its stage ids,
    /// kinds, configurations and trained artefacts so far).
    pub stage_fingerprints: &'a [String],
    /// Fingerprint of the dialogues replayed (their files).
    pub data: &'a str,
}

/// The number of leading stages of `engine` that shape the dialogue: up to
/// and including the last one that writes the history or the user utterance.
pub fn shaping_stages(engine: &Engine) -> usize {
    let writes: Vec<Vec<Field>> = engine.stages().map(|(_, _, io)| io.writes.clone()).collect();
    writes.iter().rposition(|w| shapes_dialogue(w)).map_or(0, |i| i + 1)
}

/// Replay `scripts` through the dialogue-shaping stages of `engine`
/// ([`shaping_stages`]) as [`Engine::replay`] does, reading the turns from
/// `cache_dir` when they are there and writing them when not.
/// `progress(done, total)` reports replayed turns. Run the remaining stages
/// with [`run_rest`] (after adding what only training knows, e.g. the gold
/// items' feedback), or use [`replay_cached`] for both.
pub fn replay_shaping(
    engine: &Engine,
    scripts: &[Vec<Utterance>],
    key: &ReplayKey<'_>,
    cache_dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<Turn>>, EngineError> {
    let split = shaping_stages(engine);
    let total: usize = scripts.iter().flatten().filter(|u| u.role == crate::turn::Role::Seeker).count();
    if split == 0 {
        // Nothing shapes the dialogue: the turns are the scripts themselves, nothing to cache.
        return engine.replay_range(scripts, 64, 0..0, &mut |n| progress(n, total));
    }
    let prefix_fp = key.stage_fingerprints.get(split - 1).cloned().unwrap_or_default();
    let name = Fingerprint::new().str(&prefix_fp).str(key.data).str(&scripts.len().to_string()).hex();
    let path = cache_dir.join(format!("{name}.jsonl"));
    if let Some(t) = read(&path, scripts.len()) {
        tracing::info!(cache = %path.display(), "replay: dialogue-shaping stages read from the cache");
        progress(total, total);
        return Ok(t);
    }
    let t = engine.replay_range(scripts, 64, 0..split, &mut |n| progress(n, total))?;
    if let Err(e) = write(&path, &t) {
        tracing::warn!(cache = %path.display(), "replay cache not written: {e}");
    }
    Ok(t)
}

/// Run the stages after the dialogue-shaping ones over `turns` (each one
/// independent: the history they carry is already the dialogue's).
pub fn run_rest(engine: &Engine, turns: &mut [Turn]) -> Result<(), EngineError> {
    let n = engine.stages().count();
    engine.run_batch_range(turns, shaping_stages(engine)..n)
}

/// [`replay_shaping`] then [`run_rest`]: the same turns as [`Engine::replay`].
pub fn replay_cached(
    engine: &Engine,
    scripts: &[Vec<Utterance>],
    key: &ReplayKey<'_>,
    cache_dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<Turn>>, EngineError> {
    let mut turns = replay_shaping(engine, scripts, key, cache_dir, progress)?;
    let lens: Vec<usize> = turns.iter().map(Vec::len).collect();
    let mut flat: Vec<Turn> = turns.iter_mut().flat_map(std::mem::take).collect();
    run_rest(engine, &mut flat)?;
    let mut it = flat.into_iter();
    Ok(lens.iter().map(|&n| it.by_ref().take(n).collect()).collect())
}

fn read(path: &Path, n: usize) -> Option<Vec<Vec<Turn>>> {
    let f = std::fs::File::open(path).ok()?;
    let mut out = Vec::with_capacity(n);
    for line in std::io::BufReader::new(f).lines() {
        let stored: Stored = serde_json::from_str(&line.ok()?).ok()?;
        out.push(unpack(stored));
    }
    (out.len() == n).then_some(out)
}

fn write(path: &Path, turns: &[Vec<Turn>]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Written to a temporary file then renamed: a reader never sees half a cache.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut w = BufWriter::new(f);
    for t in turns {
        serde_json::to_writer(&mut w, &pack(t)).map_err(|e| e.to_string())?;
        w.write_all(b"\n").map_err(|e| e.to_string())?;
    }
    w.flush().map_err(|e| e.to_string())?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The default cache directory of replays: `<runs root>/.replay`, shared by
/// every recipe under the same runs root.
pub fn cache_dir(run_dir: &Path) -> PathBuf {
    run_dir.parent().unwrap_or(Path::new(".")).join(".replay")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::Role;

    #[test]
    fn pack_and_unpack_restore_every_turn() {
        let u = |r, t: &str| Utterance::new(r, t);
        let t1 = Turn::new(vec![], "a");
        let mut t2 = Turn::new(vec![u(Role::Seeker, "a"), u(Role::Recommender, "b")], "c");
        t2.prompt = Some("p".into());
        // A turn whose history is no prefix of the final one is kept whole.
        let t3 = Turn::new(vec![u(Role::Seeker, "changed")], "d");
        let turns = vec![t1, t2, t3];
        let back = unpack(serde_json::from_str(&serde_json::to_string(&pack(&turns)).unwrap()).unwrap());
        assert_eq!(back, turns);
    }
}
