//! TLS and mutual TLS on the control plane's gRPC port, with the real binaries and every client:
//! the `strata` CLI, grpcurl, the Python client and real worker agents, against the real
//! `strata-control-plane` started with `--tls-cert`, `--tls-key` (and `--tls-client-ca`), the
//! broker and Redis. Certificates come from `strata_tests::certs` (the `openssl` command).
//!
//! - mutual TLS: agents register with `--control-plane-ca`/`-cert`/`-key` and a batch the CLI
//!   submits completes; grpcurl lists the services and calls `GetBatch`; the Python client runs
//!   the sample to success;
//! - wrong clients fail at once with a clear error: plaintext against the TLS port (the CLI,
//!   grpcurl, Python), a client that does not trust the CA, a client certificate signed by
//!   another CA;
//! - `SIGHUP` reloads the certificate: after the files are replaced by a certificate of another
//!   CA, clients trusting the new CA connect and those trusting the old one fail; a broken file
//!   keeps the certificate being served.
//!
//! Needs the binaries built (`cargo build --bins`) and `STRATA_GRPCURL_BIN`, `STRATA_PYTHON`
//! (see `strata_tests::client_tools`). Every wait is bounded.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use strata_proto::v1 as pb;
use strata_tests::certs::{CertFiles, TestCa};
use strata_tests::client_tools::{Ran, grpcurl_bin, python_bin, sh, tools_on_path};
use strata_tests::control_plane::GrpcTls;
use strata_tests::stack::{STACK_WAIT, Stack};
use strata_tests::worker_agent::{WorkerAgent, http_get};
use strata_tests::{temp_dir, workspace_binary};
use tempfile::TempDir;

const SAMPLE: &str = "clients/samples/catalogue.json";
const ZONES: [&str; 3] = ["raw", "standardized", "application"];
const CP_FLAGS: &[&str] = &["--topic-partitions", "2", "--initial-backoff-ms", "100"];

/// The certificates of one test: the server's CA and certificate, the clients' CA and a client
/// certificate, and a CA nobody trusts with a client certificate of its own.
struct Certs {
    _dir: TempDir,
    server_ca: TestCa,
    server: CertFiles,
    client_ca: TestCa,
    client: CertFiles,
    stranger_ca: TestCa,
    stranger: CertFiles,
}

impl Certs {
    fn create() -> anyhow::Result<Self> {
        let dir = temp_dir("grpc-tls-certs")?;
        let server_ca = TestCa::create(&dir.path().join("server"), "server-ca")?;
        let server = server_ca.server_cert("grpc")?;
        let client_ca = TestCa::create(&dir.path().join("clients"), "client-ca")?;
        let client = client_ca.client_cert("cli", "strata-tests-operator")?;
        let stranger_ca = TestCa::create(&dir.path().join("stranger"), "stranger-ca")?;
        let stranger = stranger_ca.client_cert("stranger", "intruder")?;
        Ok(Self {
            _dir: dir,
            server_ca,
            server,
            client_ca,
            client,
            stranger_ca,
            stranger,
        })
    }

    fn tls(&self, mutual: bool) -> GrpcTls {
        GrpcTls {
            ca: self.server_ca.cert_path(),
            server: self.server.clone(),
            client_ca: mutual.then(|| self.client_ca.cert_path()),
        }
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Runs `strata <args>` (bash, from the repository root; bounded).
async fn strata(args: &[&str]) -> anyhow::Result<Ran> {
    let bin = workspace_binary("strata", "strata-cli", "STRATA_CLI_BIN")?;
    let quoted: Vec<String> = std::iter::once(path(&bin))
        .chain(args.iter().map(|a| (*a).to_owned()))
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let tools = tools_on_path()?;
    let ran = sh(&quoted.join(" "), tools.path(), &[]).await?;
    println!("$ strata {}\n{ran}", args.join(" "));
    Ok(ran)
}

/// The one error line of a failed CLI run, checked to be one line and to exit `code`.
fn cli_error(ran: &Ran, code: i32) -> anyhow::Result<String> {
    ensure!(ran.code == Some(code), "expected exit {code}: {ran}");
    let lines: Vec<&str> = ran.stderr.lines().collect();
    ensure!(lines.len() == 1, "expected one error line: {ran}");
    Ok(lines[0].to_owned())
}

/// One simulated agent per zone over mutual TLS; each waits until registered and ready.
async fn agents(stack: &Stack, certs: &Certs) -> anyhow::Result<Vec<WorkerAgent>> {
    let (ca, cert, key) = (
        path(&certs.server_ca.cert_path()),
        path(&certs.client.cert),
        path(&certs.client.key),
    );
    let mut agents = Vec::new();
    for zone in ZONES {
        let args = [
            "--simulate-duration-ms",
            "10",
            "--control-plane-ca",
            &ca,
            "--control-plane-cert",
            &cert,
            "--control-plane-key",
            &key,
        ];
        let mut agent = stack.agent(zone, zone, &args, &[])?;
        agent.wait_ready(STACK_WAIT).await?;
        agents.push(agent);
    }
    Ok(agents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_cli_grpcurl_and_python_work_over_mutual_tls() -> anyhow::Result<()> {
    let certs = Certs::create()?;
    let mut stack = Stack::start_tls(CP_FLAGS, certs.tls(true)).await?;
    let endpoint = stack.endpoint();
    ensure!(endpoint.starts_with("https://"), "{endpoint}");
    ensure!(
        std::fs::read_to_string(stack.cp.dir().join("control-plane.log"))?
            .contains("security=\"mutual TLS\""),
        "the start-up log does not say gRPC is mutual TLS:\n{}",
        stack.cp.log_tail()
    );
    let (status, body) = http_get(stack.cp.admin_port(), "/health/readiness").await?;
    ensure!(
        body.contains("\"transport\":\"mutual TLS\""),
        "the readiness body ({status}) does not say gRPC is mutual TLS: {body}"
    );
    let _agents = agents(&stack, &certs).await?;

    // The CLI with the CA and a client certificate: plan, submit and watch to the end, status.
    let (ca, cert, key) = (
        path(&certs.server_ca.cert_path()),
        path(&certs.client.cert),
        path(&certs.client.key),
    );
    let tls_args = [
        "--endpoint",
        endpoint.as_str(),
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    let plan = strata(&[&tls_args[..], &["plan", SAMPLE, "--all"]].concat()).await?;
    ensure!(plan.ok(), "{plan}");
    ensure!(plan.stdout.contains("11 objects"), "{plan}");
    let submit = strata(&[&tls_args[..], &["submit", SAMPLE, "--all", "--watch"]].concat()).await?;
    ensure!(submit.ok(), "the batch did not succeed: {submit}");
    ensure!(submit.stdout.contains("SUCCEEDED"), "{submit}");
    let batch_id = submit
        .stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("batch ")
                .and_then(|r| r.split_whitespace().next())
        })
        .context("no batch id")?
        .to_owned();
    let batch = stack.batch(&batch_id).await?;
    ensure!(batch.state() == pb::BatchState::Succeeded, "{batch:?}");
    let status =
        strata(&[&tls_args[..], &["status", &batch_id, "--output", "json"]].concat()).await?;
    ensure!(
        status.ok() && status.stdout.contains("BATCH_STATE_SUCCEEDED"),
        "{status}"
    );

    // grpcurl with -cacert, -cert and -key: list (reflection) and a read RPC.
    let tools = tools_on_path()?;
    let grpcurl = path(&grpcurl_bin()?);
    let address = format!("127.0.0.1:{}", stack.cp.port());
    let tls_flags = format!("-cacert '{ca}' -cert '{cert}' -key '{key}'");
    let list = sh(
        &format!("'{grpcurl}' {tls_flags} {address} list"),
        tools.path(),
        &[],
    )
    .await?;
    ensure!(list.ok(), "{list}");
    for service in ["strata.v1.Orchestrator", "strata.v1.AgentRegistry"] {
        ensure!(list.stdout.lines().any(|l| l.trim() == service), "{list}");
    }
    let get = sh(
        &format!(
            "'{grpcurl}' {tls_flags} -d '{{\"batch_id\":\"{batch_id}\"}}' {address} \
             strata.v1.Orchestrator/GetBatch"
        ),
        tools.path(),
        &[],
    )
    .await?;
    ensure!(
        get.ok() && get.stdout.contains("BATCH_STATE_SUCCEEDED"),
        "{get}"
    );

    // The Python client with --ca, --cert and --key: the sample to success.
    let python = path(&python_bin()?);
    let ran = sh(
        &format!(
            "'{python}' clients/python/submit_and_watch.py --endpoint {address} --ca '{ca}' \
             --cert '{cert}' --key '{key}' --all {SAMPLE}"
        ),
        tools.path(),
        &[("PYTHONDONTWRITEBYTECODE", "1")],
    )
    .await?;
    ensure!(ran.ok(), "{ran}");
    ensure!(ran.stdout.contains("SUCCEEDED"), "{ran}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_clients_fail_at_once_with_a_clear_error() -> anyhow::Result<()> {
    let certs = Certs::create()?;
    let stack = Stack::start_tls(CP_FLAGS, certs.tls(true)).await?;
    let port = stack.cp.port();
    let https = stack.endpoint();
    let http = format!("http://127.0.0.1:{port}");
    let address = format!("127.0.0.1:{port}");
    let ca = path(&certs.server_ca.cert_path());
    let started = Instant::now();

    // Plaintext against the TLS port: refused, and the message says to use TLS.
    let ran = strata(&["--endpoint", &http, "agents"]).await?;
    let line = cli_error(&ran, 3)?;
    ensure!(line.contains(&http) && line.contains("https://"), "{line}");

    // Not trusting the CA (another CA given): a certificate error.
    let wrong_ca = path(&certs.stranger_ca.cert_path());
    let ran = strata(&["--endpoint", &https, "--ca", &wrong_ca, "agents"]).await?;
    let line = cli_error(&ran, 3)?;
    ensure!(
        line.contains("TLS") && line.contains("certificate"),
        "{line}"
    );

    // A client certificate signed by another CA: refused at the handshake.
    let (cert, key) = (path(&certs.stranger.cert), path(&certs.stranger.key));
    let ran = strata(&[
        "--endpoint",
        &https,
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "agents",
    ])
    .await?;
    let line = cli_error(&ran, 3)?;
    ensure!(line.contains("TLS"), "{line}");

    // grpcurl in plaintext. (With a foreign client certificate, grpcurl, like any Go client,
    // sends none: the server names the CAs it accepts. It is then a client without a
    // certificate, which the handshake lets through.)
    let tools = tools_on_path()?;
    let grpcurl = path(&grpcurl_bin()?);
    let plain = sh(
        &format!("'{grpcurl}' -plaintext {address} list"),
        tools.path(),
        &[],
    )
    .await?;
    println!("{plain}");
    ensure!(
        !plain.ok(),
        "grpcurl -plaintext listed the services: {plain}"
    );

    // The Python client in plaintext: exit 2, one line naming the status.
    let python = path(&python_bin()?);
    let ran = sh(
        &format!("'{python}' clients/python/submit_and_watch.py --endpoint {address} {SAMPLE}"),
        tools.path(),
        &[("PYTHONDONTWRITEBYTECODE", "1")],
    )
    .await?;
    println!("{ran}");
    ensure!(
        ran.code == Some(2) && ran.stderr.contains("UNAVAILABLE"),
        "{ran}"
    );
    // Failing is quick: no client waited for a timeout (the CLI's call deadline is 30 s).
    println!(
        "every wrong client failed; {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes `from`'s certificate and key over the served files.
fn replace_server_files(served: &CertFiles, from: &CertFiles) -> anyhow::Result<()> {
    std::fs::copy(&from.cert, &served.cert)?;
    std::fs::copy(&from.key, &served.key)?;
    Ok(())
}

/// Waits (bounded) until the control plane's log holds `needle` `count` times.
async fn wait_log(stack: &Stack, needle: &str, count: usize) -> anyhow::Result<()> {
    let log = stack.cp.dir().join("control-plane.log");
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return Ok(());
        }
        ensure!(
            started.elapsed() < STACK_WAIT,
            "the control plane did not log {needle:?} within {STACK_WAIT:?}; log tail:\n{}",
            stack.cp.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_a_broken_file_keeps_the_old_one() -> anyhow::Result<()>
{
    let certs = Certs::create()?;
    // The served files are copies the test replaces.
    let dir = temp_dir("grpc-tls-served")?;
    let served = CertFiles {
        cert: dir.path().join("grpc.pem"),
        key: dir.path().join("grpc-key.pem"),
    };
    replace_server_files(&served, &certs.server)?;
    let tls = GrpcTls {
        ca: certs.server_ca.cert_path(),
        server: served.clone(),
        client_ca: None,
    };
    let stack = Stack::start_tls(CP_FLAGS, tls).await?;
    let https = stack.endpoint();
    let ca_a = path(&certs.server_ca.cert_path());
    let ran = strata(&["--endpoint", &https, "--ca", &ca_a, "agents"]).await?;
    ensure!(ran.ok(), "{ran}");

    // Certificate B, of another CA.
    let next_ca = TestCa::create(&dir.path().join("next"), "next-ca")?;
    let next = next_ca.server_cert("grpc-next")?;
    replace_server_files(&served, &next)?;
    stack.cp.hangup()?;
    wait_log(&stack, "reloaded TLS certificate", 1).await?;
    let ca_b = path(&next_ca.cert_path());
    let ran = strata(&["--endpoint", &https, "--ca", &ca_b, "agents"]).await?;
    ensure!(ran.ok(), "a client trusting the new CA failed: {ran}");
    let ran = strata(&["--endpoint", &https, "--ca", &ca_a, "agents"]).await?;
    let line = cli_error(&ran, 3)?;
    ensure!(line.contains("certificate"), "{line}");

    // A broken key: logged, and B is still served.
    std::fs::write(&served.key, "-----BEGIN PRIVATE KEY-----\ngarbage\n")?;
    stack.cp.hangup()?;
    wait_log(&stack, "TLS reload on SIGHUP failed", 1).await?;
    let log = std::fs::read_to_string(stack.cp.dir().join("control-plane.log"))?;
    ensure!(!log.contains("garbage"), "the log quotes the key file");
    let ran = strata(&["--endpoint", &https, "--ca", &ca_b, "agents"]).await?;
    ensure!(
        ran.ok(),
        "a failed reload dropped the served certificate: {ran}"
    );
    Ok(())
}
