//! Lua stages (mlua, vendored Lua 5.4). PLACEHOLDER: being written.

use crate::stage::{BoxError, BuildContext, Stage, StageFactory, StageIo};
use serde::{Deserialize, Serialize};

/// Configuration of a Lua stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuaConfig {
    /// The script, relative to the recipe.
    pub script: std::path::PathBuf,
}

/// Factory of `use = "lua"` stages.
pub struct LuaFactory;

impl StageFactory for LuaFactory {
    type Config = LuaConfig;
    fn name(&self) -> &'static str {
        "lua"
    }
    fn description(&self) -> &'static str {
        "a sandboxed Lua 5.4 script that defines run(turn) or weight(item, feedback, emotions)"
    }
    fn io(&self, _config: &LuaConfig) -> StageIo {
        StageIo::default()
    }
    fn build(&self, _config: LuaConfig, _ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        Err("lua stages are not implemented yet".into())
    }
}
