//! Smoke tests of the harness against the real services: a Kafka record goes through a consumer
//! group intact with its headers and its offset is committed (on the [`TestBroker`]: Apache Kafka
//! by default, Tansu with `STRATA_TEST_BROKER=tansu`); Redis answers plain, transactional and
//! scripted commands and can be stopped and started again; a Tansu restart loses its topics (the
//! broker-restart fault suites rely on that, so that test is on Tansu whatever the choice);
//! servers do not outlive a crashed test process.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use redis::AsyncCommands as _;
use strata_tests::kafka::{close_consumer, producer_config};
use strata_tests::{KafkaBroker, RedisServer, TestBroker, blocking, within};

const STEP: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn kafka_record_round_trips_through_a_consumer_group() -> anyhow::Result<()> {
    let broker = within(STEP * 3, "start broker", TestBroker::start()).await??;
    let topic = broker.group("smoke");
    let topic = topic.as_str();
    within(STEP, "create topic", broker.create_topics(&[topic], 3)).await??;
    // Idempotent: creating it again is fine.
    within(
        STEP,
        "create topic again",
        broker.create_topics(&[topic], 3),
    )
    .await??;

    let producer: FutureProducer = broker.producer_config().create()?;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "strata-type",
            value: Some("ObjectReady"),
        })
        .insert(Header {
            key: "traceparent",
            value: Some(traceparent),
        });
    let payload: &[u8] = b"\x08\x96\x01 bytes, not utf-8: \xff";
    let record = FutureRecord::to(topic)
        .key("object-42")
        .payload(payload)
        .headers(headers);
    let delivery = within(STEP, "delivery report", producer.send(record, STEP))
        .await?
        .map_err(|(e, _)| e)
        .context("delivery failed")?;

    let consumer: StreamConsumer = broker.consumer_config("strata-smoke-group").create()?;
    consumer.subscribe(&[topic])?;
    let subscribed = Instant::now();
    let message = within(STEP, "first record from the group", consumer.recv()).await??;
    eprintln!("group join + first record took {:?}", subscribed.elapsed());

    assert_eq!(message.key(), Some(&b"object-42"[..]));
    assert_eq!(message.payload(), Some(payload));
    assert_eq!(
        (message.partition(), message.offset()),
        (delivery.partition, delivery.offset)
    );
    let received = message.headers().context("record has no headers")?;
    let received: Vec<(String, Option<Vec<u8>>)> = received
        .iter()
        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
        .collect();
    assert_eq!(
        received,
        vec![
            ("strata-type".to_owned(), Some(b"ObjectReady".to_vec())),
            (
                "traceparent".to_owned(),
                Some(traceparent.as_bytes().to_vec())
            ),
        ]
    );

    // Store (the work is "durable"), commit, and read the group's committed offset back.
    consumer.store_offset_from_message(&message)?;
    // Nothing obtained from a consumer may outlive it (see `strata_tests::kafka`).
    drop(message);
    let (partition, offset) = (delivery.partition, delivery.offset);
    let owned = topic.to_owned();
    let (consumer, committed) = blocking(STEP, "commit and read back", move || {
        let topic = owned.as_str();
        let committed = consumer
            .commit_consumer_state(CommitMode::Sync)
            .and_then(|()| {
                let mut wanted = TopicPartitionList::new();
                wanted.add_partition(topic, partition);
                consumer.committed_offsets(wanted, Duration::from_secs(10))
            })
            .map(|list| list.find_partition(topic, partition).map(|p| p.offset()));
        (consumer, committed)
    })
    .await?;
    assert_eq!(committed?, Some(Offset::Offset(offset + 1)));
    close_consumer(consumer).await
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_answers_and_can_be_stopped_and_started_again() -> anyhow::Result<()> {
    let mut redis = within(STEP, "start redis", RedisServer::start()).await??;
    let mut con = within(STEP, "connect", redis.connection()).await??;

    let () = within(STEP, "SET", con.set("strata:smoke", "value-1")).await??;
    let value: String = within(STEP, "GET", con.get("strata:smoke")).await??;
    assert_eq!(value, "value-1");

    // A pipelined MULTI/EXEC: all or nothing, one round trip.
    let (count, ttl, members): (i64, i64, Vec<String>) = within(
        STEP,
        "MULTI",
        redis::pipe()
            .atomic()
            .incr("strata:counter", 5)
            .incr("strata:counter", 2)
            .ignore()
            .expire("strata:counter", 60)
            .ignore()
            .ttl("strata:counter")
            .zadd("strata:due", "object-b", 2)
            .ignore()
            .zadd("strata:due", "object-a", 1)
            .ignore()
            .zrange("strata:due", 0, -1)
            .query_async(&mut con),
    )
    .await??;
    assert_eq!(count, 5);
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
    assert_eq!(members, ["object-a", "object-b"]);

    // A script: claim due entries atomically (the shape of the delayed-retry schedule).
    let claim = redis::Script::new(
        r"local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
          for _, m in ipairs(due) do redis.call('ZREM', KEYS[1], m) end
          return due",
    );
    let claimed: Vec<String> = within(
        STEP,
        "EVAL",
        claim.key("strata:due").arg(1).invoke_async(&mut con),
    )
    .await??;
    assert_eq!(claimed, ["object-a"]);
    let left: Vec<String> = within(STEP, "ZRANGE", con.zrange("strata:due", 0, -1)).await??;
    assert_eq!(left, ["object-b"]);

    // Stopped: connections are refused. Started again: same URL, empty.
    let url = redis.url();
    redis.stop();
    assert!(!redis.is_running());
    let refused = within(STEP, "connect to stopped redis", redis.connection()).await?;
    ensure!(refused.is_err(), "a stopped redis accepted a connection");

    within(STEP, "start redis again", redis.start_again()).await??;
    assert_eq!(redis.url(), url);
    let mut con = within(STEP, "reconnect", redis.connection()).await??;
    let gone: Option<String> = within(STEP, "GET after restart", con.get("strata:smoke")).await??;
    assert_eq!(gone, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_loses_every_topic() -> anyhow::Result<()> {
    // Tansu on purpose: the property under test is its memory engine's.
    let mut broker = within(STEP, "start broker", KafkaBroker::start()).await??;
    let topic = "strata.ready.zone-a";
    within(STEP, "create topic", broker.create_topics(&[topic], 2)).await??;
    let producer: FutureProducer = broker.producer_config().create()?;
    within(
        STEP,
        "delivery report",
        producer.send(FutureRecord::to(topic).key("k").payload("v"), STEP),
    )
    .await?
    .map_err(|(e, _)| e)
    .context("delivery failed")?;
    let before = within(STEP, "list topics", broker.topic_names()).await??;
    assert!(
        before.iter().any(|t| t == topic),
        "topics before restart: {before:?}"
    );

    let port = broker.port();
    let restarted = Instant::now();
    within(STEP, "restart broker", broker.restart()).await??;
    eprintln!("broker restart took {:?}", restarted.elapsed());
    assert_eq!(broker.port(), port);
    let after = within(STEP, "list topics after restart", broker.topic_names()).await??;
    assert!(
        !after.iter().any(|t| t == topic),
        "topics after restart: {after:?}"
    );
    // The restarted broker forgot the idempotent producer's id too: producers are recreated
    // after a restart (see `strata_tests::kafka`).
    drop(producer);

    // Producing to the lost topic fails in the delivery report (no auto-creation) ...
    let producer: FutureProducer = producer_config(&broker.bootstrap_servers())
        .set("message.timeout.ms", "2000")
        .create()?;
    let lost = within(
        STEP,
        "delivery report for a lost topic",
        producer.send(FutureRecord::to(topic).key("k").payload("v2"), STEP),
    )
    .await?;
    assert!(
        lost.is_err(),
        "a record to a lost topic was delivered: {lost:?}"
    );
    // ... and once it is recreated, records are delivered again.
    within(STEP, "recreate topic", broker.create_topics(&[topic], 2)).await??;
    let producer: FutureProducer = broker.producer_config().create()?;
    let delivered = within(
        STEP,
        "delivery report after recreation",
        producer.send(FutureRecord::to(topic).key("k").payload("v3"), STEP),
    )
    .await?
    .map_err(|(e, _)| e)
    .context("delivery after recreation failed")?;
    assert_eq!(delivered.offset, 0, "the recreated topic starts empty");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_die_with_a_crashed_test_process() -> anyhow::Result<()> {
    // The probe starts Redis and a broker, prints their ports, then aborts: no Drop runs.
    let output = within(
        STEP,
        "orphan probe",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_strata-orphan-probe"))
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        !output.status.success(),
        "probe did not abort ({}): {stdout} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let ports: Vec<u16> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("port "))
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(ports.len() == 2, "probe printed {stdout:?}");

    for port in ports {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            ensure!(
                Instant::now() < deadline,
                "a server on port {port} outlived its crashed test process"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}
