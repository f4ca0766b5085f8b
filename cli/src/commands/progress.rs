//! A spinner for work that may take a while (loading a model, a large
//! refinement, the float64 check): it appears only once the work has taken
//! longer than [`DELAY`], and only when stderr is a terminal, so quick runs
//! and every piped or captured output (which the tests parse) stay free of
//! progress lines.

use std::io::IsTerminal;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How long work runs before its spinner shows.
pub const DELAY: Duration = Duration::from_millis(1500);

/// Shows a spinner with a message while alive, once [`DELAY`] has passed;
/// dropping it clears the line.
pub struct Spinner {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Spinner {
    /// Starts the clock for `message` (e.g. "loading the model").
    pub fn start(message: impl Into<String>) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner {
                stop: None,
                thread: None,
            };
        }
        let message = message.into();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // A message or a dropped sender both mean the work is done.
            if stopped.recv_timeout(DELAY) != Err(RecvTimeoutError::Timeout) {
                return;
            }
            let bar = ProgressBar::new_spinner()
                .with_message(message)
                .with_elapsed(DELAY);
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            let _ = stopped.recv();
            bar.finish_and_clear();
        });
        Spinner {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // The spinner's thread only draws; a panic there changes no result.
            let _ = t.join();
        }
    }
}

/// Runs `f` under a [`Spinner`] showing `message`.
pub fn with_spinner<T>(message: &str, f: impl FnOnce() -> T) -> T {
    let _spinner = Spinner::start(message);
    f()
}
