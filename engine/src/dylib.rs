//! Dynamic-library stages: a stage in a shared library (`.so`, `.dylib`,
//! `.dll`) that speaks ecr's C ABI, with JSON in and out.
//!
//! ```toml
//! [stages.cues]
//! use = "dylib"
//! [stages.cues.with]
//! library = "../target/release/libecr_example_cues.so"   # relative to the recipe
//! reads = ["user.text"]
//! writes = ["ext.cues"]
//! config = { field = "ext.cues" }                        # free-form, passed to create
//! ```
//!
//! # The C ABI, version 1
//!
//! Only C types cross the boundary (no Rust trait objects, `String`s or
//! panics: see Bevy's removal of Rust-ABI dynamic plugins), and the data
//! crosses as JSON, so a library built by any compiler, Rust version or
//! language works. A library exports five functions (the header is
//! `plugins/examples/ecr_stage.h`; [`abi`] has the same as Rust types):
//!
//! ```c
//! #define ECR_ABI_VERSION 1
//! uint32_t ecr_abi_version(void);
//! void   *ecr_stage_create(const char *config_json, char **err_out);
//! int32_t ecr_stage_run(void *stage, const char *input_json, char **out_json);
//! void    ecr_stage_drop(void *stage);
//! void    ecr_string_free(char *s);
//! ```
//!
//! - `ecr_abi_version` returns the ABI version the library implements. The
//!   host calls it first, before it looks up any other symbol, and refuses a
//!   library whose version is not [`abi::ECR_ABI_VERSION`].
//! - `ecr_stage_create` gets the stage's `config` table as a JSON object and
//!   returns an opaque stage handle, or NULL after storing an error message
//!   in `*err_out`. It is called once per engine build.
//! - `ecr_stage_run` gets a JSON object with the stage's declared `reads`,
//!   field name → value (`{"user.text": "I loved Alien"}`; field names as in
//!   recipes, values in the turn's serde form). It returns 0 and stores in
//!   `*out_json` a JSON object field name → new value, with only the fields
//!   it changes, each of which must be one of the declared `writes`; or it
//!   returns non-zero and stores an error message in `*out_json`.
//!   **It is called concurrently from several threads with the same handle**:
//!   keep the stage immutable or lock inside it, or set `exclusive = true` in
//!   the recipe so that the host makes one call at a time.
//! - `ecr_stage_drop` frees a handle; the host calls it once, when the
//!   engine that built the stage is dropped.
//! - Optionally, `int32_t ecr_stage_run_cancellable(void *stage, const char
//!   *input_json, const volatile uint8_t *cancelled, char **out_json)`: the
//!   same as `ecr_stage_run`, with a flag that becomes non-zero when the
//!   caller cancels the turn; a long-running library polls it and returns
//!   early (any non-zero code). Used instead of `ecr_stage_run` when exported.
//! - `ecr_string_free` frees a string the library stored in `err_out` or
//!   `out_json`; the host calls it on every such string. Strings the host
//!   passes in stay owned by the host and are valid only during the call.
//!
//! All strings are NUL-terminated UTF-8. A Rust library must not let a panic
//! unwind out of these functions: wrap each body in `catch_unwind` and turn
//! a panic into an error return (`plugins/examples/cues` shows how).
//!
//! # What the host refuses
//!
//! Each with a [`DylibStageError`] that names the stage and the library: a
//! library that is missing or is no loadable library, that lacks one of the
//! five symbols, that reports another ABI version, whose create fails, whose
//! run fails, whose output is not valid JSON or not a JSON object, or names
//! a field that does not exist, was not declared in `writes`, or holds a
//! value of the wrong type. A turn's changes are applied only when the whole
//! output is valid.
//!
//! # Lifetime
//!
//! A library is loaded once per process (cached by its canonical path) and
//! never unloaded: `dlclose` is unreliable (a no-op on musl) and unloading
//! code that a handle or a thread may still use is undefined behaviour.
//! Handles are dropped with their stage. The host cannot stop a library that
//! loops or crashes; only load libraries you trust, as with any native code.

use crate::stage::{BoxError, BuildContext, CancelToken, ConfigIssue, Stage, StageFactory, StageIo, TurnContext};
use crate::turn::{Field, Turn};
use libloading::Library;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, OnceLock};

/// The C ABI as Rust types: what a library exports and the host calls.
pub mod abi {
    use std::ffi::{c_char, c_void};

    /// The ABI version this engine speaks.
    pub const ECR_ABI_VERSION: u32 = 1;

    /// `uint32_t ecr_abi_version(void)`.
    pub const VERSION_SYMBOL: &str = "ecr_abi_version";
    /// `void *ecr_stage_create(const char *config_json, char **err_out)`.
    pub const CREATE_SYMBOL: &str = "ecr_stage_create";
    /// `int32_t ecr_stage_run(void *stage, const char *input_json, char **out_json)`.
    pub const RUN_SYMBOL: &str = "ecr_stage_run";
    /// `void ecr_stage_drop(void *stage)`.
    pub const DROP_SYMBOL: &str = "ecr_stage_drop";
    /// `void ecr_string_free(char *s)`.
    pub const STRING_FREE_SYMBOL: &str = "ecr_string_free";
    /// Optional: `int32_t ecr_stage_run_cancellable(void *stage, const char *input_json,
    /// const volatile uint8_t *cancelled, char **out_json)`. Used instead of
    /// `ecr_stage_run` when exported; `*cancelled` becomes non-zero when the
    /// caller cancels the turn, and the library should return soon after.
    pub const RUN_CANCELLABLE_SYMBOL: &str = "ecr_stage_run_cancellable";

    /// Type of `ecr_abi_version`.
    pub type AbiVersionFn = unsafe extern "C" fn() -> u32;
    /// Type of `ecr_stage_create`: NULL and `*err_out` set on error.
    pub type CreateFn = unsafe extern "C" fn(config_json: *const c_char, err_out: *mut *mut c_char) -> *mut c_void;
    /// Type of `ecr_stage_run`: 0 and `*out_json` = output; non-zero and `*out_json` = message.
    pub type RunFn =
        unsafe extern "C" fn(stage: *mut c_void, input_json: *const c_char, out_json: *mut *mut c_char) -> i32;
    /// Type of `ecr_stage_run_cancellable`: as [`RunFn`], with the turn's cancellation flag.
    pub type RunCancellableFn = unsafe extern "C" fn(
        stage: *mut c_void,
        input_json: *const c_char,
        cancelled: *const u8,
        out_json: *mut *mut c_char,
    ) -> i32;
    /// Type of `ecr_stage_drop`.
    pub type DropFn = unsafe extern "C" fn(stage: *mut c_void);
    /// Type of `ecr_string_free`.
    pub type StringFreeFn = unsafe extern "C" fn(s: *mut c_char);
}

/// Configuration of a dylib stage (`[stages.<id>.with]` of a `use = "dylib"` stage).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DylibConfig {
    /// The library file, relative to the recipe.
    pub library: PathBuf,
    /// Turn fields passed to the library (the keys of its input JSON object).
    #[serde(default)]
    pub reads: Vec<Field>,
    /// Turn fields the library may write; writing any other field is an error.
    #[serde(default)]
    pub writes: Vec<Field>,
    /// Free-form configuration, passed to `ecr_stage_create` as a JSON object.
    #[serde(default)]
    pub config: toml::Table,
    /// Make one call at a time, for a library that is not thread-safe.
    #[serde(default)]
    pub exclusive: bool,
}

/// Why a dylib stage could not be built or failed a turn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DylibStageError {
    /// The library cannot be loaded (missing, or no shared library).
    #[error("stage {stage:?} ({}): cannot load the library: {message}", library.display())]
    Load {
        /// Stage id.
        stage: String,
        /// The library path.
        library: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// The library lacks one of the ABI's symbols.
    #[error(
        "stage {stage:?} ({}): the library lacks the symbol `{symbol}`: it is not an ecr stage library (ABI version {}); {message}",
        library.display(), abi::ECR_ABI_VERSION
    )]
    MissingSymbol {
        /// Stage id.
        stage: String,
        /// The library path.
        library: PathBuf,
        /// The missing symbol.
        symbol: &'static str,
        /// The loader's message.
        message: String,
    },
    /// The library implements another ABI version.
    #[error(
        "stage {stage:?} ({}): the library implements ecr ABI version {found}, this engine speaks version {}: rebuild it against version {}",
        library.display(), abi::ECR_ABI_VERSION, abi::ECR_ABI_VERSION
    )]
    AbiVersion {
        /// Stage id.
        stage: String,
        /// The library path.
        library: PathBuf,
        /// The version the library reported.
        found: u32,
    },
    /// `ecr_stage_create` failed.
    #[error("stage {stage:?} ({}): the library refused to create the stage: {message}", library.display())]
    Create {
        /// Stage id.
        stage: String,
        /// The library path.
        library: PathBuf,
        /// The library's message.
        message: String,
    },
    /// `ecr_stage_run` returned an error.
    #[error("stage {stage:?} ({}): the library failed with code {code}: {message}", library.display())]
    Run {
        /// Stage id.
        stage: String,
        /// The library path.
        library: PathBuf,
        /// The library's return code.
        code: i32,
        /// The library's message.
        message: String,
    },
    /// The output is not valid JSON (or no output at all).
    #[error("stage {stage:?} ({}): the library returned invalid JSON ({message}): {excerpt:?}", library.display())]
    InvalidJson {
        /// Stage id.
        stage: String,
        /// The library path.
        library: PathBuf,
        /// The parser's message.
        message: String,
        /// The start of the output.
        excerpt: String,
    },
    /// The output is JSON but not an object.
    #[error(
        "stage {stage:?} ({}): the library returned {got}, not a JSON object of field name → value",
        library.display()
    )]
    NotAnObject {
        /// Stage id.
        stage: String,
        /// The library path.
        library: PathBuf,
        /// What it returned (`an array`, ...).
        got: &'static str,
    },
    /// The output names something that is no turn field.
    #[error("stage {stage:?} ({}): the library wrote {key:?}, which is no turn field: {message}", library.display())]
    UnknownField {
        /// Stage id.
        stage: String,
        /// The library path.
        library: PathBuf,
        /// The key.
        key: String,
        /// Why it is no field.
        message: String,
    },
    /// The output writes a field the stage did not declare.
    #[error(
        "stage {stage:?} ({}): library {} wrote field {field} it did not declare: add \"{field}\" to `writes` or fix the library",
        library.display(), library.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    )]
    UndeclaredWrite {
        /// Stage id.
        stage: String,
        /// The library path.
        library: PathBuf,
        /// The field.
        field: Field,
    },
    /// A written value does not fit its field.
    #[error("stage {stage:?} ({}): the library wrote a value that does not fit: {message}", library.display())]
    BadValue {
        /// Stage id.
        stage: String,
        /// The library path.
        library: PathBuf,
        /// Which field and why (from [`Field::set_json`]).
        message: String,
    },
}

/// The factory of `use = "dylib"` stages.
pub struct DylibFactory;

impl StageFactory for DylibFactory {
    type Config = DylibConfig;

    fn name(&self) -> &'static str {
        "dylib"
    }

    fn description(&self) -> &'static str {
        "a stage in a dynamic library with ecr's C ABI (JSON in and out)"
    }

    fn io(&self, config: &DylibConfig) -> StageIo {
        StageIo::new(config.reads.clone(), config.writes.clone())
    }

    fn check(&self, config: &DylibConfig, ctx: &BuildContext) -> Vec<ConfigIssue> {
        ConfigIssue::missing_file("library", &ctx.resolve(&config.library)).into_iter().collect()
    }

    fn build(&self, config: DylibConfig, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        Ok(Box::new(DylibStage::load(ctx.stage_id(), &ctx.resolve(&config.library), config)?))
    }
}

/// The library's functions, resolved once.
#[derive(Clone, Copy)]
struct Api {
    run: abi::RunFn,
    run_cancellable: Option<abi::RunCancellableFn>,
    drop: abi::DropFn,
    free: abi::StringFreeFn,
}

/// A stage handle created by the library.
struct Handle(*mut c_void);

// SAFETY: the ABI requires `ecr_stage_run` to accept concurrent calls with
// the same handle (or the recipe sets `exclusive`, and the host serializes
// calls); the handle is dropped exactly once, by `DylibStage::drop`.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

/// A stage in a dynamic library.
struct DylibStage {
    stage: String,
    library: PathBuf,
    api: Api,
    handle: Handle,
    reads: Vec<Field>,
    writes: Vec<Field>,
    exclusive: Option<Mutex<()>>,
}

/// Libraries loaded by this process, by canonical path; never unloaded.
fn loaded() -> &'static Mutex<HashMap<PathBuf, &'static Library>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, &'static Library>>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

impl DylibStage {
    fn load(stage: &str, path: &Path, config: DylibConfig) -> Result<Self, DylibStageError> {
        let err_load =
            |message: String| DylibStageError::Load { stage: stage.to_string(), library: path.to_path_buf(), message };
        let canonical = path.canonicalize().map_err(|e| {
            err_load(format!(
                "{e}: check the path (relative paths resolve against the recipe's directory) and build the library"
            ))
        })?;
        let lib: &'static Library = {
            let mut map = loaded().lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&canonical) {
                Some(lib) => lib,
                None => {
                    // SAFETY: loading runs the library's initialisers; the recipe names the
                    // library, and loading it is the point of a dylib stage (see the module doc).
                    let lib = unsafe { Library::new(&canonical) }.map_err(|e| err_load(e.to_string()))?;
                    let lib: &'static Library = Box::leak(Box::new(lib));
                    map.insert(canonical, lib);
                    lib
                }
            }
        };
        let symbol_err = |symbol: &'static str, e: libloading::Error| DylibStageError::MissingSymbol {
            stage: stage.to_string(),
            library: path.to_path_buf(),
            symbol,
            message: e.to_string(),
        };
        // The version first: nothing else is looked up in a library of another version.
        // SAFETY: the symbol's type is the ABI's; the library is never unloaded.
        let version: abi::AbiVersionFn = unsafe { lib.get::<abi::AbiVersionFn>(abi::VERSION_SYMBOL) }
            .map(|s| *s)
            .map_err(|e| symbol_err(abi::VERSION_SYMBOL, e))?;
        // SAFETY: a function of the ABI taking nothing.
        let found = unsafe { version() };
        if found != abi::ECR_ABI_VERSION {
            return Err(DylibStageError::AbiVersion { stage: stage.to_string(), library: path.to_path_buf(), found });
        }
        // SAFETY (all four): the symbol types are the ABI's; the library is never unloaded.
        let create: abi::CreateFn = unsafe { lib.get::<abi::CreateFn>(abi::CREATE_SYMBOL) }
            .map(|s| *s)
            .map_err(|e| symbol_err(abi::CREATE_SYMBOL, e))?;
        let run: abi::RunFn = unsafe { lib.get::<abi::RunFn>(abi::RUN_SYMBOL) }
            .map(|s| *s)
            .map_err(|e| symbol_err(abi::RUN_SYMBOL, e))?;
        let drop: abi::DropFn = unsafe { lib.get::<abi::DropFn>(abi::DROP_SYMBOL) }
            .map(|s| *s)
            .map_err(|e| symbol_err(abi::DROP_SYMBOL, e))?;
        let free: abi::StringFreeFn = unsafe { lib.get::<abi::StringFreeFn>(abi::STRING_FREE_SYMBOL) }
            .map(|s| *s)
            .map_err(|e| symbol_err(abi::STRING_FREE_SYMBOL, e))?;
        // SAFETY: the optional symbol's type is the ABI's; the library is never unloaded.
        let run_cancellable: Option<abi::RunCancellableFn> =
            unsafe { lib.get::<abi::RunCancellableFn>(abi::RUN_CANCELLABLE_SYMBOL) }.ok().map(|s| *s);
        let api = Api { run, run_cancellable, drop, free };

        let create_err = |message: String| DylibStageError::Create {
            stage: stage.to_string(),
            library: path.to_path_buf(),
            message,
        };
        let config_json = serde_json::to_string(&config.config)
            .map_err(|e| create_err(format!("the config table cannot be written as JSON: {e}")))?;
        let config_c = CString::new(config_json).map_err(|e| create_err(format!("config: {e}")))?;
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: a valid NUL-terminated string and a valid out pointer, as the ABI says.
        let handle = unsafe { create(config_c.as_ptr(), &mut err) };
        // SAFETY: `err` is NULL or a string the library allocated.
        let message = unsafe { take_string(api, err) };
        if handle.is_null() {
            let message = message.map(|m| String::from_utf8_lossy(&m).into_owned());
            return Err(create_err(message.unwrap_or_else(|| "(no message)".into())));
        }
        Ok(DylibStage {
            stage: stage.to_string(),
            library: path.to_path_buf(),
            api,
            handle: Handle(handle),
            reads: config.reads,
            writes: config.writes,
            exclusive: config.exclusive.then(|| Mutex::new(())),
        })
    }

    fn run_turn(&self, turn: &mut Turn, cx: &TurnContext<'_>) -> Result<(), DylibStageError> {
        let input: serde_json::Map<String, serde_json::Value> =
            self.reads.iter().map(|f| (f.name(), f.get_json(turn))).collect();
        // serde_json escapes control characters, so the text has no NUL.
        let input = CString::new(serde_json::Value::Object(input).to_string()).unwrap_or_default();
        let mut out: *mut c_char = std::ptr::null_mut();
        let code = {
            let _one_at_a_time = self.exclusive.as_ref().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
            static NEVER: AtomicBool = AtomicBool::new(false);
            match self.api.run_cancellable {
                Some(run) => {
                    let flag = cx.cancel_token().map_or(&NEVER, CancelToken::flag);
                    // An AtomicBool has the size and layout of a u8 holding 0 or 1; the
                    // library only reads it, and the flag outlives the call.
                    let flag = flag as *const AtomicBool as *const u8;
                    // SAFETY: as for `ecr_stage_run`, plus a flag pointer valid during the call.
                    unsafe { run(self.handle.0, input.as_ptr(), flag, &mut out) }
                }
                // SAFETY: the handle came from create and is alive; valid string and out pointer.
                None => unsafe { (self.api.run)(self.handle.0, input.as_ptr(), &mut out) },
            }
        };
        // SAFETY: `out` is NULL or a string the library allocated.
        let output = unsafe { take_string(self.api, out) };
        if code != 0 {
            let message = output.map(|m| String::from_utf8_lossy(&m).into_owned());
            return Err(DylibStageError::Run {
                stage: self.stage.clone(),
                library: self.library.clone(),
                code,
                message: message.unwrap_or_else(|| "(no message)".into()),
            });
        }
        let invalid = |message: String, bytes: &[u8]| DylibStageError::InvalidJson {
            stage: self.stage.clone(),
            library: self.library.clone(),
            message,
            excerpt: String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned(),
        };
        let output = output.ok_or_else(|| invalid("returned 0 but no output".into(), b""))?;
        let value: serde_json::Value = serde_json::from_slice(&output).map_err(|e| invalid(e.to_string(), &output))?;
        let serde_json::Value::Object(fields) = value else {
            return Err(DylibStageError::NotAnObject {
                stage: self.stage.clone(),
                library: self.library.clone(),
                got: json_kind(&value),
            });
        };
        let mut writes = Vec::with_capacity(fields.len());
        for (key, value) in fields {
            let field = Field::parse(&key).map_err(|message| DylibStageError::UnknownField {
                stage: self.stage.clone(),
                library: self.library.clone(),
                key: key.clone(),
                message,
            })?;
            if !self.writes.contains(&field) {
                return Err(DylibStageError::UndeclaredWrite {
                    stage: self.stage.clone(),
                    library: self.library.clone(),
                    field,
                });
            }
            writes.push((field, value));
        }
        // Check every value on a scratch turn first, so that a bad output changes nothing.
        let mut scratch = Turn::default();
        for (field, value) in &writes {
            field.set_json(&mut scratch, value.clone()).map_err(|message| DylibStageError::BadValue {
                stage: self.stage.clone(),
                library: self.library.clone(),
                message,
            })?;
        }
        for (field, value) in writes {
            // Cannot fail: the same value fitted the scratch turn.
            let _ = field.set_json(turn, value);
        }
        Ok(())
    }
}

impl Stage for DylibStage {
    fn run(&self, turn: &mut Turn, cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        Ok(self.run_turn(turn, cx)?)
    }
}

impl Drop for DylibStage {
    fn drop(&mut self) {
        // SAFETY: the handle came from create, is dropped once, and its library stays loaded.
        unsafe { (self.api.drop)(self.handle.0) }
    }
}

/// Copy a string the library allocated and give it back to the library.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string allocated by the library of `api`.
unsafe fn take_string(api: Api, p: *mut c_char) -> Option<Vec<u8>> {
    if p.is_null() {
        return None;
    }
    // SAFETY: per this function's contract.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes().to_vec();
    // SAFETY: the ABI says strings the library hands out are freed with its ecr_string_free.
    unsafe { (api.free)(p) };
    Some(bytes)
}

/// `an array`, `a string`, ... for messages.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
