//! What a process that holds keys does first: no core dumps, and no KEK left readable in its
//! environment.
//!
//! - **Core dumps off.** `RLIMIT_CORE` 0 (no core file) and `PR_SET_DUMPABLE` 0 (no core, no
//!   `ptrace` attach by unprivileged processes of the same user, `/proc/PID/mem` and friends
//!   owned by root). Opt-in for debugging: `PSEUDONYMIZER_ALLOW_CORE_DUMPS=1`.
//! - **The KEK leaves the environment.** A KEK given in `PSEUDONYMIZER_KEK` is moved into the
//!   process's memory ([`crate::keys::Kek::from_env`] takes it from there) and its bytes in the
//!   initial environment block are overwritten, so `/proc/PID/environ` no longer shows it.
//!   Files (`PSEUDONYMIZER_KEK_FILE`) or a KMS keep it out of the environment altogether.
//!
//! Run from `main` before any thread starts: the environment is not thread-safe to modify.

use std::ffi::CStr;

/// Set to `1` to keep core dumps possible (debugging only: a core holds every key in memory).
pub const ALLOW_CORE_DUMPS_ENV: &str = "PSEUDONYMIZER_ALLOW_CORE_DUMPS";

/// What [`harden`] did, as read back from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardened {
    /// `RLIMIT_CORE` is 0 (soft and hard).
    pub core_limit_zero: bool,
    /// `PR_GET_DUMPABLE` answers 0.
    pub not_dumpable: bool,
    /// A KEK was taken out of the environment.
    pub kek_scrubbed: bool,
}

/// Turns core dumps off (unless [`ALLOW_CORE_DUMPS_ENV`] is `1`) and moves a KEK out of the
/// environment. Must run before any other thread exists.
pub fn harden() -> Hardened {
    let allow_cores = std::env::var(ALLOW_CORE_DUMPS_ENV).is_ok_and(|v| v == "1");
    if !allow_cores {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system calls with valid arguments; failure is read back below.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        }
    }
    let kek_scrubbed = take_kek_from_environment();
    let mut limit = libc::rlimit {
        rlim_cur: 1,
        rlim_max: 1,
    };
    // SAFETY: `limit` is a valid out-pointer; PR_GET_DUMPABLE takes no pointer.
    let (limit_ok, dumpable) = unsafe {
        (
            libc::getrlimit(libc::RLIMIT_CORE, &mut limit) == 0,
            libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0),
        )
    };
    Hardened {
        core_limit_zero: limit_ok && limit.rlim_cur == 0 && limit.rlim_max == 0,
        not_dumpable: dumpable == 0,
        kek_scrubbed,
    }
}

extern "C" {
    /// The process's environment (POSIX); its strings start out in the initial environment
    /// block that `/proc/PID/environ` shows.
    static mut environ: *mut *mut libc::c_char;
}

/// Stashes `PSEUDONYMIZER_KEK` for [`crate::keys::Kek::from_env`], overwrites its value in
/// place, and removes the variable. Returns whether there was one.
fn take_kek_from_environment() -> bool {
    let Some(value) = std::env::var_os(crate::keys::KEK_ENV) else {
        return false;
    };
    crate::keys::stash_kek(&value.to_string_lossy());
    drop(value);
    let prefix = format!("{}=", crate::keys::KEK_ENV);
    // SAFETY: single-threaded (called first in `main`); each entry is a NUL-terminated string
    // in writable memory (the initial block on the stack, or the C library's own copy), and
    // only bytes before its terminating NUL are written.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let text = CStr::from_ptr(*entry).to_bytes();
            if text.starts_with(prefix.as_bytes()) {
                let value_start = (*entry).add(prefix.len());
                std::ptr::write_bytes(value_start, b'0', text.len() - prefix.len());
            }
            entry = entry.add(1);
        }
    }
    std::env::remove_var(crate::keys::KEK_ENV);
    true
}
