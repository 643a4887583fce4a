//! The control plane's topic replication settings against real Apache Kafka: a replication
//! factor the cluster cannot give is refused with the reason (the control plane then stops at
//! start instead of retrying for ever), and on a three-broker cluster the topics are created
//! with the configured replication factor and `min.insync.replicas`.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use strata_control_plane::adapters::kafka::{KafkaDataPlane, KafkaSettings, results_topic};
use strata_control_plane::ports::{DataPlane, PortError};
use strata_core::Zone;
use strata_tests::{ApacheKafka, KafkaCluster, within};

/// Bound on starting brokers (a JVM each).
const START: Duration = Duration::from_secs(90);
/// Bound on one admin or metadata call.
const STEP: Duration = Duration::from_secs(30);
const PREFIX: &str = "strata-repl";

fn zones() -> Vec<Zone> {
    [Zone::RAW, Zone::STANDARDIZED, Zone::APPLICATION]
        .into_iter()
        .map(|z| Zone::parse(z).expect("zone"))
        .collect()
}

fn settings(bootstrap: String, replication_factor: i32, min_insync: Option<i32>) -> KafkaSettings {
    KafkaSettings {
        topic_prefix: PREFIX.into(),
        replication_factor,
        min_insync_replicas: min_insync,
        consumer_group: format!("{PREFIX}-cp"),
        ..KafkaSettings::new(bootstrap)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replication_factor_above_the_brokers_is_refused_with_the_reason() -> anyhow::Result<()> {
    let broker = within(START, "start Apache Kafka", ApacheKafka::start()).await??;
    let data = KafkaDataPlane::connect(settings(broker.bootstrap(), 3, Some(2)))?;
    let refused = within(STEP, "ensure topics", data.ensure_topics(&zones())).await?;
    match &refused {
        Err(e @ PortError::Rejected { .. }) => {
            let message = e.to_string();
            ensure!(!e.retryable(), "{message}");
            ensure!(
                message.contains("replication factor 3 needs at least 3 brokers")
                    && message.contains("has 1"),
                "{message}"
            );
        }
        other => anyhow::bail!("expected a permanent refusal, got {other:?}"),
    }
    data.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_on_a_three_broker_cluster_get_the_configured_replication() -> anyhow::Result<()> {
    let cluster = within(START, "start a 3-broker cluster", KafkaCluster::start(3)).await??;
    let data = KafkaDataPlane::connect(settings(cluster.bootstrap_servers(), 3, Some(2)))?;
    let created = within(STEP, "ensure topics", data.ensure_topics(&zones())).await??;
    ensure!(created == 6, "{created} topics created, expected 6");

    let results = results_topic(PREFIX);
    let partitions = within(STEP, "metadata", cluster.partitions(&results)).await??;
    ensure!(partitions.len() == 3, "{partitions:?}");
    for p in &partitions {
        ensure!(p.replicas.len() == 3, "partition {}: {:?}", p.partition, p);
    }

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()?;
    let described = within(
        STEP,
        "describe topic config",
        admin.describe_configs(
            [&ResourceSpecifier::Topic(&results)],
            &AdminOptions::new().request_timeout(Some(STEP)),
        ),
    )
    .await??;
    let config = described
        .into_iter()
        .next()
        .context("no answer")?
        .map_err(|e| anyhow::anyhow!("describe {results}: {e}"))?;
    let min_insync = config
        .get("min.insync.replicas")
        .and_then(|e| e.value.clone())
        .context("min.insync.replicas not described")?;
    ensure!(min_insync == "2", "min.insync.replicas = {min_insync}");

    // Creating them again (a restart) finds them all.
    let again = within(STEP, "ensure topics again", data.ensure_topics(&zones())).await??;
    ensure!(again == 0, "{again} topics created again");
    data.close().await;
    Ok(())
}
