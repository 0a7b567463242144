//! `ecr compare`: several recipes over several seeds, side by side.

pub mod report;

pub use report::{Comparison, DEFAULT_METRICS, RecipeRuns, ReportError};
