//! Deadlines for code that could hang on hostile input.

use std::fmt::Display;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

/// Runs `f` on another thread and returns its value; panics naming `what`
/// if it panics or outlives `limit`, so a loop on crafted input fails the
/// test instead of hanging it.
pub fn with_deadline<T: Send + 'static>(
    limit: Duration,
    what: impl Display,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => panic!("{what}: did not finish within {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}
