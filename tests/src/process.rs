//! One spawned server process and the guarantee that it dies with its handle.
//!
//! A [`ServerProcess`] is started in its own process group, with stdout and stderr appended
//! to one log file (read back by [`ServerProcess::log_tail`] for error messages).
//!
//! How it is cleaned up:
//! - **Handle dropped** (test returns, or panics and unwinds): the whole process group gets
//!   `SIGKILL` and the process is reaped before `drop` returns, so its port is free again.
//! - **Test process dies without unwinding** (`SIGKILL`, abort, `Ctrl-C` under `cargo test`,
//!   a nextest timeout): a watchdog `sh` started beside each server holds the read end of a
//!   pipe whose write end only the test process has. When the test process dies, the kernel
//!   closes that end, the watchdog's `read` returns and it kills the server's process group.
//!   The watchdog ignores `SIGINT`/`SIGTERM`/`SIGHUP` and sits in its own process group, so
//!   only that EOF (or our own `SIGKILL` in [`ServerProcess::kill`]) ends it.
//!
//! Limitation: `prctl(PR_SET_PDEATHSIG)` would need `unsafe` (forbidden in this workspace);
//! the watchdog replaces it, so a server outlives a dead test process only if its watchdog was
//! itself `SIGKILL`ed from outside. `kill` blocks for the few milliseconds a `SIGKILL`ed process
//! takes to be reaped.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};

use anyhow::Context as _;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// `command` as a shell would read it, secrets masked: the values of environment variables
/// whose name says PASSWORD, SECRET or TOKEN, whatever follows `password=` in an argument (up
/// to `,` or `]`), and the password of a URL (`redis://user:***@host`), so that a log never
/// shows the credentials a test hands a server.
pub fn describe(command: &Command) -> String {
    let mut shown = String::new();
    if let Some(dir) = command.get_current_dir() {
        shown.push_str(&format!("cd {dir:?} && "));
    }
    shown.push_str("env");
    for (key, value) in command.get_envs() {
        let key = key.to_string_lossy();
        let upper = key.to_ascii_uppercase();
        let value = match value {
            None => continue,
            Some(_)
                if ["PASSWORD", "SECRET", "TOKEN"]
                    .iter()
                    .any(|s| upper.contains(s)) =>
            {
                "***".to_owned()
            }
            Some(v) => mask_url_password(&v.to_string_lossy()),
        };
        shown.push_str(&format!(" {key}={value:?}"));
    }
    shown.push_str(&format!(" {:?}", command.get_program()));
    for arg in command.get_args() {
        shown.push_str(&format!(
            " {:?}",
            mask_url_password(&mask_password_values(&arg.to_string_lossy()))
        ));
    }
    shown
}

/// `scheme://user:secret@host…` → `scheme://user:***@host…` (the credentials end at the last
/// `@`: a password may hold one).
fn mask_url_password(arg: &str) -> String {
    let Some(scheme_end) = arg.find("://").map(|i| i + 3) else {
        return arg.to_owned();
    };
    let Some(at) = arg[scheme_end..].rfind('@').map(|i| scheme_end + i) else {
        return arg.to_owned();
    };
    match arg[scheme_end..at].find(':') {
        Some(colon) => format!("{}***{}", &arg[..scheme_end + colon + 1], &arg[at..]),
        None => arg.to_owned(),
    }
}

/// `…password=secret,…` → `…password=***,…` (every occurrence, any case).
fn mask_password_values(arg: &str) -> String {
    const KEY: &str = "password=";
    let lower = arg.to_ascii_lowercase();
    let mut out = String::new();
    let mut rest = 0;
    while let Some(found) = lower[rest..].find(KEY) {
        let value_start = rest + found + KEY.len();
        out.push_str(&arg[rest..value_start]);
        out.push_str("***");
        rest = arg[value_start..]
            .find([',', ']'])
            .map_or(arg.len(), |end| value_start + end);
    }
    out.push_str(&arg[rest..]);
    out
}

/// How many bytes of a server's log go into error messages.
const LOG_TAIL_BYTES: u64 = 4_000;

/// A running server process plus its watchdog; killed (whole process group) on drop.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Child,
    watchdog: Option<(Child, ChildStdin)>,
    log_path: PathBuf,
    /// Length of the log before this process wrote to it: tails show this run's output only.
    log_start: u64,
    reaped: Option<ExitStatus>,
}

impl ServerProcess {
    /// Spawns `command` (its program, args and cwd already set) in a new process group, with
    /// output appended to `log_path`, and a watchdog tied to this test process.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> anyhow::Result<Self> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("open log {}", log_path.display()))?;
        let log_start = log.metadata()?.len();
        let shown = describe(&command);
        writeln!(log, "---- strata-tests: starting {name}: {shown}")?;
        let stderr = log.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("spawn {name}: {shown}"))?;
        let mut process = Self {
            name: name.to_owned(),
            child,
            watchdog: None,
            log_path: log_path.to_owned(),
            log_start,
            reaped: None,
        };
        // If the watchdog cannot start, `process` drops here and kills the server.
        process.watchdog = Some(spawn_watchdog(process.child.id())?);
        Ok(process)
    }

    /// The server's pid (also its process-group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited (without blocking).
    pub fn exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.reaped.is_none() {
            self.reaped = self
                .child
                .try_wait()
                .with_context(|| format!("wait for {}", self.name))?;
        }
        Ok(self.reaped)
    }

    /// The last few KB of this process's stdout+stderr (not earlier runs'), for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path, self.log_start)
    }

    /// `SIGTERM` to the process (not its group), as a supervisor asking it to stop. An error if
    /// it was already reaped.
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// Sends `signal` to the process (not its group), e.g. `SIGHUP`.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        anyhow::ensure!(self.reaped.is_none(), "{} was already reaped", self.name);
        let pid = i32::try_from(self.child.id())?;
        nix::sys::signal::kill(Pid::from_raw(pid), signal)?;
        Ok(())
    }

    /// `SIGKILL` to the whole process group, then reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            // Kill the watchdog first so it can never signal a recycled process group.
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            drop(stdin);
        }
        if self.reaped.is_some() {
            return;
        }
        // The group exists while its leader is unreaped (even as a zombie), so the pgid
        // cannot have been recycled yet. ESRCH just means everything is gone already.
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        self.reaped = self.child.wait().ok();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `sh` that waits for EOF on its stdin (the test process died or dropped the handle) and
/// then kills process group `pgid`.
fn spawn_watchdog(pgid: u32) -> anyhow::Result<(Child, ChildStdin)> {
    let mut watchdog = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"trap '' INT TERM HUP; read -r line; kill -9 "-$1" 2>/dev/null; exit 0"#)
        .arg("strata-watchdog")
        .arg(pgid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("spawn watchdog /bin/sh")?;
    let stdin = watchdog
        .stdin
        .take()
        .context("watchdog stdin was not piped")?;
    Ok((watchdog, stdin))
}

/// The last [`LOG_TAIL_BYTES`] of `path` from offset `from` on, lossily decoded; a note if it
/// cannot be read.
pub fn log_tail(path: &Path, from: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(
            len.saturating_sub(LOG_TAIL_BYTES).max(from),
        ))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => text,
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_command_shows_no_secret() {
        let mut command = Command::new("java");
        command
            .args([
                "--add-scram",
                "SCRAM-SHA-512=[name=strata,password=hunter2]",
            ])
            .args(["--kafka-property", "sasl.password=hunter2"])
            .env("STRATA_KAFKA_SASL_PASSWORD", "hunter2")
            .env("STRATA_LOG", "info");
        let shown = describe(&command);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[name=strata,password=***]"), "{shown}");
        assert!(shown.contains("STRATA_LOG=\"info\""), "{shown}");
        assert_eq!(mask_password_values("a=b"), "a=b");
        assert_eq!(
            mask_url_password("rediss://strata:p@ss:w/rd@127.0.0.1:6379/#insecure"),
            "rediss://strata:***@127.0.0.1:6379/#insecure"
        );
        assert_eq!(
            mask_url_password("redis://127.0.0.1:1/"),
            "redis://127.0.0.1:1/"
        );
        assert_eq!(mask_url_password("http://user@host/"), "http://user@host/");
        assert_eq!(mask_password_values("PASSWORD=x,y=z"), "PASSWORD=***,y=z");
    }
}
