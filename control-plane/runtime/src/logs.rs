//! Tracing init: a binary's `tracing` logs, filtered by `STRATA_LOG` (an `EnvFilter` directive),
//! one line per event whatever the events carry.
//!
//! Events name things that come from outside (a processor's error text, a broker's message, a
//! client certificate's subject). A newline in one would split an event into lines a log
//! collector reads as several, and a terminal escape would rewrite what an operator sees; so every
//! control character of an event is written escaped (`\n`, `\r`, `\x1b`, …) and only the newline
//! that ends it is kept. Colours are used only on a terminal.

use std::io::{self, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The environment variable that filters the logs (e.g. `info,librdkafka=debug`).
pub const FILTER_ENV: &str = "STRATA_LOG";

/// Installs the process's log subscriber: lines filtered by [`FILTER_ENV`] (else
/// `default_filter`), written one per event to `writer` (e.g. `std::io::stdout`), in colour when
/// `terminal` (the writer is an interactive terminal). Once per process.
pub fn init<W>(default_filter: &str, writer: W, terminal: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_ansi(terminal)
        .with_writer(OneLine {
            inner: writer,
            keep_escapes: terminal,
        })
        .with_env_filter(
            EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .init();
}

/// A [`MakeWriter`] whose writers escape control characters (see the module's doc). With
/// `keep_escapes` (colours on a terminal) the escape character is let through.
#[derive(Debug, Clone)]
pub struct OneLine<M> {
    inner: M,
    keep_escapes: bool,
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for OneLine<M> {
    type Writer = OneLineWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLineWriter {
            inner: self.inner.make_writer(),
            keep_escapes: self.keep_escapes,
        }
    }
}

/// See [`OneLine`]. The formatter writes each event in one call; a call's last newline is kept.
#[derive(Debug)]
pub struct OneLineWriter<W> {
    inner: W,
    keep_escapes: bool,
}

impl<W: Write> Write for OneLineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (body, end) = match text.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (&*text, ""),
        };
        let mut line = String::with_capacity(text.len() + 8);
        for c in body.chars() {
            match c {
                '\t' => line.push(c),
                '\x1b' if self.keep_escapes => line.push(c),
                '\n' => line.push_str("\\n"),
                '\r' => line.push_str("\\r"),
                c if c.is_control() => line.push_str(&format!("\\x{:02x}", u32::from(c))),
                c => line.push(c),
            }
        }
        line.push_str(end);
        self.inner.write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(event: &str, keep_escapes: bool) -> String {
        let mut out = Vec::new();
        OneLineWriter {
            inner: &mut out,
            keep_escapes,
        }
        .write_all(event.as_bytes())
        .expect("written");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn an_event_stays_one_line_and_escapes_cannot_reach_a_terminal() {
        let event = "WARN failed error=exit 1: line one\nFAKE 2026 INFO forged\r\x1b[2J\x07\tend\n";
        assert_eq!(
            written(event, false),
            "WARN failed error=exit 1: line one\\nFAKE 2026 INFO forged\\r\\x1b[2J\\x07\tend\n"
        );
        assert_eq!(written(event, false).lines().count(), 1);
        assert!(
            written(event, true).contains("\x1b[2J"),
            "colours kept on a terminal"
        );
        assert_eq!(written("no newline", false), "no newline");
        assert_eq!(written("é ünïcode\n", false), "é ünïcode\n");
    }
}
