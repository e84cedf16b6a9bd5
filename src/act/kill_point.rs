//! A test hook for crash safety: `PERENNIAL_CRASH_AFTER_WRITES=N` makes the process abort
//! right after its N-th successful mutating request from this layer (a create, patch or
//! delete of a pod, claim, revision, PodDisruptionBudget, Service, node taint or status;
//! Events are not counted: they change nothing the operator reads back). The abort is as
//! abrupt as a SIGKILL: no cleanup, no lease release, requests in flight left to land or
//! not. The tests use it to stop the operator between any two writes and check that the
//! next one finishes the job.
//!
//! Unset by default, and then a write costs one load of a static that never changes. The
//! variable is read once, when the operator starts (`arm`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

/// The name of the environment variable.
pub const ENV: &str = "PERENNIAL_CRASH_AFTER_WRITES";

struct KillPoint {
    after: u64,
    done: AtomicU64,
}

static KILL_POINT: LazyLock<Option<KillPoint>> = LazyLock::new(|| {
    let after = std::env::var(ENV).ok()?.trim().parse::<u64>().ok()?;
    (after > 0).then(|| KillPoint {
        after,
        done: AtomicU64::new(0),
    })
});

/// Reads the variable, once; says so when the hook is armed.
pub fn arm() {
    if let Some(k) = KILL_POINT.as_ref() {
        tracing::warn!(
            after = k.after,
            "test hook {ENV} is set: the process aborts after that many writes"
        );
    }
}

/// Records one successful mutating request; aborts the process after the N-th.
pub(super) fn wrote(what: impl FnOnce() -> String) {
    let Some(k) = KILL_POINT.as_ref() else {
        return;
    };
    let n = k.done.fetch_add(1, Ordering::SeqCst) + 1;
    if n >= k.after {
        // eprintln, not tracing: nothing may run between the write and the abort that a
        // crash would not skip, and the tests read this line to tell the hook's abort apart.
        eprintln!("{ENV}: aborting after write {n} ({})", what());
        std::process::abort();
    }
}
