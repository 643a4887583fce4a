//! The `exec` processor (`docs/design.md#agents-and-processors`): see [`Exec`].

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use strata_proto::v1::ObjectReady;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout, Command};

use super::{Outcome, Processor, ready_json};

/// How much of stdout's last line, and of stderr's tail, is kept (bytes).
const KEEP: usize = 4096;

/// How long output is still read after the command's group was killed following the leader's
/// exit (only matters when a process outside the group holds the pipes open).
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// The agent's environment variables every command gets (when set).
pub const BASE_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
];

/// Whether the agent's variable `name` may reach a command when asked for: not one of the
/// agent's own (`STRATA_*`: settings, the control-plane token, Kafka credentials).
pub fn passable(name: &str) -> bool {
    !name.starts_with("STRATA_")
}

/// Runs `program args…` per object.
///
/// The command gets:
/// - on stdin, the [`ready_json`](super::ready_json) document followed by a newline, then EOF;
/// - of the agent's environment only [`BASE_ENV`] (`PATH`, `HOME`, the locale, …) and the
///   names in [`Exec::pass_env`] (never a `STRATA_*` one: the agent's own settings, its token and
///   Kafka password among them, do not reach the command), then [`Exec::env`], then (overriding
///   all) `STRATA_BATCH_ID`,
///   `STRATA_OBJECT_ID`, `STRATA_OBJECT_NAME`, `STRATA_ZONE`, `STRATA_ATTEMPT`,
///   `STRATA_MAX_ATTEMPTS`, `STRATA_DISPATCH_EPOCH`, and `STRATA_ATTR_<KEY>` for each object
///   attribute, `<KEY>` being the attribute key uppercased with every character other than an
///   ASCII letter or digit replaced by `_` (`dataset-id` → `STRATA_ATTR_DATASET_ID`; when two
///   keys collide, the one sorting last wins).
///
/// Its outcome:
/// - exit 0 → `Loaded`, `info` = the last non-empty line of stdout, trimmed (`""` if none);
/// - exit [`Exec::temp_fail_code`] (default 75, `EX_TEMPFAIL`) → retryable failure;
/// - any other exit, or death by a signal → permanent failure;
/// - the error reads `exit code N: <stderr tail>` or `killed by signal SIGX: <stderr tail>`
///   (without the `: …` part when stderr was empty); failing to start the command (missing,
///   not executable) is a permanent failure naming the program and the OS error.
///
/// Memory stays bounded whatever the command prints: stdout and stderr are read concurrently
/// (a chatty command never blocks on a full pipe), keeping only the last line of stdout (its
/// first 4 KiB) and the last 4 KiB of stderr.
///
/// Process groups: the command runs as the leader of its own process group. If the `process`
/// future is dropped before the command exits (the agent's timeout, an abandoned attempt, a
/// drain), the whole group is killed with `SIGKILL`. When the leader exits on its own, whatever
/// is left in its group (background jobs it started) is killed too, right after the leader is
/// reaped: an attempt leaves nothing running behind it. Processes that left the group (`setsid`,
/// daemons) are out of reach; if they keep stdout or stderr open, reading stops
/// a second after the leader's exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// The program: a path, or a name looked up in `PATH`.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The exit code meaning a retryable failure (default [`Exec::DEFAULT_TEMP_FAIL_CODE`]).
    pub temp_fail_code: i32,
    /// Names of the agent's environment variables the command also gets (beyond
    /// [`BASE_ENV`]); `STRATA_*` names are never passed.
    pub pass_env: Vec<String>,
    /// Extra environment variables (the `STRATA_*` ones of the attempt win).
    pub env: Vec<(String, String)>,
    /// The working directory; `None` = the agent's.
    pub working_dir: Option<PathBuf>,
}

impl Exec {
    /// The exit code meaning "try again later" unless configured otherwise (`EX_TEMPFAIL`).
    pub const DEFAULT_TEMP_FAIL_CODE: i32 = 75;

    /// Runs `program` with `args`, the default temp-fail code, no extra environment, in the
    /// agent's working directory.
    pub fn new<I, S>(program: impl Into<PathBuf>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            temp_fail_code: Self::DEFAULT_TEMP_FAIL_CODE,
            pass_env: Vec::new(),
            env: Vec::new(),
            working_dir: None,
        }
    }

    /// The `STRATA_*` variables for `ready`.
    fn strata_env(ready: &ObjectReady) -> Vec<(String, OsString)> {
        let def = ready.object.as_ref();
        let mut vars: Vec<(String, OsString)> = vec![
            ("STRATA_BATCH_ID".into(), (&ready.batch_id).into()),
            ("STRATA_OBJECT_ID".into(), (&ready.object_id).into()),
            (
                "STRATA_OBJECT_NAME".into(),
                def.map(|d| d.name.as_str()).unwrap_or_default().into(),
            ),
            ("STRATA_ZONE".into(), (&ready.zone).into()),
            ("STRATA_ATTEMPT".into(), ready.attempt.to_string().into()),
            (
                "STRATA_MAX_ATTEMPTS".into(),
                ready.max_attempts.to_string().into(),
            ),
            (
                "STRATA_DISPATCH_EPOCH".into(),
                ready.dispatch_epoch.to_string().into(),
            ),
        ];
        if let Some(def) = def {
            let mut attrs: Vec<_> = def.attributes.iter().collect();
            attrs.sort();
            vars.extend(
                attrs
                    .into_iter()
                    .map(|(k, v)| (attribute_env_name(k), v.into())),
            );
        }
        vars
    }

    async fn run(&self, ready: &ObjectReady) -> Outcome {
        let program = self.program.display().to_string();
        let mut input = ready_json(ready).to_string();
        input.push('\n');

        let mut cmd = Command::new(&self.program);
        let passed = BASE_ENV
            .iter()
            .copied()
            .chain(self.pass_env.iter().map(String::as_str))
            .filter(|name| passable(name))
            .filter_map(|name| std::env::var_os(name).map(|v| (name, v)));
        cmd.args(&self.args)
            .env_clear()
            .envs(passed)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(Self::strata_env(ready))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(dir) = &self.working_dir {
            cmd.current_dir(dir);
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => return permanent(format!("cannot run {program}: {e}")),
        };
        // Armed before anything can await: dropping this future from here on kills the group.
        let mut group = GroupGuard::new(child.id());
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());

        let mut last_line = LastLine::default();
        let mut tail = Tail::default();
        let status = {
            let io = pump(&input, stdin, stdout, stderr, &mut last_line, &mut tail);
            tokio::pin!(io);
            let mut io_done = false;
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    () = &mut io, if !io_done => io_done = true,
                }
            };
            // The leader is reaped: kill what is left of its group, then read what remains.
            group.kill();
            if !io_done {
                let _ = tokio::time::timeout(DRAIN_GRACE, &mut io).await;
            }
            status
        };

        let status = match status {
            Ok(status) => status,
            Err(e) => return permanent(format!("waiting for {program}: {e}")),
        };
        self.outcome(status, last_line.finish(), tail.finish())
    }

    fn outcome(&self, status: ExitStatus, info: String, stderr: String) -> Outcome {
        let with_stderr = |head: String| {
            if stderr.is_empty() {
                head
            } else {
                format!("{head}: {stderr}")
            }
        };
        match (status.code(), status.signal()) {
            (Some(0), _) => Outcome::Loaded { info },
            (Some(code), _) => Outcome::Failed {
                retryable: code == self.temp_fail_code,
                error: with_stderr(format!("exit code {code}")),
            },
            (None, Some(sig)) => {
                let name = Signal::try_from(sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {sig}"));
                permanent(with_stderr(format!("killed by signal {name}")))
            }
            (None, None) => permanent(with_stderr(format!("ended with {status}"))),
        }
    }
}

impl Processor for Exec {
    async fn process(&self, ready: &ObjectReady) -> Outcome {
        self.run(ready).await
    }
}

/// The environment variable carrying attribute `key`: `STRATA_ATTR_` + the key uppercased, with
/// every character other than an ASCII letter or digit replaced by `_`.
fn attribute_env_name(key: &str) -> String {
    let mut name = String::with_capacity("STRATA_ATTR_".len() + key.len());
    name.push_str("STRATA_ATTR_");
    name.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name
}

fn permanent(error: String) -> Outcome {
    Outcome::Failed {
        retryable: false,
        error,
    }
}

/// Kills a process group with `SIGKILL` when told to or when dropped, once.
#[derive(Debug)]
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn new(leader: Option<u32>) -> Self {
        let pgid = leader
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        Self { pgid }
    }

    /// Kills the group (best effort: it may be gone already) and disarms the guard.
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Feeds stdin and drains stdout and stderr concurrently, until all three are done.
async fn pump(
    input: &str,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    last_line: &mut LastLine,
    tail: &mut Tail,
) {
    let feed = async {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input (or exits early) closes the pipe: fine.
            let _ = stdin.write_all(input.as_bytes()).await;
            let _ = stdin.shutdown().await;
        }
    };
    let out = async {
        if let Some(stdout) = stdout {
            drain(stdout, |chunk| last_line.push(chunk)).await;
        }
    };
    let err = async {
        if let Some(stderr) = stderr {
            drain(stderr, |chunk| tail.push(chunk)).await;
        }
    };
    tokio::join!(feed, out, err);
}

async fn drain(mut r: impl AsyncRead + Unpin, mut sink: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => sink(&buf[..n]),
        }
    }
}

/// The last non-empty line of a stream (its first [`KEEP`] bytes).
#[derive(Debug, Default)]
struct LastLine {
    current: Vec<u8>,
    last: Vec<u8>,
}

impl LastLine {
    fn push(&mut self, mut chunk: &[u8]) {
        while let Some(nl) = chunk.iter().position(|b| *b == b'\n') {
            self.extend(&chunk[..nl]);
            self.end_line();
            chunk = &chunk[nl + 1..];
        }
        self.extend(chunk);
    }

    fn extend(&mut self, bytes: &[u8]) {
        let room = KEEP.saturating_sub(self.current.len());
        self.current
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn end_line(&mut self) {
        if self.current.iter().any(|b| !b.is_ascii_whitespace()) {
            std::mem::swap(&mut self.last, &mut self.current);
        }
        self.current.clear();
    }

    fn finish(mut self) -> String {
        self.end_line();
        String::from_utf8_lossy(&self.last).trim().to_string()
    }
}

/// The last [`KEEP`] bytes of a stream.
#[derive(Debug, Default)]
struct Tail {
    buf: Vec<u8>,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > KEEP {
            let excess = self.buf.len() - KEEP;
            self.buf.drain(..excess);
        }
    }

    fn finish(self) -> String {
        // Skip a character cut in half at the start.
        let start = self
            .buf
            .iter()
            .take(3)
            .take_while(|b| (**b & 0xC0) == 0x80)
            .count();
        String::from_utf8_lossy(&self.buf[start..])
            .trim()
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;
    use strata_proto::v1::ObjectDefinition;

    fn ready(id: &str) -> ObjectReady {
        ObjectReady {
            batch_id: "b-1".into(),
            object_id: id.into(),
            zone: "raw".into(),
            attempt: 2,
            max_attempts: 5,
            dispatch_epoch: 9,
            object: Some(ObjectDefinition {
                id: id.into(),
                name: "customers".into(),
                attributes: [("dataset-id".to_string(), "crm 1".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// An `Exec` running `/bin/sh <dir>/script.sh` (through `sh`, so the test never executes a
    /// file another thread may still hold open for writing).
    fn script(dir: &Path, body: &str) -> Exec {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = dir.join(format!("script-{}.sh", N.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, body).unwrap();
        Exec::new("/bin/sh", [path.display().to_string()])
    }

    fn failed(outcome: Outcome) -> (bool, String) {
        match outcome {
            Outcome::Failed { retryable, error } => (retryable, error),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn exit_zero_loads_with_the_last_stdout_line_and_reads_the_json_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            r#"input=$(cat)
case "$input" in
  *'"object_id":"obj-42"'*) echo "found it" ;;
  *) echo "no object id in: $input" >&2; exit 9 ;;
esac
echo "rows: 12  "
echo
echo "   "
"#,
        );
        assert_eq!(
            p.process(&ready("obj-42")).await,
            Outcome::Loaded {
                info: "rows: 12".into()
            }
        );
        let quiet = script(dir.path(), "exit 0\n");
        assert_eq!(
            quiet.process(&ready("1")).await,
            Outcome::Loaded { info: "".into() }
        );
    }

    #[tokio::test]
    async fn the_environment_carries_the_strata_variables_and_the_extra_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = script(
            dir.path(),
            r#"printf '%s|' "$STRATA_BATCH_ID" "$STRATA_OBJECT_ID" "$STRATA_OBJECT_NAME" \
  "$STRATA_ZONE" "$STRATA_ATTEMPT" "$STRATA_MAX_ATTEMPTS" "$STRATA_DISPATCH_EPOCH" \
  "$STRATA_ATTR_DATASET_ID" "$EXTRA" "$(pwd)"
test -n "$PATH" && echo
"#,
        );
        p.env = vec![
            ("EXTRA".into(), "x=1".into()),
            ("STRATA_ZONE".into(), "overridden".into()),
        ];
        p.working_dir = Some(dir.path().canonicalize().unwrap());
        let expected = format!(
            "b-1|1001|customers|raw|2|5|9|crm 1|x=1|{}|",
            dir.path().canonicalize().unwrap().display()
        );
        assert_eq!(
            p.process(&ready("1001")).await,
            Outcome::Loaded { info: expected }
        );
        assert_eq!(attribute_env_name("a.b-c9"), "STRATA_ATTR_A_B_C9");
    }

    /// The command sees only the base variables, the passed ones and its own `STRATA_*` ones:
    /// nothing else of the agent's environment (where its token and Kafka password live).
    #[tokio::test]
    async fn the_command_gets_an_allow_listed_environment() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = script(dir.path(), "env | cut -d= -f1 | sort | tr '\\n' ' '\n");
        p.pass_env = vec![
            "CARGO_MANIFEST_DIR".into(),
            "STRATA_CONTROL_PLANE_TOKEN".into(),
        ];
        p.env = vec![("EXTRA".into(), "1".into())];
        let Outcome::Loaded { info } = p.process(&ready("1001")).await else {
            panic!("the script failed");
        };
        let names: Vec<&str> = info.split_whitespace().collect();
        let strata = Exec::strata_env(&ready("1001"));
        for name in &names {
            let allowed = BASE_ENV.contains(name)
                || *name == "CARGO_MANIFEST_DIR"
                || *name == "EXTRA"
                || *name == "PWD"
                || *name == "SHLVL"
                || *name == "_"
                || strata.iter().any(|(k, _)| k == name);
            assert!(allowed, "{name} reached the command: {names:?}");
        }
        assert!(
            names.contains(&"PATH") && names.contains(&"EXTRA"),
            "{names:?}"
        );
        let outside: Vec<String> = std::env::vars()
            .map(|(k, _)| k)
            .filter(|k| !BASE_ENV.contains(&k.as_str()) && k != "CARGO_MANIFEST_DIR")
            // The shell sets these itself.
            .filter(|k| !matches!(k.as_str(), "PWD" | "SHLVL" | "_" | "OLDPWD"))
            .collect();
        assert!(
            outside.iter().all(|k| !names.contains(&k.as_str())),
            "the agent's own variables reached the command: {outside:?} in {names:?}"
        );
        assert!(!passable("STRATA_KAFKA_SASL_PASSWORD") && passable("WORK"));
    }

    #[tokio::test]
    async fn the_temp_fail_code_is_retryable_and_other_codes_are_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "echo 'db locked' >&2\nexit 75\n");
        assert_eq!(
            failed(p.process(&ready("1")).await),
            (true, "exit code 75: db locked".into())
        );
        let p = script(
            dir.path(),
            "echo 'first' >&2\necho '  no such table  ' >&2\nexit 3\n",
        );
        assert_eq!(
            failed(p.process(&ready("1")).await),
            (false, "exit code 3: first\n  no such table".into())
        );
        let mut custom = script(dir.path(), "exit 42\n");
        custom.temp_fail_code = 42;
        assert_eq!(
            failed(custom.process(&ready("1")).await),
            (true, "exit code 42".into())
        );
        custom.temp_fail_code = 0;
        assert_eq!(
            failed(custom.process(&ready("1")).await),
            (false, "exit code 42".into())
        );
    }

    #[tokio::test]
    async fn death_by_a_signal_is_permanent_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "echo bye >&2\nkill -TERM $$\nsleep 5\n");
        assert_eq!(
            failed(p.process(&ready("1")).await),
            (false, "killed by signal SIGTERM: bye".into())
        );
    }

    #[tokio::test]
    async fn floods_on_stdout_and_stderr_complete_with_bounded_output() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "head -c 1048576 /dev/zero | tr '\\0' x >&2\necho >&2\necho the end >&2\nexit 4\n",
        );
        let (retryable, error) = failed(p.process(&ready("1")).await);
        assert!(!retryable);
        assert!(error.starts_with("exit code 4: xxx"), "{}", &error[..40]);
        assert!(error.ends_with("xxx\nthe end"));
        assert!(error.len() <= KEEP + 20, "{}", error.len());

        let p = script(
            dir.path(),
            "head -c 1048576 /dev/zero | tr '\\0' y\necho\nyes line | head -n 100000\necho done\n",
        );
        assert_eq!(
            p.process(&ready("1")).await,
            Outcome::Loaded {
                info: "done".into()
            }
        );
        let p = script(dir.path(), "head -c 1048576 /dev/zero | tr '\\0' z\n");
        match p.process(&ready("1")).await {
            Outcome::Loaded { info } => assert_eq!(info, "z".repeat(KEEP)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_is_a_permanent_failure_naming_it() {
        let p = Exec::new("/nonexistent/strata-loader", ["x"]);
        let (retryable, error) = failed(p.process(&ready("1")).await);
        assert!(!retryable);
        assert!(
            error.starts_with("cannot run /nonexistent/strata-loader: ")
                && error.contains("No such file"),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let not_executable = dir.path().join("loader.sh");
        std::fs::write(&not_executable, "echo hi\n").unwrap();
        let (retryable, error) = failed(
            Exec::new(&not_executable, Vec::<String>::new())
                .process(&ready("1"))
                .await,
        );
        assert!(!retryable);
        assert!(
            error.contains("loader.sh") && error.contains("Permission denied"),
            "{error}"
        );
    }

    /// Whether `pid` is gone or a zombie.
    fn dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
        }
    }

    async fn all_dead_within(pids: &[i32], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if pids.iter().all(|p| dead(*p)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pids(file: &Path) -> Vec<i32> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pids");
        let p = script(
            dir.path(),
            &format!(
                "f={}\nsleep 30 &\necho $! >> $f\nsleep 30 &\necho $! >> $f\necho $$ >> $f\nwait\n",
                file.display()
            ),
        );
        // 200 ms is plenty for `sh` to start; on a starved machine, allow it longer.
        let mut found = Vec::new();
        for limit in [200, 2_000, 10_000] {
            let _ = std::fs::remove_file(&file);
            let timed_out =
                tokio::time::timeout(Duration::from_millis(limit), p.process(&ready("1"))).await;
            assert!(timed_out.is_err(), "the script must not finish");
            found = pids(&file);
            if found.len() == 3 {
                break;
            }
        }
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            all_dead_within(&found, Duration::from_secs(2)).await,
            "left running: {found:?}"
        );
    }

    #[tokio::test]
    async fn background_jobs_left_by_a_finished_command_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pids");
        let p = script(
            dir.path(),
            &format!("sleep 30 &\necho $! > {}\necho started\n", file.display()),
        );
        let started = Instant::now();
        assert_eq!(
            p.process(&ready("1")).await,
            Outcome::Loaded {
                info: "started".into()
            }
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let found = pids(&file);
        assert_eq!(found.len(), 1);
        assert!(
            all_dead_within(&found, Duration::from_secs(2)).await,
            "left running: {found:?}"
        );
    }

    #[test]
    fn last_line_and_tail_keep_bounded_suffixes() {
        let mut l = LastLine::default();
        l.push(b"one\ntw");
        l.push(b"o\n\n  \nthr");
        assert_eq!(l.finish(), "thr");
        let mut l = LastLine::default();
        l.push(b"a\n");
        l.push(b"  b  \n \n");
        assert_eq!(l.finish(), "b");
        let mut t = Tail::default();
        t.push("é".repeat(3000).as_bytes());
        t.push(b"b");
        let s = t.finish();
        assert_eq!(s.len(), KEEP - 1, "half a character dropped at the start");
        assert!(s.ends_with("éb") && !s.contains('\u{FFFD}'));
    }
}
