//! The Apache Kafka fixtures work against Apache Kafka itself (`STRATA_KAFKA_LIBS`):
//!
//! - one node ([`ApacheKafka`]): 1,000 records produced with `acks=all`, consumed by a group that
//!   commits; after a `SIGKILL` and a restart from its disks, the records, the high watermarks and
//!   the group's committed offsets are all still there, and the group resumes after them;
//! - three nodes ([`KafkaCluster`]): a topic replicated to all three; `kill -9` of partition 0's
//!   leader moves leadership to a survivor, `acks=all` produce (with `min.insync.replicas=2`) and
//!   the group go on with the other two, and the killed node, restarted from its disks, rejoins
//!   the ISR; `SIGSTOP`/`SIGCONT` stop and continue a node.
//!
//! Timings (start, failover, restart) are printed, never asserted.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use strata_tests::kafka::{consumer_config, producer_config};
use strata_tests::{ApacheKafka, KafkaCluster, blocking, within};

/// Bound on starting a node or a cluster (the fixture's own bound is 60 s per wait).
const START: Duration = Duration::from_secs(90);
/// Bound on one step: producing a batch, a group reading a batch, a metadata wait.
const STEP: Duration = Duration::from_secs(30);
/// Bound on each request of the offset and watermark checks.
const REQUEST: Duration = Duration::from_secs(10);

fn value(i: u32) -> String {
    format!("record-{i:05}")
}

fn values(range: std::ops::Range<u32>) -> BTreeSet<String> {
    range.map(value).collect()
}

/// Produces `value(i)` (key `k<i>`) for every `i` in `range` through one new idempotent producer
/// (`acks=all`) and waits for every delivery report.
async fn produce(bootstrap: &str, topic: &str, range: std::ops::Range<u32>) -> anyhow::Result<()> {
    let producer: FutureProducer = producer_config(bootstrap)
        .create()
        .context("create producer")?;
    let mut deliveries = Vec::new();
    for i in range {
        let key = format!("k{i}");
        let payload = value(i);
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .with_context(|| format!("enqueue record {i}"))?;
        deliveries.push((i, delivery));
    }
    for (i, delivery) in deliveries {
        within(STEP, "delivery report", delivery)
            .await?
            .context("delivery report canceled")?
            .map_err(|(e, _)| e)
            .with_context(|| format!("deliver record {i} to {topic} via {bootstrap}"))?;
    }
    // Every record is acknowledged: the drop (a flush of nothing) is quick, bounded anyway.
    blocking(STEP, "drop producer", move || drop(producer)).await
}

/// Joins `group` on `topic`, reads `n` records, stores their offsets, commits them
/// synchronously and leaves the group. Returns the values read.
async fn consume_and_commit(
    bootstrap: &str,
    group: &str,
    topic: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let config = consumer_config(bootstrap, group);
    let topic = topic.to_owned();
    blocking(STEP * 2, "consume and commit", move || {
        let consumer: BaseConsumer = config.create().context("create consumer")?;
        consumer.subscribe(&[&topic])?;
        let deadline = Instant::now() + STEP;
        let mut read = Vec::new();
        while read.len() < n {
            ensure!(
                Instant::now() < deadline,
                "group read {} of {n} records of {topic} within {STEP:?}",
                read.len()
            );
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(e)) => eprintln!("consumer (retried): {e}"),
                Some(Ok(message)) => {
                    let payload = message.payload().context("a record without a value")?;
                    read.push(String::from_utf8(payload.to_vec())?);
                    consumer.store_offset_from_message(&message)?;
                }
            }
        }
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .context("commit the stored offsets")?;
        drop(consumer); // leaves the group; nothing borrowed from it is alive
        Ok(read)
    })
    .await?
}

/// Every record of `topic`'s `partitions` partitions from the beginning (assigned, no group
/// join), until `n` have arrived.
async fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let config = consumer_config(bootstrap, "strata-test-reader");
    let topic = topic.to_owned();
    blocking(STEP * 2, "read the topic", move || {
        let consumer: BaseConsumer = config.create().context("create consumer")?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + STEP;
        let mut read = Vec::new();
        while read.len() < n {
            ensure!(
                Instant::now() < deadline,
                "read {} of {n} records of {topic} within {STEP:?}",
                read.len()
            );
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(e)) => eprintln!("reader (retried): {e}"),
                Some(Ok(message)) => {
                    let payload = message.payload().context("a record without a value")?;
                    read.push(String::from_utf8(payload.to_vec())?);
                }
            }
        }
        drop(assignment);
        drop(consumer);
        Ok(read)
    })
    .await?
}

/// `(committed offset of group, high watermark)` of each of `topic`'s `partitions` partitions.
async fn committed_and_high(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<(i64, i64)>> {
    let config = consumer_config(bootstrap, group);
    let topic = topic.to_owned();
    blocking(STEP, "committed offsets and watermarks", move || {
        let consumer: BaseConsumer = config.create().context("create consumer")?;
        let mut wanted = TopicPartitionList::new();
        for p in 0..partitions {
            wanted.add_partition(&topic, p);
        }
        // Just after a restart the group coordinator may still be loading the group's offsets
        // (Kafka answers COORDINATOR_LOAD_IN_PROGRESS or NOT_COORDINATOR until it has): ask
        // again, as a client would, for half of STEP.
        let deadline = Instant::now() + STEP / 2;
        let committed = loop {
            match consumer.committed_offsets(wanted.clone(), REQUEST) {
                Ok(committed) => break committed,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("committed offsets not answered yet (asked again): {e:?}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(anyhow::anyhow!("committed offsets: {e:?}")),
            }
        };
        let mut out = Vec::new();
        for p in 0..partitions {
            let offset = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                other => bail!("{topic}-{p}: no committed offset ({other:?})"),
            };
            let (_, high) = consumer
                .fetch_watermarks(&topic, p, REQUEST)
                .with_context(|| format!("watermarks of {topic}-{p}"))?;
            out.push((offset, high));
        }
        drop(committed);
        drop(consumer);
        Ok(out)
    })
    .await?
}

fn distinct(read: &[String]) -> BTreeSet<String> {
    read.iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_node_keeps_records_and_committed_offsets_across_a_kill_and_restart()
-> anyhow::Result<()> {
    const TOPIC: &str = "fixture-events";
    const GROUP: &str = "fixture-group";
    const PARTITIONS: i32 = 3;
    const RECORDS: u32 = 1_000;

    let t = Instant::now();
    let mut kafka = within(START, "start apache kafka", ApacheKafka::start()).await??;
    eprintln!(
        "one node ready in {:?} (pid {:?}, {}, dir {})",
        t.elapsed(),
        kafka.pid(),
        kafka.bootstrap(),
        kafka.dir().display()
    );
    let bootstrap = kafka.bootstrap();
    within(STEP, "create topic", kafka.create_topic(TOPIC, PARTITIONS)).await??;

    let t = Instant::now();
    produce(&bootstrap, TOPIC, 0..RECORDS).await?;
    eprintln!(
        "{RECORDS} records delivered (acks=all) in {:?}",
        t.elapsed()
    );

    let t = Instant::now();
    let read = consume_and_commit(&bootstrap, GROUP, TOPIC, RECORDS as usize).await?;
    eprintln!("the group read and committed them in {:?}", t.elapsed());
    ensure!(
        read.len() == RECORDS as usize && distinct(&read) == values(0..RECORDS),
        "the group read {} records, {} distinct, not 0..{RECORDS} once each",
        read.len(),
        distinct(&read).len()
    );
    let before = committed_and_high(&bootstrap, GROUP, TOPIC, PARTITIONS).await?;
    ensure!(
        before.iter().all(|(committed, high)| committed == high)
            && before.iter().map(|(_, high)| high).sum::<i64>() == i64::from(RECORDS),
        "committed offsets and high watermarks before the restart: {before:?}"
    );

    let t = Instant::now();
    kafka.kill();
    ensure!(kafka.pid().is_none(), "killed, yet a pid");
    within(START, "restart apache kafka", kafka.restart()).await??;
    eprintln!(
        "killed (SIGKILL) and restarted from its disks in {:?}",
        t.elapsed()
    );

    let after = committed_and_high(&bootstrap, GROUP, TOPIC, PARTITIONS).await?;
    ensure!(
        after == before,
        "(committed, high watermark) per partition: {before:?} before the restart, {after:?} after"
    );
    let all = read_all(&bootstrap, TOPIC, PARTITIONS, RECORDS as usize).await?;
    ensure!(
        all.len() == RECORDS as usize && distinct(&all) == values(0..RECORDS),
        "after the restart the topic holds {} records, {} distinct, not 0..{RECORDS}",
        all.len(),
        distinct(&all).len()
    );

    // The group resumes after its committed offsets: only the new records.
    produce(&bootstrap, TOPIC, RECORDS..RECORDS + 10).await?;
    let resumed = consume_and_commit(&bootstrap, GROUP, TOPIC, 10).await?;
    ensure!(
        distinct(&resumed) == values(RECORDS..RECORDS + 10),
        "after the restart the group read {resumed:?}, not the 10 new records"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_node_cluster_survives_the_kill_of_a_partition_leader() -> anyhow::Result<()> {
    const TOPIC: &str = "fixture-replicated";
    const GROUP: &str = "fixture-group";
    const PARTITIONS: i32 = 3;

    let t = Instant::now();
    let mut cluster = within(START, "start a 3-node cluster", KafkaCluster::start(3)).await??;
    eprintln!(
        "3 nodes ready in {:?} ({}, dir {})",
        t.elapsed(),
        cluster.bootstrap_servers(),
        cluster.dir().display()
    );
    let pids: BTreeSet<u32> = (0..3).filter_map(|n| cluster.pid(n)).collect();
    ensure!(pids.len() == 3, "three distinct processes, got {pids:?}");

    within(
        STEP,
        "create topic",
        cluster.create_topic(TOPIC, PARTITIONS),
    )
    .await??;
    let partition = cluster
        .partitions(TOPIC)
        .await?
        .into_iter()
        .find(|p| p.partition == 0)
        .context("partition 0")?;
    ensure!(
        partition.replicas.len() == 3 && partition.isr.len() == 3,
        "partition 0 is not on all three nodes: {partition:?}"
    );

    // Before the kill: a batch, read by the group (which creates __consumer_offsets, replicated
    // 3 times: that needs all three brokers up).
    let all_nodes = cluster.bootstrap_servers();
    produce(&all_nodes, TOPIC, 0..100).await?;
    let read = consume_and_commit(&all_nodes, GROUP, TOPIC, 100).await?;
    ensure!(
        distinct(&read) == values(0..100),
        "first batch read: {read:?}"
    );

    let leader = cluster.leader_of(TOPIC, 0).await?;
    let survivors: Vec<usize> = (0..3).filter(|&n| n != leader).collect();
    let t = Instant::now();
    cluster.kill9(leader);
    let moved = cluster
        .wait_for_partition(TOPIC, 0, STEP, |p| {
            p.leader.is_some_and(|l| l != leader) && !p.isr.contains(&leader)
        })
        .await?;
    eprintln!(
        "killed leader {leader} (SIGKILL); partition 0 led by {:?} after {:?}: {moved:?}",
        moved.leader,
        t.elapsed()
    );
    ensure!(
        moved.isr.len() == 2,
        "ISR after the kill should be the two survivors: {moved:?}"
    );

    // acks=all with min.insync.replicas=2: the two survivors are enough.
    let survivors_bootstrap = survivors
        .iter()
        .map(|&n| cluster.bootstrap(n))
        .collect::<Vec<_>>()
        .join(",");
    let t = Instant::now();
    produce(&survivors_bootstrap, TOPIC, 100..200).await?;
    eprintln!(
        "100 records delivered (acks=all) by the two survivors in {:?}",
        t.elapsed()
    );
    let resumed = consume_and_commit(&survivors_bootstrap, GROUP, TOPIC, 100).await?;
    ensure!(
        distinct(&resumed) == values(100..200),
        "the group after the kill read {} records, not the 100 new ones once each",
        resumed.len()
    );
    let all = read_all(&survivors_bootstrap, TOPIC, PARTITIONS, 200).await?;
    ensure!(
        all.len() == 200 && distinct(&all) == values(0..200),
        "the topic holds {} records ({} distinct), not 0..200",
        all.len(),
        distinct(&all).len()
    );

    let t = Instant::now();
    within(START, "restart the killed node", cluster.restart(leader)).await??;
    let restarted = t.elapsed();
    let back = cluster
        .wait_for_partition(TOPIC, 0, STEP, |p| p.isr.contains(&leader))
        .await?;
    eprintln!(
        "node {leader} restarted from its disks in {restarted:?}, back in the ISR after {:?}: \
         {back:?}",
        t.elapsed()
    );

    // SIGSTOP and SIGCONT reach the node's process.
    let follower = survivors[0];
    let pid = cluster.pid(follower).context("a running node has a pid")?;
    cluster.stop(follower)?;
    let stopped = process_state(pid, |s| s == 'T')?;
    cluster.resume(follower)?;
    let resumed_state = process_state(pid, |s| s != 'T')?;
    ensure!(
        stopped == 'T' && resumed_state != 'T',
        "node {follower} (pid {pid}): state {stopped} after stop, {resumed_state} after resume"
    );
    Ok(())
}

/// The state letter of `pid` in `/proc/<pid>/stat` (`T` = stopped) once `done` holds for it, or
/// after 2 s whatever it is then (a signal takes effect asynchronously).
fn process_state(pid: u32, done: impl Fn(char) -> bool) -> anyhow::Result<char> {
    let started = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // "pid (comm) S ...": the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .context("parse /proc/<pid>/stat")?;
        if done(state) || started.elapsed() > Duration::from_secs(2) {
            return Ok(state);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
