//! Progress reports from a running task to the client that submitted it.
//!
//! One call, [`progress`], whatever the module's form:
//!
//! - a preview 1 module (`wasm32-wasip1`) imports the core function
//!   `"taskhost" "progress"`, `(param f64 i32 i32)`: the fraction, then the message as a
//!   pointer into the module's memory and a length in bytes (UTF-8);
//! - a preview 2 component (`wasm32-wasip2`) imports `report` from the WIT interface
//!   `taskhost:task/progress@0.1.0` (`wit/taskhost.wit`), through `wit-bindgen`;
//! - any other target (the host's unit tests) has nothing to report to: the call does
//!   nothing.
//!
//! The import is there only in modules that call [`progress`]: the linker drops an
//! unused import, so a task that never reports runs on a host without the function.

/// Reports how far the task is, from 0.0 to 1.0, with a short message for a person
/// (such as "slept 2.0 of 5.0 s").
///
/// A fraction outside 0.0..=1.0 is clamped into it, and NaN is sent as 0.0, so the
/// host always gets a number it can show. The host forwards reports at a bounded
/// rate, so calling this often is cheap and harmless; the client may not see every
/// report. Report 1.0 when the work is done.
pub fn progress(fraction: f64, message: &str) {
    imp::report(clamp_fraction(fraction), message);
}

/// `fraction` within 0.0..=1.0, with NaN as 0.0.
fn clamp_fraction(fraction: f64) -> f64 {
    if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    }
}

/// Preview 1: the host function, a core import.
#[cfg(all(target_arch = "wasm32", target_os = "wasi", target_env = "p1"))]
mod imp {
    #[link(wasm_import_module = "taskhost")]
    unsafe extern "C" {
        /// The host's `"taskhost" "progress"`: `(param f64 i32 i32)`, no result. The
        /// message is `message_len` bytes of UTF-8 at `message` in this module's memory.
        #[link_name = "progress"]
        fn taskhost_progress(fraction: f64, message: *const u8, message_len: usize);
    }

    pub(super) fn report(fraction: f64, message: &str) {
        // SAFETY: the pointer and length describe `message`, a live `&str` in this
        // module's memory, for the whole call; the host only reads those bytes.
        unsafe { taskhost_progress(fraction, message.as_ptr(), message.len()) }
    }
}

/// Preview 2: `taskhost:task/progress.report`, through the bindings that `wit-bindgen`
/// generates from `wit/taskhost.wit`.
#[cfg(all(target_arch = "wasm32", target_os = "wasi", target_env = "p2"))]
mod imp {
    pub(super) fn report(fraction: f64, message: &str) {
        super::bindings::taskhost::task::progress::report(fraction, message);
    }
}

/// The bindings of world `taskhost:task/guest` (`wit/taskhost.wit`), for components: the
/// progress and capability imports.
#[cfg(all(target_arch = "wasm32", target_os = "wasi", target_env = "p2"))]
pub(crate) mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "taskhost:task/guest",
    });
}

/// Elsewhere (the host's unit tests): nowhere to report to.
#[cfg(not(all(
    target_arch = "wasm32",
    target_os = "wasi",
    any(target_env = "p1", target_env = "p2")
)))]
mod imp {
    pub(super) fn report(_fraction: f64, _message: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_clamped() {
        assert_eq!(clamp_fraction(0.5), 0.5);
        assert_eq!(clamp_fraction(-1.0), 0.0);
        assert_eq!(clamp_fraction(7.0), 1.0);
        assert_eq!(clamp_fraction(f64::NAN), 0.0);
        assert_eq!(clamp_fraction(f64::INFINITY), 1.0);
    }

    #[test]
    fn progress_is_a_no_op_off_wasm() {
        progress(0.5, "half way");
    }
}
