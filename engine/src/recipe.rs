//! Recipes: loading, `extends`, validation with file/line/column diagnostics. PLACEHOLDER.

use crate::registry::Registry;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    /// The dotted recipe key it is about (e.g. `stages.emotion.with.threshold`).
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Every problem found in a recipe.
#[derive(Debug, Clone)]
pub struct RecipeError(pub Vec<Diagnostic>);

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{}: {}: {}", d.file.display(), d.key, d.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for RecipeError {}

/// A loaded and validated recipe.
#[derive(Clone)]
pub struct Recipe {
    path: PathBuf,
}

impl Recipe {
    /// Load, resolve `extends`, and validate against `registry`.
    pub fn load(path: impl AsRef<Path>, _registry: &Registry) -> Result<Recipe, RecipeError> {
        Ok(Recipe { path: path.as_ref().to_path_buf() })
    }

    /// The recipe file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
