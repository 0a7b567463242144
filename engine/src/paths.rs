//! The two directory rules every part of ecr follows.
//!
//! * **Data**: `$ECR_DATA_DIR` if set, else the first `shared/data` found
//!   beside (or inside) the starting directory or one of its ancestors: from
//!   a clone at `work/main`, `work/shared/data`.
//! * **Runs**: what a recipe trains and writes goes under
//!   `<runs root>/<recipe name>/`, where the runs root is `$ECR_RUNS_DIR` if
//!   set, else `runs/` in the parent of the directory holding the recipe file
//!   (`recipes/ecr.toml` → `runs/ecr/`). A recipe that `extends` another gets
//!   its own run directory without overriding any path.

use std::path::{Path, PathBuf};

/// The environment variable that names the data directory.
pub const DATA_DIR_ENV: &str = "ECR_DATA_DIR";

/// The environment variable that names the runs root.
pub const RUNS_DIR_ENV: &str = "ECR_RUNS_DIR";

/// The data directory, searching from `start` (and then from the working
/// directory); the error says what to set.
pub fn data_dir_from(start: &Path) -> Result<PathBuf, String> {
    if let Some(v) = std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        return if p.is_dir() {
            Ok(p)
        } else {
            Err(format!(
                "{DATA_DIR_ENV}={} is not a directory: point it at the shared data directory (the one holding redial/, kg/, reviews/, emotion/)",
                p.display()
            ))
        };
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let start = if start.as_os_str().is_empty() { Path::new(".") } else { start };
    let abs = if start.is_absolute() { start.to_path_buf() } else { cwd.join(start) };
    find_data_dir_from(&abs).or_else(|| find_data_dir_from(&cwd)).ok_or_else(|| {
        format!(
            "no data directory: {DATA_DIR_ENV} is not set and no shared/data was found beside {} or its ancestors; \
             set {DATA_DIR_ENV} (or pass --data-dir) to the directory holding redial/, kg/, reviews/ and emotion/",
            abs.display()
        )
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

/// The run directory of the recipe named `name` whose file is `recipe_path`.
pub fn run_dir(recipe_path: &Path, name: &str) -> PathBuf {
    let root = match std::env::var_os(RUNS_DIR_ENV).filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => {
            let dir = recipe_path.parent().unwrap_or(Path::new("."));
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            dir.parent().map_or_else(|| dir.join(".."), Path::to_path_buf).join("runs")
        }
    };
    root.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_shared_data_beside_an_ancestor() {
        let root = std::env::temp_dir().join(format!("ecr-engine-paths-{}", std::process::id()));
        let data = root.join("shared").join("data");
        let deep = root.join("main").join("plugins").join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(find_data_dir_from(&deep), Some(data.clone()));
        assert_eq!(find_data_dir_from(&root.join("main")), Some(data));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn run_dir_is_runs_beside_the_recipes_directory() {
        if std::env::var_os(RUNS_DIR_ENV).is_none() {
            assert_eq!(run_dir(Path::new("/p/recipes/ecr.toml"), "ecr"), PathBuf::from("/p/runs/ecr"));
            assert_eq!(run_dir(Path::new("/p/recipes/x.toml"), "mine"), PathBuf::from("/p/runs/mine"));
        }
    }
}
