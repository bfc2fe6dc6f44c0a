//! SIGINT and SIGTERM. Once [`install`]ed (by every long command: train, finetune, search,
//! pipeline, demo, bench), the first signal sets a flag that every long loop polls (training
//! steps, search episodes, benchmark repetitions): the stage stops at the next step, saves what it
//! can and returns [`Error::Interrupted`]. A second signal ends the process at once (exit 130), so
//! that nothing can make Ctrl-C wait.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Installs the handlers (once per process; later calls do nothing).
pub fn install() -> Result<()> {
    if FLAG.get().is_some() {
        return Ok(());
    }
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The exit on a second signal is registered first, so it sees the flag the first set.
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())
            .and_then(|_| signal_hook::flag::register(sig, flag.clone()))
            .map_err(|e| Error::Invalid(format!("cannot install the signal handler: {e}")))?;
    }
    let _ = FLAG.set(flag);
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived since [`install`] (never, when it was not installed).
pub fn requested() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// `Err(Interrupted(what()))` once a signal arrived.
pub fn check(what: impl FnOnce() -> String) -> Result<()> {
    if requested() {
        return Err(Error::Interrupted(what()));
    }
    Ok(())
}
