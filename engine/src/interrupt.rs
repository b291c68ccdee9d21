//! A process-wide request to stop (Ctrl-C), which long file writes poll. The CLI's commands
//! that write models install a handler that calls [`request`]; [`crate::gguf::GgufWriter`] then
//! stops at its next write with [`crate::gguf::GgufError::Stopped`], and the temporary file it
//! was writing is removed as the error unwinds, so the target path keeps what it held (or stays
//! absent) and no partial file is left behind. (The default Ctrl-C action ends the process at
//! once, which left the temporary file in the target directory.)

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks the work in progress to stop (safe to call from a signal handler's thread).
pub fn request() {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}
