//! Log output: stderr, with the per-request access lines written in batches.
//!
//! One access line per request written straight to stderr is one `write` system call per
//! request, a tenth of a small download's server CPU here. Access lines are therefore gathered in
//! memory and written together: when 32 KiB have gathered, when any other line is logged (it
//! goes out at once, after the access lines before it, so the order is kept), every
//! [`FLUSH_EVERY`] from a background thread, and at exit. This is nginx's `access_log ...
//! buffer= flush=`. What a crash (kill -9) can lose is the access lines of the last
//! [`FLUSH_EVERY`]; warnings and errors are never held back.

use std::io::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// The longest an access line waits in memory.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Gathered bytes that are written at once.
const FLUSH_BYTES: usize = 32 << 10;

/// Starts logging to stderr in `format`, filtered by `RUST_LOG` when it is set and valid, else
/// at info (sqlx and tower_http at warn).
pub fn init(format: LogFormat) {
    // Colours only on a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok());
    match from_env {
        Some(filter) => install(filter, format, ansi),
        // Without RUST_LOG, a filter by target and level only: `EnvFilter` also tracks every
        // span for directives on span fields, a shared lock taken each time a request's
        // span is entered or left.
        None => install(default_filter(), format, ansi),
    }
    let _ = std::thread::Builder::new()
        .name("log-flush".into())
        .spawn(|| {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                flush();
            }
        });
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Not `flush`: a panic on a thread that holds the buffer's lock must not wait for it.
        if let Ok(mut pending) = PENDING.try_lock() {
            write_out(&mut pending);
        }
        previous(info);
    }));
}

/// Info and above; sqlx and tower_http (their per-statement and per-request lines) from warn.
fn default_filter() -> Targets {
    Targets::new()
        .with_default(Level::INFO)
        .with_target("sqlx", Level::WARN)
        .with_target("tower_http", Level::WARN)
}

fn install<F>(filter: F, format: LogFormat, ansi: bool)
where
    F: Layer<Registry> + Send + Sync + 'static,
{
    let subscriber = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(Stderr);
    match format {
        LogFormat::Json => subscriber.with(fmt.json()).init(),
        LogFormat::Text => subscriber.with(fmt).init(),
    }
}

/// Writes out the access lines still in memory.
pub fn flush() {
    write_out(&mut lock());
}

/// Access lines waiting to be written.
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn lock() -> MutexGuard<'static, Vec<u8>> {
    // A panic while holding the lock leaves whole lines in the buffer: still writable.
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes `pending` to stderr (under the lock, so batches never overtake each other).
/// Logging must not fail the program: a stderr that cannot be written drops the lines.
fn write_out(pending: &mut Vec<u8>) {
    if !pending.is_empty() {
        let _ = std::io::stderr().lock().write_all(pending);
        pending.clear();
    }
}

/// The `MakeWriter` handed to tracing-subscriber.
#[derive(Clone, Copy)]
struct Stderr;

/// One formatted line (tracing-subscriber writes each event with one `write_all`).
struct Line {
    hold: bool,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut pending = lock();
        pending.extend_from_slice(buf);
        if !self.hold || pending.len() >= FLUSH_BYTES {
            write_out(&mut pending);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { hold: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            hold: held(meta.target(), meta.level()),
        }
    }
}

/// Whether a line is an access line that may wait: not a warning or an error.
fn held(target: &str, level: &Level) -> bool {
    target == chunkvault_http::ACCESS_LOG_TARGET && *level >= Level::INFO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_access_lines_at_info_or_below_are_held() {
        let access = chunkvault_http::ACCESS_LOG_TARGET;
        assert!(held(access, &Level::INFO));
        assert!(held(access, &Level::DEBUG));
        assert!(!held(access, &Level::WARN));
        assert!(!held(access, &Level::ERROR));
        assert!(!held("chunkvault_core::download", &Level::INFO));
        assert!(!Stderr.make_writer().hold);
    }

    #[test]
    fn the_default_filter_is_info_with_sqlx_and_tower_http_at_warn() {
        let f = default_filter();
        assert!(f.would_enable(chunkvault_http::ACCESS_LOG_TARGET, &Level::INFO));
        assert!(f.would_enable("chunkvault::serve", &Level::INFO));
        assert!(!f.would_enable("chunkvault_core::upload", &Level::DEBUG));
        assert!(!f.would_enable("sqlx::query", &Level::INFO));
        assert!(f.would_enable("sqlx::query", &Level::WARN));
        assert!(!f.would_enable("tower_http::trace", &Level::INFO));
    }
}
