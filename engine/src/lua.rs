//! Lua stages: sandboxed Lua 5.4 scripts (mlua, vendored Lua).
//!
//! A recipe stage with `use = "lua"` runs a script that defines one global
//! function, chosen by the stage's `hook` key:
//!
//! - `run(turn)` (hook `"run"`, the default): the whole [`Turn`] arrives as a
//!   plain Lua table (its serde form: `turn.user.text`, `turn.feedback[1].item`,
//!   `turn.ext.my_value`, ...). The function changes the table in place and
//!   returns nothing, or returns a new turn table. Only the fields listed in
//!   the stage's `writes` may change; changing any other field, or setting a
//!   key that is no turn field, fails the turn with an error naming it.
//! - `weight(item, feedback, emotions)` (hook `"weight"`): a feedback mapping
//!   m(f), called once per entry of `turn.feedback` with the item's KG id, the
//!   feedback (`"liked"`, `"disliked"` or `"not_said"`) and a table
//!   label → probability of the user's current emotions (empty if none, or
//!   if the stage sets `reads = ["feedback"]` because no earlier stage
//!   writes `user.emotions`). It
//!   returns a finite number ≥ 0, stored in [`ItemFeedback::weight`]. The
//!   same function is available outside a turn as [`LuaWeightFn`], for
//!   training code that needs the user's m(f).
//!
//! ```toml
//! [stages.feedback]
//! use = "lua"
//! with = { script = "lua/feedback.lua", hook = "weight" }
//! ```
//!
//! # Events and cancellation
//!
//! During `run`, the global function `emit(kind, value)` delivers an event to
//! the caller at once (while the turn runs): `emit("token", "Hel")` and
//! `emit("note", "...")` take a string ([`Event::Token`], [`Event::Note`]);
//! any other kind carries any value as [`Event::Custom`] (`emit("score",
//! {x = 1})`). The instruction hook also watches the turn's cancellation
//! token and deadline: a script still running when the caller cancels stops
//! within about a thousand instructions with [`LuaStageError::Interrupted`].
//!
//! # Sandbox
//!
//! Scripts see only a whitelist: the base functions `assert error ipairs next
//! pairs pcall xpcall print rawequal rawget rawlen rawset select setmetatable
//! getmetatable tonumber tostring type _VERSION`, and the `string`, `table`,
//! `math` and `utf8` libraries. There is no `io`, `os`, `package`/`require`,
//! `debug`, `coroutine`, `load`, `loadstring`, `loadfile`, `dofile`,
//! `collectgarbage`, `warn` or `string.dump`; precompiled bytecode is refused.
//! `print` goes to `tracing` (target `ecr::lua`, with the stage id), not to
//! stdout. `setmetatable` refuses `__gc` metamethods (a finalizer would run
//! later, during some other session's call).
//!
//! # Limits
//!
//! Every call (one `run`, or all `weight` calls of one turn) has an
//! instruction budget (`instruction_budget`, default
//! [`DEFAULT_INSTRUCTION_BUDGET`]), counted by a hook every
//! 1,000 VM instructions, and every Lua state has a memory cap
//! (`memory_limit_mb`, default [`DEFAULT_MEMORY_LIMIT_MB`]). A script that
//! exceeds either fails that turn with [`LuaStageError::Budget`] or
//! [`LuaStageError::Memory`]; `pcall` cannot swallow these two errors (the
//! sandbox's `pcall` re-raises them). Known limit: the budget counts VM
//! instructions, so one call of a string-library function (e.g. a
//! pathological pattern match on a huge string) runs to its end.
//!
//! # Isolation and concurrency
//!
//! One stage serves every session of an engine, from many threads at once.
//! Each stage keeps a pool of sandboxed Lua states; a call takes one from the
//! pool (or creates one), so sessions never wait on each other's scripts.
//! No state leaks between calls: each call runs the script's top level again
//! in a **fresh environment** (a new global table with fresh copies of the
//! library tables), so globals a script sets, or library functions it
//! replaces, are gone at the next call. The script is compiled once per state
//! as `local _ENV = ...; <script>` (on the script's first line, so line
//! numbers stay true) and called with the new environment. The shared string
//! metatable and mlua's array metatable are locked (`__metatable = false`).
//! A state whose call hit the budget or the memory cap is discarded, never
//! reused.
//!
//! # Cost
//!
//! Measured with `cargo test --release -p ecr-engine --test concurrency --
//! --ignored --nocapture` on the development machine: a `run` call costs
//! about 45 µs on a small turn and about 100 µs with 20 history utterances
//! (the turn is converted to a table and back, and compared field by field);
//! a `weight` stage costs about 10 µs for 10 items. A script that loops is
//! stopped after about 25 ms with the default budget.
//!
//! # Errors
//!
//! [`LuaStageError`] names the stage, the script and the line, e.g.
//! `stage "feedback" (recipes/lua/feedback.lua:12): attempt to perform
//! arithmetic on a nil value (local 'w')`. The line comes from Lua's
//! `chunkname:line:` prefix (the chunk is named after the script path), from
//! the traceback when the message has none, from the instruction hook for
//! budget and memory errors, and from the function's definition for a wrong
//! return type or an undeclared write.

use crate::emotion::{Emotion, EmotionDist};
use crate::stage::{
    BoxError, BuildContext, CancelToken, ConfigIssue, Event, Stage, StageFactory, StageIo, TurnContext,
};
use crate::turn::{Feedback, Field, ItemFeedback, Turn};
use mlua::chunk::ChunkMode;
use mlua::{Function, HookTriggers, Lua, LuaOptions, LuaSerdeExt, StdLib, Table, Value, VmState};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Default per-call instruction budget of a Lua stage.
pub const DEFAULT_INSTRUCTION_BUDGET: u64 = 10_000_000;

/// Default memory cap of one Lua state, in MiB.
pub const DEFAULT_MEMORY_LIMIT_MB: u32 = 32;

/// The instruction hook fires every this many VM instructions; budgets are
/// counted in these steps, so a budget must be at least this large.
const HOOK_INTERVAL: u32 = 1_000;

/// Largest accepted `memory_limit_mb`.
const MAX_MEMORY_LIMIT_MB: u32 = 4_096;

/// Lua's `LUA_IDSIZE`: how long a chunk name may be in messages.
const LUA_IDSIZE: usize = 60;

/// The function a Lua stage's script defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LuaHook {
    /// `run(turn)`: read and change the turn.
    #[default]
    Run,
    /// `weight(item, feedback, emotions)`: a feedback mapping m(f).
    Weight,
}

impl LuaHook {
    /// The Lua function's name.
    pub fn function(self) -> &'static str {
        match self {
            LuaHook::Run => "run",
            LuaHook::Weight => "weight",
        }
    }
}

/// Configuration of a Lua stage (`[stages.<id>.with]` of a `use = "lua"` stage).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuaConfig {
    /// The script, relative to the recipe file.
    pub script: PathBuf,
    /// Which function the script defines: `"run"` (change the turn) or
    /// `"weight"` (a feedback mapping; reads `feedback` and `user.emotions`,
    /// writes `feedback`).
    #[serde(default)]
    pub hook: LuaHook,
    /// Turn fields `run` reads (for recipe checking). With `hook = "weight"`
    /// it defaults to `["feedback", "user.emotions"]`; set `["feedback"]` when
    /// no earlier stage writes the emotions (`emotions` is then an empty table).
    #[serde(default)]
    pub reads: Vec<Field>,
    /// Turn fields `run` may change; changing any other field is an error.
    /// A weight hook always writes `feedback` (leave this out).
    #[serde(default)]
    pub writes: Vec<Field>,
    /// VM instructions one call may execute (at least 1000).
    #[serde(default = "default_budget")]
    pub instruction_budget: u64,
    /// Memory cap of each Lua state, in MiB (1 to 4096), including Lua's own
    /// libraries (about 0.1 MiB).
    #[serde(default = "default_memory")]
    pub memory_limit_mb: u32,
}

fn default_budget() -> u64 {
    DEFAULT_INSTRUCTION_BUDGET
}

fn default_memory() -> u32 {
    DEFAULT_MEMORY_LIMIT_MB
}

/// The resource limits of a Lua script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LuaLimits {
    /// VM instructions one call may execute.
    pub instruction_budget: u64,
    /// Memory cap of each Lua state, in MiB.
    pub memory_limit_mb: u32,
}

impl Default for LuaLimits {
    fn default() -> Self {
        LuaLimits { instruction_budget: DEFAULT_INSTRUCTION_BUDGET, memory_limit_mb: DEFAULT_MEMORY_LIMIT_MB }
    }
}

/// Where in a script something happened: the script path and, when known, the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The script as resolved against the recipe.
    pub script: PathBuf,
    /// The 1-based line, when known.
    pub line: Option<u32>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}", self.script.display()),
            None => write!(f, "{}", self.script.display()),
        }
    }
}

/// Why a Lua stage could not be built or failed a turn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LuaStageError {
    /// The script file cannot be read.
    #[error("stage {stage:?}: cannot read Lua script {}: {source}", script.display())]
    Read {
        /// Stage id.
        stage: String,
        /// The script path.
        script: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The script does not compile.
    #[error("stage {stage:?} ({at}): syntax error: {message}")]
    Syntax {
        /// Stage id.
        stage: String,
        /// Script and line.
        at: Location,
        /// Lua's message, without the location prefix.
        message: String,
    },
    /// The caller cancelled the turn (or its deadline passed) while the script ran.
    #[error("stage {stage:?} ({at}): stopped: the turn was cancelled or ran past its deadline")]
    Interrupted {
        /// Stage id.
        stage: String,
        /// Script and the line it was running.
        at: Location,
    },
    /// The script raised an error.
    #[error("stage {stage:?} ({at}): {message}")]
    Runtime {
        /// Stage id.
        stage: String,
        /// Script and line.
        at: Location,
        /// Lua's message, without the location prefix.
        message: String,
        /// Lua's stack traceback, if any.
        traceback: String,
    },
    /// The call ran more instructions than its budget.
    #[error(
        "stage {stage:?} ({at}): instruction budget of {budget} exceeded (an endless loop?); raise `instruction_budget` if the script really needs more"
    )]
    Budget {
        /// Stage id.
        stage: String,
        /// Script and the line running when the budget ran out.
        at: Location,
        /// The budget.
        budget: u64,
    },
    /// The Lua state ran out of its memory cap.
    #[error(
        "stage {stage:?} ({at}): memory limit of {limit_mb} MiB exceeded (a table that grows without end?); raise `memory_limit_mb` if the script really needs more"
    )]
    Memory {
        /// Stage id.
        stage: String,
        /// Script and the line last seen running (the allocation was near it).
        at: Location,
        /// The cap.
        limit_mb: u32,
    },
    /// The script does not define the hook function.
    #[error("stage {stage:?} ({at}): the script does not define a global function `{function}`{hint}")]
    MissingFunction {
        /// Stage id.
        stage: String,
        /// Script.
        at: Location,
        /// The expected function.
        function: &'static str,
        /// What to do, if there is more to say.
        hint: String,
    },
    /// The hook function returned a value of the wrong type.
    #[error("stage {stage:?} ({at}): `{function}` returned {got}; expected {expected}")]
    WrongType {
        /// Stage id.
        stage: String,
        /// Script and the line where the function is defined.
        at: Location,
        /// The function.
        function: &'static str,
        /// What it returned.
        got: String,
        /// What it should return.
        expected: &'static str,
    },
    /// `run` changed a turn field the stage does not declare in `writes`.
    #[error(
        "stage {stage:?} ({at}): `run` changed {field}, which the stage does not declare: add \"{field}\" to `writes` or leave the field alone"
    )]
    UndeclaredWrite {
        /// Stage id.
        stage: String,
        /// Script and the line where `run` is defined.
        at: Location,
        /// The field.
        field: Field,
    },
    /// `run` set a key that is no field of the turn (or one no stage may change).
    #[error(
        "stage {stage:?} ({at}): `run` set turn.{key}, which is not a turn field a stage may write; keep values of your own in turn.ext.<name>"
    )]
    UnknownField {
        /// Stage id.
        stage: String,
        /// Script and the line where `run` is defined.
        at: Location,
        /// The key, dotted (e.g. `respnse`, `user.role`).
        key: String,
    },
    /// The turn `run` left or returned does not have the turn's shape.
    #[error("stage {stage:?} ({at}): the turn `run` produced does not fit at {path}: {message}")]
    BadTurn {
        /// Stage id.
        stage: String,
        /// Script and the line where `run` is defined.
        at: Location,
        /// Where in the turn (e.g. `feedback[0].weight`).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The sandbox could not be set up (an internal error).
    #[error("stage {stage:?} ({}): cannot set up the Lua sandbox: {message}", script.display())]
    Sandbox {
        /// Stage id.
        stage: String,
        /// Script.
        script: PathBuf,
        /// What failed.
        message: String,
    },
}

/// The factory of `use = "lua"` stages.
pub struct LuaFactory;

impl StageFactory for LuaFactory {
    type Config = LuaConfig;

    fn name(&self) -> &'static str {
        "lua"
    }

    fn description(&self) -> &'static str {
        "a sandboxed Lua 5.4 script that defines run(turn) or weight(item, feedback, emotions)"
    }

    fn io(&self, config: &LuaConfig) -> StageIo {
        match config.hook {
            LuaHook::Run => StageIo::new(config.reads.clone(), config.writes.clone()),
            LuaHook::Weight if config.reads.is_empty() => {
                StageIo::new([Field::Feedback, Field::UserEmotions], [Field::Feedback])
            }
            LuaHook::Weight => StageIo::new(config.reads.clone(), [Field::Feedback]),
        }
    }

    fn check(&self, config: &LuaConfig, ctx: &BuildContext) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let path = ctx.resolve(&config.script);
        if let Some(issue) = ConfigIssue::missing_file("script", &path) {
            issues.push(issue);
        } else if let Some(issue) = syntax_issue(&path, ctx.stage_id()) {
            issues.push(issue);
        }
        if config.hook == LuaHook::Weight {
            let reads_ok = config.reads.is_empty()
                || (config.reads.contains(&Field::Feedback)
                    && config.reads.iter().all(|f| matches!(f, Field::Feedback | Field::UserEmotions)));
            if !reads_ok {
                issues.push(ConfigIssue::new(
                    "reads",
                    "a weight hook reads feedback and user.emotions: leave `reads` out, or set [\"feedback\"] \
                     when no earlier stage writes user.emotions (the script then gets an empty emotions table)",
                ));
            }
            if config.writes.iter().any(|f| *f != Field::Feedback) {
                issues.push(ConfigIssue::new("writes", "a weight hook writes feedback only: leave `writes` out"));
            }
        }
        if config.instruction_budget < u64::from(HOOK_INTERVAL) {
            issues.push(ConfigIssue::new(
                "instruction_budget",
                format!("{} is too small: use at least {HOOK_INTERVAL}", config.instruction_budget),
            ));
        }
        if !(1..=MAX_MEMORY_LIMIT_MB).contains(&config.memory_limit_mb) {
            issues.push(ConfigIssue::new(
                "memory_limit_mb",
                format!("{} is out of range: use 1 to {MAX_MEMORY_LIMIT_MB}", config.memory_limit_mb),
            ));
        }
        issues
    }

    fn build(&self, config: LuaConfig, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        let limits =
            LuaLimits { instruction_budget: config.instruction_budget, memory_limit_mb: config.memory_limit_mb };
        let path = ctx.resolve(&config.script);
        Ok(match config.hook {
            LuaHook::Run => Box::new(LuaRunStage {
                host: LuaHost::new(ctx.stage_id(), &path, limits, LuaHook::Run)?,
                writes: config.writes,
            }),
            LuaHook::Weight => Box::new(LuaWeightStage {
                weight: LuaWeightFn::load(ctx.stage_id(), &path, limits)?,
                emotions: config.reads.is_empty() || config.reads.contains(&Field::UserEmotions),
            }),
        })
    }
}

/// Compile `path` in a bare state; a syntax error becomes an issue on `script`.
fn syntax_issue(path: &Path, stage: &str) -> Option<ConfigIssue> {
    let script = match Script::read(stage, path, LuaLimits::default()) {
        Ok(s) => s,
        Err(e) => return Some(ConfigIssue::new("script", e.to_string())),
    };
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()).ok()?;
    match lua.load(script.wrapped_source()).set_name(&script.chunk_name).set_mode(ChunkMode::Text).into_function() {
        Ok(_) => None,
        Err(e) => {
            let (line, message) = script.split_location(&flatten(&e).0);
            let at = Location { script: script.path.clone(), line };
            Some(ConfigIssue::new("script", format!("syntax error at {at}: {message}")))
        }
    }
}

/// A `run(turn)` stage.
struct LuaRunStage {
    host: LuaHost,
    writes: Vec<Field>,
}

impl Stage for LuaRunStage {
    fn run(&self, turn: &mut Turn, cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        Ok(self.run_turn(turn, cx)?)
    }
}

impl LuaRunStage {
    fn run_turn(&self, turn: &mut Turn, cx: &mut TurnContext<'_>) -> Result<(), LuaStageError> {
        let host = &self.host;
        let new_turn = host.call(StopWhen::of(cx), |sandbox, env| {
            let run = host.function(env, LuaHook::Run)?;
            let at = host.defined_at(&run);
            let options =
                mlua::serde::SerializeOptions::new().serialize_none_to_null(false).serialize_unit_to_null(false);
            let input = sandbox.lua.to_value_with(&*turn, options)?;
            // `emit(kind, value)` delivers an event to the caller at once; it
            // lives only during this call (a scoped function borrowing `cx`).
            let returned = sandbox.lua.scope(|scope| {
                let emit = scope.create_function_mut(|lua, (kind, value): (String, Value)| {
                    cx.emit(lua_event(lua, &kind, value)?);
                    Ok(())
                })?;
                env.raw_set("emit", emit)?;
                run.call::<Value>(input.clone())
            })?;
            let output = match returned {
                Value::Nil => input,
                Value::Table(t) => Value::Table(t),
                other => {
                    return Err(CallError::Stage(LuaStageError::WrongType {
                        stage: host.script.stage.clone(),
                        at,
                        function: "run",
                        got: describe(&other),
                        expected: "nothing (change the turn in place) or a turn table",
                    }));
                }
            };
            if let Value::Table(t) = &output {
                host.check_keys(t, &at)?;
            }
            let de = mlua::serde::Deserializer::new(output);
            serde_path_to_error::deserialize::<_, Turn>(de)
                .map_err(|e| {
                    let path = e.path().to_string();
                    CallError::Stage(LuaStageError::BadTurn {
                        stage: host.script.stage.clone(),
                        at: at.clone(),
                        path: if path == "." { "the top".into() } else { path },
                        message: flatten(e.inner()).0,
                    })
                })
                .map(|t| (t, at))
        })?;
        let (mut new_turn, at) = new_turn;
        if new_turn.user.role != turn.user.role {
            return Err(LuaStageError::UnknownField { stage: host.script.stage.clone(), at, key: "user.role".into() });
        }
        let ext_keys: std::collections::BTreeSet<String> =
            turn.ext.keys().chain(new_turn.ext.keys()).cloned().collect();
        let changed = Field::FIXED.iter().cloned().chain(ext_keys.into_iter().map(Field::Ext));
        let mut accepted = Vec::new();
        for field in changed {
            if field.same_in(turn, &new_turn) {
                continue;
            }
            if !self.writes.contains(&field) {
                return Err(LuaStageError::UndeclaredWrite { stage: host.script.stage.clone(), at, field });
            }
            accepted.push(field);
        }
        for field in accepted {
            field.move_value(&mut new_turn, turn);
        }
        Ok(())
    }
}

/// A user-scripted feedback mapping m(f): the `weight(item, feedback,
/// emotions)` function of a Lua script, callable from any thread.
///
/// The `hook = "weight"` stage calls it for every entry of `turn.feedback`;
/// training code can call [`LuaWeightFn::weight`] directly.
pub struct LuaWeightFn {
    host: LuaHost,
}

impl LuaWeightFn {
    /// Load the script at `script` (used as given; resolve it against the
    /// recipe first) for stage `stage`, and check that it defines `weight`.
    pub fn load(stage: &str, script: impl AsRef<Path>, limits: LuaLimits) -> Result<Self, LuaStageError> {
        Ok(LuaWeightFn { host: LuaHost::new(stage, script.as_ref(), limits, LuaHook::Weight)? })
    }

    /// m(f) for one item: call `weight(item, feedback, emotions)` once (one
    /// call, one instruction budget).
    pub fn weight(&self, item: u32, feedback: Feedback, emotions: Option<&EmotionDist>) -> Result<f32, LuaStageError> {
        let mut entries = [ItemFeedback { item, feedback, weight: None }];
        self.weigh(&mut entries, emotions)?;
        Ok(entries[0].weight.unwrap_or_default())
    }

    /// Set the weight of every entry, in one call (one budget for all).
    pub fn weigh(&self, entries: &mut [ItemFeedback], emotions: Option<&EmotionDist>) -> Result<(), LuaStageError> {
        if entries.is_empty() {
            return Ok(());
        }
        let host = &self.host;
        let weights = host.call(StopWhen::default(), |sandbox, env| {
            let weight = host.function(env, LuaHook::Weight)?;
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries.iter() {
                let table = sandbox.lua.create_table()?;
                if let Some(d) = emotions {
                    for e in Emotion::ALL {
                        table.raw_set(e.name(), f64::from(d.get(e)))?;
                    }
                }
                let value = weight.call::<Value>((entry.item, feedback_name(entry.feedback), table))?;
                let w = match value {
                    Value::Integer(i) => i as f64,
                    Value::Number(n) => n,
                    ref other => {
                        return Err(host.wrong_weight(&weight, describe(other)));
                    }
                };
                if !w.is_finite() || w < 0.0 {
                    return Err(host.wrong_weight(&weight, format!("{w}")));
                }
                out.push(w as f32);
            }
            Ok(out)
        })?;
        for (entry, w) in entries.iter_mut().zip(weights) {
            entry.weight = Some(w);
        }
        Ok(())
    }
}

/// A `weight` stage: sets the weight of every entry of `turn.feedback`.
struct LuaWeightStage {
    weight: LuaWeightFn,
    /// Whether the stage reads `user.emotions` (else scripts get an empty table).
    emotions: bool,
}

impl Stage for LuaWeightStage {
    fn run(&self, turn: &mut Turn, _cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        let emotions = if self.emotions { turn.user.emotions } else { None };
        Ok(self.weight.weigh(&mut turn.feedback, emotions.as_ref())?)
    }
}

/// The event of a script's `emit(kind, value)`: `"token"` and `"note"` take
/// a string (numbers are converted), any other kind carries any value.
fn lua_event(lua: &Lua, kind: &str, value: Value) -> mlua::Result<Event> {
    let text = |v: &Value| match v {
        Value::String(s) => Ok(s.to_str()?.to_string()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        other => {
            Err(mlua::Error::runtime(format!("emit({kind:?}, value): expected a string, got {}", describe(other))))
        }
    };
    Ok(match kind {
        "token" => Event::Token { text: text(&value)? },
        "note" => Event::Note { text: text(&value)? },
        _ => Event::Custom { name: kind.to_string(), value: lua.from_value(value)? },
    })
}

/// The name scripts see for a feedback value.
fn feedback_name(f: Feedback) -> &'static str {
    match f {
        Feedback::Liked => "liked",
        Feedback::Disliked => "disliked",
        Feedback::NotSaid => "not_said",
    }
}

/// A short description of a Lua value for messages (`a string ("x")`, `nil`).
fn describe(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Boolean(b) => format!("a boolean ({b})"),
        Value::Integer(i) => format!("a number ({i})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => {
            let s = s.to_string_lossy();
            let short: String = s.chars().take(40).collect();
            format!("a string ({short:?})")
        }
        other => format!("a {}", other.type_name()),
    }
}

/// A loaded script: its source and how Lua names it.
struct Script {
    stage: String,
    path: PathBuf,
    /// `@<path>`: Lua prints such a chunk as `<path>:<line>:`.
    chunk_name: String,
    /// What Lua prints for the chunk (the path, shortened like `luaO_chunkid`).
    short_src: String,
    source: String,
    limits: LuaLimits,
}

impl Script {
    fn read(stage: &str, path: &Path, limits: LuaLimits) -> Result<Self, LuaStageError> {
        let source = std::fs::read_to_string(path).map_err(|source| LuaStageError::Read {
            stage: stage.to_string(),
            script: path.to_path_buf(),
            source,
        })?;
        let name = path.display().to_string();
        // luaO_chunkid: a name longer than LUA_IDSIZE - 1 bytes keeps its end, after "...".
        let short_src = if name.len() < LUA_IDSIZE {
            name.clone()
        } else {
            let keep = LUA_IDSIZE - 1 - 3;
            let bytes = &name.as_bytes()[name.len() - keep..];
            format!("...{}", String::from_utf8_lossy(bytes))
        };
        Ok(Script {
            stage: stage.to_string(),
            path: path.to_path_buf(),
            chunk_name: format!("@{name}"),
            short_src,
            source,
            limits,
        })
    }

    /// The source as compiled: the environment is the chunk's first argument,
    /// declared on the script's own first line so line numbers stay true.
    fn wrapped_source(&self) -> String {
        format!("local _ENV = ...; {}", self.source)
    }

    fn at(&self, line: Option<u32>) -> Location {
        Location { script: self.path.clone(), line }
    }

    /// Split Lua's `<short_src>:<line>: ` prefix off a message.
    fn split_location(&self, message: &str) -> (Option<u32>, String) {
        if let Some(rest) = message.strip_prefix(&self.short_src).and_then(|r| r.strip_prefix(':')) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let (Ok(line), Some(tail)) = (digits.parse(), rest[digits.len()..].strip_prefix(':')) {
                return (Some(line), tail.trim_start().to_string());
            }
        }
        (None, message.to_string())
    }

    /// The first line of this script named in a traceback.
    fn line_in_traceback(&self, traceback: &str) -> Option<u32> {
        traceback.lines().find_map(|l| {
            let rest = l.trim_start().strip_prefix(&self.short_src)?.strip_prefix(':')?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
    }
}

/// Per-state counters shared with the instruction hook.
#[derive(Default)]
struct Meter {
    /// Instructions left in this call.
    remaining: AtomicI64,
    /// The budget ran out during this call.
    exceeded: AtomicBool,
    /// The state hit its memory cap during this call.
    out_of_memory: AtomicBool,
    /// The script line the hook last saw (0: none).
    line: AtomicU32,
    /// The caller interrupted the turn during this call.
    interrupted: AtomicBool,
    /// What interrupts this call: the turn's cancellation token and deadline.
    stop: Mutex<StopWhen>,
}

/// When the hook stops a running call on behalf of the turn.
#[derive(Debug, Clone, Default)]
struct StopWhen {
    cancel: Option<CancelToken>,
    deadline: Option<Instant>,
}

impl StopWhen {
    fn of(cx: &TurnContext<'_>) -> Self {
        StopWhen { cancel: cx.cancel_token().cloned(), deadline: cx.deadline() }
    }

    fn hit(&self) -> bool {
        self.cancel.as_ref().is_some_and(CancelToken::is_cancelled)
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

impl Meter {
    fn reset(&self, budget: u64) {
        self.remaining.store(i64::try_from(budget).unwrap_or(i64::MAX), Ordering::Relaxed);
        self.exceeded.store(false, Ordering::Relaxed);
        self.out_of_memory.store(false, Ordering::Relaxed);
        self.line.store(0, Ordering::Relaxed);
        self.interrupted.store(false, Ordering::Relaxed);
    }

    fn line(&self) -> Option<u32> {
        Some(self.line.load(Ordering::Relaxed)).filter(|&l| l > 0)
    }

    /// Whether the state must not be reused.
    fn spoiled(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
            || self.out_of_memory.load(Ordering::Relaxed)
            || self.interrupted.load(Ordering::Relaxed)
    }
}

/// Builds the per-call environments. Runs once per state with the state's
/// real globals, which scripts never see.
const SANDBOX_LUA: &str = r##"
local poisoned, log = ...
local next, select, tostring, type, rawget, error = next, select, tostring, type, rawget, error
local raw_pcall, raw_xpcall, raw_setmetatable, concat = pcall, xpcall, setmetatable, table.concat

string.dump = nil
getmetatable("").__metatable = false

local function pass(ok, ...)
  if not ok and poisoned((...)) then error((...), 0) end
  return ok, ...
end

local safe = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  rawequal = rawequal, rawget = rawget, rawlen = rawlen, rawset = rawset, select = select,
  tonumber = tonumber, tostring = tostring, type = type, getmetatable = getmetatable,
  _VERSION = _VERSION,
  pcall = function(f, ...) return pass(raw_pcall(f, ...)) end,
  xpcall = function(f, h, ...) return pass(raw_xpcall(f, h, ...)) end,
  setmetatable = function(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("setmetatable: __gc metamethods are not allowed in ecr scripts", 2)
    end
    return raw_setmetatable(t, mt)
  end,
  print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    log(concat(parts, "\t"))
  end,
}
local libs = { string = string, table = table, math = math, utf8 = utf8 }

return function()
  local env = {}
  for k, v in next, safe do env[k] = v end
  for name, lib in next, libs do
    local copy = {}
    for k, v in next, lib do copy[k] = v end
    env[name] = copy
  end
  env._G = env
  return env
end
"##;

/// One sandboxed Lua state with the script compiled in it.
struct Sandbox {
    lua: Lua,
    new_env: Function,
    chunk: Function,
    meter: Arc<Meter>,
}

impl Sandbox {
    fn new(script: &Script) -> Result<Self, LuaStageError> {
        let sandbox_err = |e: mlua::Error| LuaStageError::Sandbox {
            stage: script.stage.clone(),
            script: script.path.clone(),
            message: e.to_string(),
        };
        let lua = Lua::new_with(StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8, LuaOptions::default())
            .map_err(sandbox_err)?;
        let meter = Arc::new(Meter::default());

        let m = Arc::clone(&meter);
        let poisoned = lua
            .create_function(move |_, err: Value| {
                let oom = matches!(&err, Value::String(s) if s.as_bytes().as_ref() == b"not enough memory");
                if oom {
                    m.out_of_memory.store(true, Ordering::Relaxed);
                }
                Ok(oom || m.exceeded.load(Ordering::Relaxed) || m.interrupted.load(Ordering::Relaxed))
            })
            .map_err(sandbox_err)?;
        let stage = script.stage.clone();
        let log = lua
            .create_function(move |_, line: String| {
                tracing::info!(target: "ecr::lua", stage = %stage, "{line}");
                Ok(())
            })
            .map_err(sandbox_err)?;
        let new_env: Function = lua
            .load(SANDBOX_LUA)
            .set_name("=ecr-sandbox")
            .set_mode(ChunkMode::Text)
            .call((poisoned, log))
            .map_err(sandbox_err)?;
        lua.array_metatable().raw_set("__metatable", false).map_err(sandbox_err)?;

        let chunk = lua
            .load(script.wrapped_source())
            .set_name(&script.chunk_name)
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| {
                let (line, message) = script.split_location(&flatten(&e).0);
                LuaStageError::Syntax { stage: script.stage.clone(), at: script.at(line), message }
            })?;

        let m = Arc::clone(&meter);
        let source = script.chunk_name.clone();
        lua.set_hook(HookTriggers::new().every_nth_instruction(HOOK_INTERVAL), move |_, debug| {
            if debug.source().source.as_deref() == Some(source.as_str())
                && let Some(line) = debug.current_line()
            {
                m.line.store(u32::try_from(line).unwrap_or(u32::MAX), Ordering::Relaxed);
            }
            let left = m.remaining.fetch_sub(i64::from(HOOK_INTERVAL), Ordering::Relaxed) - i64::from(HOOK_INTERVAL);
            if left < 0 || m.exceeded.load(Ordering::Relaxed) {
                m.exceeded.store(true, Ordering::Relaxed);
                return Err(mlua::Error::runtime("instruction budget exceeded"));
            }
            if m.interrupted.load(Ordering::Relaxed) || m.stop.lock().unwrap_or_else(|p| p.into_inner()).hit() {
                m.interrupted.store(true, Ordering::Relaxed);
                return Err(mlua::Error::runtime("the turn was interrupted"));
            }
            Ok(VmState::Continue)
        })
        .map_err(sandbox_err)?;
        let bytes = usize::try_from(script.limits.memory_limit_mb).unwrap_or(usize::MAX).saturating_mul(1 << 20);
        lua.set_memory_limit(bytes).map_err(sandbox_err)?;
        Ok(Sandbox { lua, new_env, chunk, meter })
    }
}

/// An error inside a call: from Lua, or already one of ours.
enum CallError {
    Lua(mlua::Error),
    Stage(LuaStageError),
}

impl From<mlua::Error> for CallError {
    fn from(e: mlua::Error) -> Self {
        CallError::Lua(e)
    }
}

/// A script with its pool of sandboxed states.
struct LuaHost {
    script: Script,
    pool: Mutex<Vec<Sandbox>>,
    max_idle: usize,
}

impl LuaHost {
    /// Read and compile the script, and check (by running its top level once)
    /// that it defines the hook function.
    fn new(stage: &str, path: &Path, limits: LuaLimits, hook: LuaHook) -> Result<Self, LuaStageError> {
        let script = Script::read(stage, path, limits)?;
        let max_idle = std::thread::available_parallelism().map_or(4, |n| n.get()) * 2;
        let host = LuaHost { script, pool: Mutex::new(Vec::new()), max_idle };
        host.call(StopWhen::default(), |_, env| host.function(env, hook).map(|_| ()))?;
        Ok(host)
    }

    /// Run `f` with a sandbox whose fresh environment holds the script's
    /// globals, under the budget; map every error to a [`LuaStageError`].
    fn call<R>(
        &self,
        stop: StopWhen,
        f: impl FnOnce(&Sandbox, &Table) -> Result<R, CallError>,
    ) -> Result<R, LuaStageError> {
        let idle = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let sandbox = match idle {
            Some(s) => s,
            None => Sandbox::new(&self.script)?,
        };
        // The environment is built before the budget starts: the script pays only for itself.
        sandbox.meter.reset(u64::MAX >> 1);
        *sandbox.meter.stop.lock().unwrap_or_else(|p| p.into_inner()) = stop;
        let result = sandbox.new_env.call::<Table>(()).map_err(CallError::from).and_then(|env| {
            sandbox.meter.reset(self.script.limits.instruction_budget);
            sandbox.chunk.call::<()>(env.clone())?;
            f(&sandbox, &env)
        });
        let result = result.map_err(|e| match e {
            CallError::Stage(e) => e,
            CallError::Lua(e) => self.lua_error(&sandbox.meter, &e),
        });
        if sandbox.meter.spoiled() {
            tracing::debug!(stage = %self.script.stage, "discarding a Lua state that hit its budget or memory cap");
        } else {
            // Keep idle states lean: collect now if the call left much garbage behind.
            let limit = usize::try_from(self.script.limits.memory_limit_mb).unwrap_or(usize::MAX) << 20;
            if sandbox.lua.used_memory() > limit / 4 {
                let _ = sandbox.lua.gc_collect();
            }
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < self.max_idle {
                pool.push(sandbox);
            }
        }
        result
    }

    /// The hook function the script's top level defined in `env`.
    fn function(&self, env: &Table, hook: LuaHook) -> Result<Function, CallError> {
        match env.raw_get::<Value>(hook.function())? {
            Value::Function(f) => Ok(f),
            _ => {
                let other = match hook {
                    LuaHook::Run => LuaHook::Weight,
                    LuaHook::Weight => LuaHook::Run,
                };
                let hint = if matches!(env.raw_get::<Value>(other.function())?, Value::Function(_)) {
                    format!(
                        " (it defines `{}`: set hook = \"{}\" in the stage's `with`)",
                        other.function(),
                        other.function()
                    )
                } else {
                    format!(" (define `function {}(...)` at the top level, not as a local)", hook.function())
                };
                Err(CallError::Stage(LuaStageError::MissingFunction {
                    stage: self.script.stage.clone(),
                    at: self.script.at(None),
                    function: hook.function(),
                    hint,
                }))
            }
        }
    }

    /// Where a function of the script is defined.
    fn defined_at(&self, f: &Function) -> Location {
        self.script.at(f.info().line_defined.and_then(|l| u32::try_from(l).ok()))
    }

    fn wrong_weight(&self, f: &Function, got: String) -> CallError {
        CallError::Stage(LuaStageError::WrongType {
            stage: self.script.stage.clone(),
            at: self.defined_at(f),
            function: "weight",
            got,
            expected: "a finite number >= 0",
        })
    }

    /// Refuse keys that are no turn fields (typos like `turn.respnse`).
    fn check_keys(&self, turn: &Table, at: &Location) -> Result<(), CallError> {
        let unknown = |key: String| {
            CallError::Stage(LuaStageError::UnknownField { stage: self.script.stage.clone(), at: at.clone(), key })
        };
        for pair in turn.pairs::<Value, Value>() {
            let (key, value) = pair?;
            let name = key.to_string().unwrap_or_else(|_| key.type_name().to_string());
            if !Field::top_level_keys().contains(&name) {
                return Err(unknown(name));
            }
            if let (true, Value::Table(user)) = (name == "user", value) {
                for pair in user.pairs::<Value, Value>() {
                    let (key, _) = pair?;
                    let name = key.to_string().unwrap_or_else(|_| key.type_name().to_string());
                    // `role` is part of the record but no field: scripts may echo it unchanged.
                    if name != "role" && !Field::user_keys().contains(&name) {
                        return Err(unknown(format!("user.{name}")));
                    }
                }
            }
        }
        Ok(())
    }

    /// Map an error from Lua, using what the hook saw.
    fn lua_error(&self, meter: &Meter, err: &mlua::Error) -> LuaStageError {
        let stage = self.script.stage.clone();
        let limits = self.script.limits;
        if meter.interrupted.load(Ordering::Relaxed) {
            return LuaStageError::Interrupted { stage, at: self.script.at(meter.line()) };
        }
        if meter.exceeded.load(Ordering::Relaxed) {
            return LuaStageError::Budget {
                stage,
                at: self.script.at(meter.line()),
                budget: limits.instruction_budget,
            };
        }
        let (message, traceback) = flatten(err);
        if meter.out_of_memory.load(Ordering::Relaxed)
            || matches!(root(err), mlua::Error::MemoryError(_))
            || message == "not enough memory"
        {
            meter.out_of_memory.store(true, Ordering::Relaxed);
            return LuaStageError::Memory { stage, at: self.script.at(meter.line()), limit_mb: limits.memory_limit_mb };
        }
        if let mlua::Error::SyntaxError { .. } = root(err) {
            let (line, message) = self.script.split_location(&message);
            return LuaStageError::Syntax { stage, at: self.script.at(line), message };
        }
        let (line, message) = self.script.split_location(&message);
        let line = line.or_else(|| self.script.line_in_traceback(&traceback)).or_else(|| meter.line());
        LuaStageError::Runtime { stage, at: self.script.at(line), message, traceback }
    }
}

/// The innermost error of a chain of callback errors.
fn root(err: &mlua::Error) -> &mlua::Error {
    match err {
        mlua::Error::CallbackError { cause, .. } => root(cause),
        mlua::Error::WithContext { cause, .. } => root(cause),
        other => other,
    }
}

/// An error's message and traceback (the message without the traceback).
fn flatten(err: &mlua::Error) -> (String, String) {
    match err {
        mlua::Error::CallbackError { traceback, cause } => {
            let (message, inner) = flatten(cause);
            (message, if inner.is_empty() { traceback.clone() } else { inner })
        }
        mlua::Error::WithContext { context, cause } => {
            let (message, traceback) = flatten(cause);
            (format!("{context}: {message}"), traceback)
        }
        mlua::Error::RuntimeError(m) | mlua::Error::MemoryError(m) | mlua::Error::SyntaxError { message: m, .. } => {
            match m.split_once("\nstack traceback:") {
                Some((message, tb)) => (message.to_string(), format!("stack traceback:{tb}")),
                None => (m.clone(), String::new()),
            }
        }
        other => (other.to_string(), String::new()),
    }
}
