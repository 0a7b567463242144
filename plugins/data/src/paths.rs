//! Where the data lives (the rule is the engine's, [`ecr_engine::paths`]), and
//! the check that a data file is there.

use crate::error::DataError;
use std::path::{Path, PathBuf};

pub use ecr_engine::paths::{DATA_DIR_ENV, find_data_dir_from};

/// The data directory (the engine's one rule, [`ecr_engine::paths`]):
/// `$ECR_DATA_DIR`, else `shared/data` beside the working directory or an ancestor.
pub fn data_dir() -> Result<PathBuf, DataError> {
    ecr_engine::paths::data_dir_from(Path::new(".")).map_err(DataError::NoDataDir)
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
    fn a_missing_file_is_named() {
        assert!(require_file(Path::new("/nowhere"), "nope.json").unwrap_err().to_string().contains("nope.json"));
    }
}
