//! Where the data lives: `$ECR_DATA_DIR`, else `shared/data` beside the
//! current directory or one of its ancestors (`../shared/data` from the
//! project root, `../../../shared/data` from `plugins/data` during tests).

use crate::error::DataError;
use std::path::{Path, PathBuf};

/// The environment variable that names the data directory.
pub const DATA_DIR_ENV: &str = "ECR_DATA_DIR";

/// The data directory.
///
/// `$ECR_DATA_DIR` if set (an error if it is not a directory); otherwise the
/// first `shared/data` found beside the current directory or beside any of its
/// ancestors; otherwise an error that says to set `ECR_DATA_DIR`.
pub fn data_dir() -> Result<PathBuf, DataError> {
    if let Some(v) = std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        return if p.is_dir() {
            Ok(p)
        } else {
            Err(DataError::NoDataDir(format!(
                "{DATA_DIR_ENV}={} is not a directory: point it at the shared data directory (the one holding redial/, kg/, reviews/, emotion/)",
                p.display()
            )))
        };
    }
    let cwd = std::env::current_dir().map_err(|e| DataError::io(".", e))?;
    find_data_dir_from(&cwd).ok_or_else(|| {
        DataError::NoDataDir(format!(
            "no data directory: {DATA_DIR_ENV} is not set and no shared/data was found beside {} or its ancestors; \
             set {DATA_DIR_ENV} to the directory holding redial/, kg/, reviews/ and emotion/",
            cwd.display()
        ))
    })
}

/// The first `shared/data` directory that is a sibling of `start` or of one of
/// its ancestors (i.e. `<ancestor>/../shared/data`), also accepting
/// `<ancestor>/shared/data`.
pub fn find_data_dir_from(start: &Path) -> Option<PathBuf> {
    start.ancestors().find_map(|dir| {
        let inside = dir.join("shared").join("data");
        if inside.is_dir() {
            return Some(inside);
        }
        let beside = dir.parent()?.join("shared").join("data");
        beside.is_dir().then_some(beside)
    })
}

/// `dir/rel`, or an error naming the missing file and the data directory.
pub fn require_file(dir: &Path, rel: &str) -> Result<PathBuf, DataError> {
    let p = dir.join(rel);
    if p.is_file() {
        Ok(p)
    } else {
        Err(DataError::NoDataDir(format!(
            "missing data file {}: the data directory {} should hold {rel} (see shared/data/README.md)",
            p.display(),
            dir.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_shared_data_beside_an_ancestor() {
        let root = std::env::temp_dir().join(format!("ecr-data-paths-{}", std::process::id()));
        let data = root.join("shared").join("data");
        let deep = root.join("main").join("plugins").join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(find_data_dir_from(&deep), Some(data.clone()));
        assert_eq!(find_data_dir_from(&root.join("main")), Some(data));
        assert!(require_file(&root, "nope.json").unwrap_err().to_string().contains("nope.json"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
