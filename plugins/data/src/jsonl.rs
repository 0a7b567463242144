//! Reading JSON documents and JSON Lines files with errors that name the file
//! and the line.

use crate::error::DataError;
use serde::de::DeserializeOwned;
use std::path::Path;

/// Read a whole file to a string.
pub fn read_text(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))
}

/// Parse a whole JSON file into `T`; the error names the file and the key path.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, DataError> {
    let text = read_text(path)?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        DataError::file(path, format!("at key {key} (line {}): {inner}", inner.line()))
    })
}

/// Parse every non-blank line of a JSON Lines file into `T`, calling `f`
/// with the 1-based line number; blank lines are skipped.
pub fn for_each_line<T: DeserializeOwned>(
    path: &Path,
    mut f: impl FnMut(usize, T) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let text = read_text(path)?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let de = &mut serde_json::Deserializer::from_str(line);
        let v: T = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let at = if key == "." { String::new() } else { format!("key {key}: ") };
            DataError::line(path, i + 1, format!("{at}{inner}"))
        })?;
        f(i + 1, v)?;
    }
    Ok(())
}

/// Parse every non-blank line of a JSON Lines file into a vector.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, DataError> {
    let mut out = Vec::new();
    for_each_line(path, |_, v| {
        out.push(v);
        Ok(())
    })?;
    Ok(out)
}
