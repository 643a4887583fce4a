//! Redis as a deployment secures it: TLS only (the control plane verifies the server's
//! certificate against a CA it is given through OpenSSL's `SSL_CERT_FILE`), the default user
//! off, and one ACL user whose password holds `@` and `:`. The real control-plane binary keeps
//! its state there; neither its log nor `--print-config` shows the password; a wrong password or
//! an untrusted certificate is refused with an error that names neither the password nor the
//! URL's credentials.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use strata_control_plane::adapters::redis::RedisStore;
use strata_proto::v1 as pb;
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_tests::control_plane::{ControlPlane, print_config};
use strata_tests::redis_server::RedisServer;
use strata_tests::{TestBroker, within};

const LONG: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(20);
const USER: &str = "strata-control-plane";
const PASSWORD: &str = "s3cr@t:Pa55";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_uses_redis_over_verified_tls_with_an_acl_user() -> anyhow::Result<()> {
    let redis = within(
        LONG,
        "start redis with TLS and an ACL user",
        RedisServer::start_secured(USER, PASSWORD),
    )
    .await??;
    let url = redis.verified_url();
    ensure!(
        url.starts_with("rediss://") && !url.contains("#insecure"),
        "{url}"
    );

    // The default user is off: without the ACL user's credentials Redis answers nothing.
    let anonymous = format!("rediss://127.0.0.1:{}/#insecure", redis.port());
    let client = redis::Client::open(anonymous.as_str())?;
    let mut con = within(
        STEP,
        "anonymous connect",
        client.get_multiplexed_async_connection(),
    )
    .await?
    .context("TLS connect")?;
    let refused = redis::cmd("SET")
        .arg("intruder")
        .arg("1")
        .query_async::<()>(&mut con)
        .await
        .expect_err("the default user may not write");
    ensure!(
        refused.to_string().contains("NOAUTH"),
        "the default user is off: {refused}"
    );

    let broker = within(LONG, "start broker", TestBroker::start()).await??;
    let ca = redis.ca_file();
    let ca = ca.to_str().context("a UTF-8 path")?;
    let cp = within(
        LONG,
        "start the control plane",
        ControlPlane::start_on(
            &broker,
            &url,
            &["--topic-partitions", "1"],
            &[("SSL_CERT_FILE", ca)],
        ),
    )
    .await??;
    let submitted = OrchestratorClient::connect(cp.endpoint())
        .await?
        .submit_batch(pb::SubmitBatchRequest {
            idempotency_key: "over-tls".into(),
            input: Some(pb::BatchInput {
                source: Some(pb::batch_input::Source::Objects(pb::ObjectList {
                    objects: vec![pb::ObjectDefinition {
                        id: "1001".into(),
                        ..Default::default()
                    }],
                })),
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(submitted.created, "{submitted:?}");
    // The batch is in Redis, written as the ACL user.
    let mut admin = redis.connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut admin).await?;
    ensure!(
        keys.iter().any(|k| k.contains(&submitted.batch_id)),
        "no key of batch {} in {keys:?}",
        submitted.batch_id
    );

    // The password is in neither the log nor --print-config (the user name is).
    let log = std::fs::read_to_string(cp.dir().join("control-plane.log"))?;
    ensure!(
        !log.contains("s3cr"),
        "the control plane's log shows the password"
    );
    let shown = print_config(&["--redis-url", &url], &[])?;
    ensure!(
        !shown.contains("s3cr") && shown.contains(&format!("{USER}:***@127.0.0.1")),
        "--print-config:\n{shown}"
    );

    // A wrong password, and a certificate the client does not trust (no SSL_CERT_FILE here):
    // refused, the error naming neither password.
    // (The wrong password over TLS without verification, so that the password is what fails.)
    let wrong = format!("{}#insecure", url.replace(PASSWORD, "wr0ng@pass"));
    for (what, url, expect) in [
        (
            "a wrong password",
            wrong.as_str(),
            "Password authentication failed",
        ),
        ("an untrusted certificate", url.as_str(), "certificate"),
    ] {
        let e = within(
            STEP,
            what,
            RedisStore::connect(url, "strata-test:", Duration::from_secs(60)),
        )
        .await?
        .err()
        .with_context(|| format!("{what} was accepted"))?;
        let shown = format!("{e} {e:?}");
        ensure!(shown.contains(expect), "{what}: {shown}");
        ensure!(
            !shown.contains("s3cr") && !shown.contains("wr0ng"),
            "{what}: the error shows a password: {shown}"
        );
    }
    Ok(())
}
