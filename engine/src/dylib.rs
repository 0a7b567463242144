//! Dynamic-library stages (libloading, C ABI, JSON in and out). PLACEHOLDER: being written.

use crate::stage::{BoxError, BuildContext, Stage, StageFactory, StageIo};
use serde::{Deserialize, Serialize};

/// Configuration of a dylib stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DylibConfig {
    /// The library, relative to the recipe.
    pub library: std::path::PathBuf,
}

/// Factory of `use = "dylib"` stages.
pub struct DylibFactory;

impl StageFactory for DylibFactory {
    type Config = DylibConfig;
    fn name(&self) -> &'static str {
        "dylib"
    }
    fn description(&self) -> &'static str {
        "a stage in a dynamic library with ecr's C ABI (JSON in and out)"
    }
    fn io(&self, _config: &DylibConfig) -> StageIo {
        StageIo::default()
    }
    fn build(&self, _config: DylibConfig, _ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        Err("dylib stages are not implemented yet".into())
    }
}
