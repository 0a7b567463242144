//! A deliberately faulty ecr stage library, for the dylib host's tests.
//!
//! Each way a library can misbehave has a mode, chosen by the stage config
//! `config = { mode = "..." }`:
//!
//! | mode           | `ecr_stage_run` does                                      |
//! |----------------|-----------------------------------------------------------|
//! | `ok`           | writes `{"ext.faulty": "ok"}` (the default)               |
//! | `invalid_json` | returns 0 with output that is not JSON                    |
//! | `not_object`   | returns 0 with a JSON array                               |
//! | `no_output`    | returns 0 and no output                                   |
//! | `unknown_field`| writes `user.mood`, which is no turn field                |
//! | `bad_value`    | writes a number into `candidates`                         |
//! | `fail`         | returns 3 with a message                                  |
//! | `panic`        | panics (caught, and reported as code 101)                 |
//! | `refuse`       | (create fails with a message)                             |
//! | `wait_cancel`  | waits until the turn is cancelled (up to 10 s), returns 4 |
//!
//! It exports the optional `ecr_stage_run_cancellable`; `wait_cancel` polls
//! its flag, every other mode behaves as in `ecr_stage_run`.
//!
//! Cargo features make the variants the loader must refuse: `abi-999`
//! reports ABI version 999, `no-run` leaves out `ecr_stage_run`.
//!
//! It has no dependencies (the config is matched as text), so each variant
//! builds in about a second.

use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

#[cfg(not(feature = "abi-999"))]
const VERSION: u32 = 1;
#[cfg(feature = "abi-999")]
const VERSION: u32 = 999;

const MODES: [&str; 10] = [
    "ok",
    "invalid_json",
    "not_object",
    "no_output",
    "unknown_field",
    "bad_value",
    "fail",
    "panic",
    "refuse",
    "wait_cancel",
];

struct Faulty {
    mode: &'static str,
}

fn to_c(s: &str) -> *mut c_char {
    CString::new(s).map_or(std::ptr::null_mut(), CString::into_raw)
}

/// The ABI version (1, or 999 with the `abi-999` feature).
#[unsafe(no_mangle)]
pub extern "C" fn ecr_abi_version() -> u32 {
    VERSION
}

/// Create: the mode is found in the config JSON text (`"mode":"<name>"`).
///
/// # Safety
/// `config_json` is a NUL-terminated string; `err_out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ecr_stage_create(config_json: *const c_char, err_out: *mut *mut c_char) -> *mut c_void {
    // SAFETY: per this function's contract.
    let config = unsafe { CStr::from_ptr(config_json) }.to_string_lossy().into_owned();
    let mode = MODES.iter().copied().find(|m| config.contains(&format!("\"mode\":\"{m}\""))).unwrap_or("ok");
    if mode == "refuse" {
        // SAFETY: per this function's contract.
        unsafe { *err_out = to_c("mode \"refuse\" refuses to create a stage") };
        return std::ptr::null_mut();
    }
    if mode == "panic" {
        // This library's own panic hook (not the host's): keep the planned panic quiet.
        std::panic::set_hook(Box::new(|_| {}));
    }
    Box::into_raw(Box::new(Faulty { mode })).cast()
}

/// Run: misbehave as the mode says.
///
/// # Safety
/// `stage` came from create; `out_json` is writable.
#[cfg(not(feature = "no-run"))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ecr_stage_run(
    stage: *mut c_void,
    _input_json: *const c_char,
    out_json: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    let faulty = unsafe { &*stage.cast::<Faulty>() };
    let result = catch_unwind(AssertUnwindSafe(|| match faulty.mode {
        "invalid_json" => (0, Some("{\"ext.faulty\": tru")),
        "not_object" => (0, Some("[1, 2, 3]")),
        "no_output" => (0, None),
        "unknown_field" => (0, Some("{\"user.mood\": \"grumpy\"}")),
        "bad_value" => (0, Some("{\"candidates\": 5}")),
        "fail" => (3, Some("the faulty plugin failed on purpose")),
        "panic" => panic!("the faulty plugin panicked on purpose"),
        _ => (0, Some("{\"ext.faulty\": \"ok\"}")),
    }));
    let (code, text) = result.unwrap_or((101, Some("the plugin panicked: the faulty plugin panicked on purpose")));
    // SAFETY: per this function's contract.
    unsafe { *out_json = text.map_or(std::ptr::null_mut(), to_c) };
    code
}

/// Run with the turn's cancellation flag: `wait_cancel` polls it.
///
/// # Safety
/// As `ecr_stage_run`; `cancelled` points to a byte that stays valid during the call.
#[cfg(not(feature = "no-run"))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ecr_stage_run_cancellable(
    stage: *mut c_void,
    input_json: *const c_char,
    cancelled: *const u8,
    out_json: *mut *mut c_char,
) -> i32 {
    // SAFETY: per this function's contract.
    let faulty = unsafe { &*stage.cast::<Faulty>() };
    if faulty.mode != "wait_cancel" {
        // SAFETY: per this function's contract.
        return unsafe { ecr_stage_run(stage, input_json, out_json) };
    }
    let start = std::time::Instant::now();
    // SAFETY: the host writes the byte from another thread; a volatile read sees it.
    while unsafe { std::ptr::read_volatile(cancelled) } == 0 {
        if start.elapsed() > std::time::Duration::from_secs(10) {
            // SAFETY: per this function's contract.
            unsafe { *out_json = to_c("waited 10 s and was never cancelled") };
            return 5;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // SAFETY: per this function's contract.
    unsafe { *out_json = to_c("stopped: the turn was cancelled") };
    4
}

/// Drop a stage.
///
/// # Safety
/// `stage` came from create and is dropped once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ecr_stage_drop(stage: *mut c_void) {
    // SAFETY: per this function's contract.
    drop(unsafe { Box::from_raw(stage.cast::<Faulty>()) });
}

/// Free a string this library returned.
///
/// # Safety
/// `s` is NULL or came from this library, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ecr_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: per this function's contract.
        drop(unsafe { CString::from_raw(s) });
    }
}
