//! The Redis `StateStore` against a real `redis-server`: what a restarted control plane reads
//! back, idempotent submission, atomic steps in one round trip, finished-batch expiry, atomic
//! retry claims under contention, dead-letter paging, a 100,000-node batch, agent leases kept
//! across a control-plane restart, recovery after Redis restarts, and a Redis that lost its
//! state found out by its generation marker.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use chrono::{TimeZone as _, Utc};
use redis::aio::MultiplexedConnection;
use strata_control_plane::adapters::redis::RedisStore;
use strata_control_plane::convert;
use strata_control_plane::ports::{
    BatchHead, BatchWrite, CreateOutcome, PortError, RetryEntry, StateStore, StepWrite,
    StoredBatch, StoredDeadLetter,
};
use strata_control_plane::records::DeadLetterRecord;
use strata_core::ObjectDef;
use strata_core::Zone;
use strata_core::agents::{HeldAttempt, LeaseKey, Registration, Registry};
use strata_core::machine::{BatchState, DeadReason, FailureKind, NodeRecord, NodeState};
use strata_core::submission::BatchOptions;
use strata_core::submission::batch_id_for;
use strata_proto::v1 as pb;
use strata_tests::{RedisServer, within};

const STEP: Duration = Duration::from_secs(30);
const PREFIX: &str = "strata-test:";
const DAY: Duration = Duration::from_secs(24 * 3600);

async fn start(ttl: Duration) -> anyhow::Result<(RedisServer, RedisStore, MultiplexedConnection)> {
    let redis = within(STEP, "start redis", RedisServer::start()).await??;
    let store = within(
        STEP,
        "connect store",
        RedisStore::connect(&redis.url(), PREFIX, ttl),
    )
    .await??;
    let con = within(STEP, "raw connection", redis.connection()).await??;
    Ok((redis, store, con))
}

fn record(state: NodeState, attempt: u32, epoch: u64) -> NodeRecord {
    NodeRecord {
        state,
        attempt,
        run_start: 0,
        dispatch_epoch: epoch,
        last_error: None,
        last_failure: None,
        dead_reason: None,
        retry_due: None,
    }
}

/// A dead letter of object `1000 + node` in `batch_id`, dead at `dead_at_ms`.
fn letter(batch_id: &str, node: u32, dead_at_ms: i64) -> StoredDeadLetter {
    let object = convert::object_defs(vec![pb::ObjectDefinition {
        id: (1000 + node).to_string(),
        ..Default::default()
    }])
    .expect("a valid object")
    .remove(0);
    StoredDeadLetter {
        batch_id: batch_id.to_owned(),
        node,
        letter: DeadLetterRecord {
            batch_id: batch_id.to_owned(),
            object,
            attempts: 3,
            last_error: format!("boom {node}"),
            kind: FailureKind::Timeout,
            dead_at: chrono::DateTime::from_timestamp_millis(dead_at_ms).expect("in range"),
            last_agent_id: "agent-1".into(),
        },
        dead_at_ms,
    }
}

fn dead(attempt: u32, error: &str) -> NodeRecord {
    NodeRecord {
        last_error: Some(error.into()),
        dead_reason: Some(DeadReason::RetriesExhausted),
        ..record(NodeState::Dead, attempt, u64::from(attempt))
    }
}

fn stored(key: &str, created_at_ms: i64, objects: &str) -> StoredBatch {
    StoredBatch {
        batch_id: batch_id_for(
            key,
            chrono::DateTime::from_timestamp_millis(created_at_ms).expect("in range"),
        ),
        idempotency_key: key.into(),
        content_hash: format!("hash-of-{objects}"),
        created_at_ms,
        layout_hash: format!("layout-of-{objects}"),
        options: BatchOptions {
            force: true,
            labels: [("team".to_owned(), "ops".to_owned())].into(),
            ..BatchOptions::default()
        },
    }
}

/// `n` objects of the raw zone, each a child of the one before, with every field set.
fn objects(n: u32) -> Vec<ObjectDef> {
    let defs = (0..n)
        .map(|i| pb::ObjectDefinition {
            id: (100_000 + i).to_string(),
            name: format!("warehouse.sales.object_{i:06}"),
            zone: "raw".into(),
            parents: (i > 0)
                .then(|| (100_000 + i - 1).to_string())
                .into_iter()
                .collect(),
            frequency: "0 3 * * *".into(),
            enabled: Some(true),
            priority: i as i32 % 3,
            attributes: [("path".to_owned(), format!("/data/{i}"))].into(),
            ..Default::default()
        })
        .collect();
    convert::object_defs(defs).expect("valid objects")
}

fn running(next_epoch: u64) -> BatchHead {
    BatchHead {
        state: BatchState::Running,
        next_epoch,
        finished_at_ms: None,
    }
}

fn finished(state: BatchState, next_epoch: u64) -> BatchHead {
    BatchHead {
        state,
        next_epoch,
        finished_at_ms: Some(1_700_000_999_000),
    }
}

async fn create(
    store: &RedisStore,
    batch: &StoredBatch,
    objects: &[ObjectDef],
    head: &BatchHead,
    nodes: &[(u32, NodeRecord)],
) -> anyhow::Result<CreateOutcome> {
    Ok(within(
        STEP,
        "create batch",
        store.create_batch(batch, objects, head, nodes),
    )
    .await??)
}

async fn apply(store: &RedisStore, step: &StepWrite) -> anyhow::Result<()> {
    Ok(within(STEP, "apply step", store.apply(step)).await??)
}

async fn pttl(con: &mut MultiplexedConnection, key: &str) -> anyhow::Result<i64> {
    Ok(within(
        STEP,
        "PTTL",
        redis::cmd("PTTL").arg(key).query_async::<i64>(con),
    )
    .await??)
}

/// The keys of a batch that expire when it finishes.
fn batch_keys(batch: &StoredBatch) -> Vec<String> {
    let b = format!("{PREFIX}batch:{}", batch.batch_id);
    vec![
        b.clone(),
        format!("{b}:objects"),
        format!("{b}:nodes"),
        format!("{PREFIX}idem:{}", batch.idempotency_key),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn created_batch_is_restored_with_its_records() -> anyhow::Result<()> {
    let (_redis, store, mut con) = start(DAY).await?;
    let batch = stored("submit-1", 1_700_000_000_000, r#"[{"id":"a"},{"id":"b"}]"#);
    let nodes = vec![
        (0, record(NodeState::Ready, 1, 1)),
        (
            2,
            NodeRecord {
                retry_due: Some(Utc.timestamp_opt(1_700_000_123, 456_789_123).unwrap()),
                last_error: Some("connection reset: upstream said \"no\"".into()),
                run_start: 3,
                ..record(NodeState::RetryWait, 5, 9)
            },
        ),
        (7, record(NodeState::SkippedFresh, 0, 0)),
        (
            9,
            NodeRecord {
                dead_reason: Some(DeadReason::Preflight),
                last_error: Some("object x is disabled".into()),
                ..record(NodeState::Dead, 0, 0)
            },
        ),
    ];
    assert_eq!(
        create(&store, &batch, &objects(2), &running(10), &nodes).await?,
        CreateOutcome::Created
    );

    let active = within(STEP, "load active", store.load_active()).await??;
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].batch, batch);
    assert_eq!(active[0].objects, objects(2));
    assert_eq!(active[0].head, running(10));
    assert_eq!(active[0].nodes, nodes);

    let got = within(STEP, "get batch", store.get_batch(&batch.batch_id)).await??;
    assert_eq!(got, Some((batch.clone(), running(10))));
    let got = within(STEP, "objects", store.batch_objects(&batch.batch_id)).await??;
    assert_eq!(got, Some(objects(2)));
    assert_eq!(
        within(
            STEP,
            "objects of an unknown batch",
            store.batch_objects("b-nope")
        )
        .await??,
        None
    );
    assert_eq!(
        within(STEP, "get unknown batch", store.get_batch("b-nope")).await??,
        None
    );
    let (ids, next) = within(STEP, "list batches", store.list_batches(None, 10)).await??;
    assert_eq!((ids, next), (vec![batch.batch_id.clone()], None));

    // Every key is under the prefix, and a running batch does not expire.
    let keys: Vec<String> = within(
        STEP,
        "KEYS",
        redis::cmd("KEYS").arg("*").query_async(&mut con),
    )
    .await??;
    assert!(
        keys.iter().all(|k| k.starts_with(PREFIX)),
        "keys outside the prefix: {keys:?}"
    );
    for key in batch_keys(&batch) {
        assert_eq!(pttl(&mut con, &key).await?, -1, "{key} must not expire");
    }
    within(STEP, "ping", store.ping()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn same_idempotency_key_returns_the_original_and_overwrites_nothing() -> anyhow::Result<()> {
    let (_redis, store, _con) = start(DAY).await?;
    let original = stored("submit-dup", 1_700_000_000_000, r#"[{"id":"first"}]"#);
    let nodes = vec![(0, record(NodeState::Ready, 1, 1))];
    assert_eq!(
        create(&store, &original, &objects(2), &running(2), &nodes).await?,
        CreateOutcome::Created
    );

    // A later submission with the same key but other content.
    let other = StoredBatch {
        content_hash: "another-hash".into(),
        created_at_ms: original.created_at_ms + 5_000,
        ..original.clone()
    };
    let other_nodes = vec![
        (0, record(NodeState::Loaded, 1, 1)),
        (1, record(NodeState::Ready, 1, 2)),
    ];
    let before = store.round_trips();
    assert_eq!(
        create(
            &store,
            &other,
            &objects(3),
            &finished(BatchState::Succeeded, 3),
            &other_nodes
        )
        .await?,
        CreateOutcome::Existing {
            batch_id: original.batch_id.clone(),
            content_hash: original.content_hash.clone(),
        }
    );
    assert_eq!(store.round_trips() - before, 1, "create is one round trip");

    let active = within(STEP, "load active", store.load_active()).await??;
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].batch, original, "definition overwritten");
    assert_eq!(active[0].objects, objects(2), "objects overwritten");
    assert_eq!(active[0].head, running(2), "head overwritten");
    assert_eq!(active[0].nodes, nodes, "records overwritten");

    // Replaying the very same create (a retry after a lost reply) confirms it.
    assert_eq!(
        create(&store, &original, &objects(2), &running(2), &nodes).await?,
        CreateOutcome::Created
    );
    let (ids, _) = within(STEP, "list batches", store.list_batches(None, 10)).await??;
    assert_eq!(ids, vec![original.batch_id.clone()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_updates_heads_and_records_and_a_finished_batch_expires() -> anyhow::Result<()> {
    let (_redis, store, mut con) = start(DAY).await?;
    let a = stored("batch-a", 1_700_000_000_000, "[a]");
    let b = stored("batch-b", 1_700_000_001_000, "[b]");
    create(
        &store,
        &a,
        &objects(2),
        &running(2),
        &[(0, record(NodeState::Ready, 1, 1))],
    )
    .await?;
    create(
        &store,
        &b,
        &objects(2),
        &running(2),
        &[(0, record(NodeState::Ready, 1, 1))],
    )
    .await?;

    // One step touching both batches, a retry and a dead letter: one round trip.
    let step = StepWrite {
        batches: vec![
            BatchWrite {
                batch_id: a.batch_id.clone(),
                head: running(4),
                nodes: vec![
                    (0, record(NodeState::Loaded, 1, 1)),
                    (1, record(NodeState::Ready, 1, 2)),
                    (2, record(NodeState::Ready, 1, 3)),
                ],
            },
            BatchWrite {
                batch_id: b.batch_id.clone(),
                head: finished(BatchState::Failed, 2),
                nodes: vec![(0, dead(1, "permanent: bad input"))],
            },
        ],
        schedule: vec![RetryEntry {
            batch_id: a.batch_id.clone(),
            node: 5,
            attempt: 1,
            due_ms: 1_000,
        }],
        dead_letters: vec![letter(&b.batch_id, 0, 1_700_000_002_000)],
        loaded: vec![("1001".into(), 1_700_000_002_000)],
    };
    let before = store.round_trips();
    apply(&store, &step).await?;
    assert_eq!(
        store.round_trips() - before,
        1,
        "apply must be one round trip"
    );

    let active = within(STEP, "load active", store.load_active()).await??;
    assert_eq!(active.len(), 1, "the FAILED batch left the active set");
    assert_eq!(active[0].batch.batch_id, a.batch_id);
    assert_eq!(active[0].head, running(4));
    assert_eq!(active[0].nodes, step.batches[0].nodes);

    // The finished batch stays queryable until its TTL, then goes; so do its dead letters.
    let got = within(STEP, "get finished batch", store.get_batch(&b.batch_id)).await??;
    assert_eq!(got.map(|(_, h)| h), Some(finished(BatchState::Failed, 2)));
    let dlq = [
        format!("{PREFIX}batch:{}:dlq", b.batch_id),
        format!("{PREFIX}batch:{}:dlqidx", b.batch_id),
    ];
    for key in batch_keys(&b).iter().chain(&dlq) {
        let t = pttl(&mut con, key).await?;
        ensure!(t > 0, "{key} of a finished batch has no TTL ({t})");
        ensure!(
            t <= DAY.as_millis() as i64 * 2,
            "{key} expires too late ({t} ms)"
        );
    }
    for key in batch_keys(&a) {
        assert_eq!(
            pttl(&mut con, &key).await?,
            -1,
            "{key} of a running batch expires"
        );
    }
    let claimed = within(STEP, "claim", store.claim_due_retries(2_000, 10)).await??;
    assert_eq!(claimed, step.schedule);

    // A replay reopens the FAILED batch: active again, and it no longer expires.
    apply(
        &store,
        &StepWrite {
            batches: vec![BatchWrite {
                batch_id: b.batch_id.clone(),
                head: running(3),
                nodes: vec![(0, record(NodeState::Ready, 2, 2))],
            }],
            ..StepWrite::default()
        },
    )
    .await?;
    let active = within(STEP, "load active", store.load_active()).await??;
    let ids: Vec<_> = active.iter().map(|r| r.batch.batch_id.clone()).collect();
    assert_eq!(ids, vec![a.batch_id.clone(), b.batch_id.clone()]);
    assert_eq!(active[1].head, running(3), "finished_at cleared on reopen");
    for key in batch_keys(&b).iter().chain(&dlq) {
        assert_eq!(
            pttl(&mut con, key).await?,
            -1,
            "{key} still expires after reopen"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_batch_disappears_from_listings_and_its_key_is_free_again() -> anyhow::Result<()> {
    let ttl = Duration::from_millis(300);
    let (_redis, store, mut con) = start(ttl).await?;
    let done = stored("short-lived", 1_700_000_000_000, "[x]");
    let kept = stored("kept", 1_700_000_000_500, "[y]");
    create(&store, &done, &objects(2), &running(1), &[]).await?;
    create(&store, &kept, &objects(2), &running(1), &[]).await?;
    apply(
        &store,
        &StepWrite {
            batches: vec![BatchWrite {
                batch_id: done.batch_id.clone(),
                head: finished(BatchState::Failed, 2),
                nodes: vec![(0, dead(1, "boom"))],
            }],
            dead_letters: vec![letter(&done.batch_id, 0, 1_700_000_001_000)],
            ..StepWrite::default()
        },
    )
    .await?;
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;

    assert_eq!(
        within(STEP, "get expired", store.get_batch(&done.batch_id)).await??,
        None
    );
    // A claim prunes the expired batch's index entries, even if nobody lists.
    within(STEP, "claim", store.claim_due_retries(0, 1)).await??;
    let left: Vec<String> = within(
        STEP,
        "KEYS",
        redis::cmd("KEYS").arg("*").query_async(&mut con),
    )
    .await??;
    let left: BTreeSet<String> = left.into_iter().collect();
    let expected: BTreeSet<String> = [
        format!("{PREFIX}active"),
        format!("{PREFIX}batches"),
        format!("{PREFIX}idem:{}", kept.idempotency_key),
        format!("{PREFIX}batch:{}", kept.batch_id),
        format!("{PREFIX}batch:{}:objects", kept.batch_id),
    ]
    .into();
    assert_eq!(left, expected, "leftovers of the expired batch");
    let (ids, next) = within(STEP, "list batches", store.list_batches(None, 10)).await??;
    assert_eq!((ids, next), (vec![kept.batch_id.clone()], None));
    let (letters, _) = within(
        STEP,
        "list dead letters",
        store.list_dead_letters(None, None, 10),
    )
    .await??;
    assert!(letters.is_empty(), "expired letters listed: {letters:?}");

    // The idempotency key expired with it: the same submission creates the batch again.
    assert_eq!(
        create(&store, &done, &objects(2), &running(1), &[]).await?,
        CreateOutcome::Created
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_for_a_batch_that_is_not_stored_are_skipped() -> anyhow::Result<()> {
    let (_redis, store, mut con) = start(DAY).await?;
    apply(
        &store,
        &StepWrite {
            batches: vec![BatchWrite {
                batch_id: "b-unknown".into(),
                head: running(5),
                nodes: vec![(0, record(NodeState::Ready, 1, 1))],
            }],
            dead_letters: vec![letter("b-unknown", 0, 1)],
            ..StepWrite::default()
        },
    )
    .await?;
    let keys: Vec<String> = within(
        STEP,
        "KEYS",
        redis::cmd("KEYS").arg("*").query_async(&mut con),
    )
    .await??;
    assert!(keys.is_empty(), "a partial batch was written: {keys:?}");
    assert!(
        within(STEP, "load active", store.load_active())
            .await??
            .is_empty()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn last_loaded_times_are_kept_across_batches_and_read_in_one_round_trip() -> anyhow::Result<()>
{
    let (_redis, store, _con) = start(DAY).await?;
    // Loads are recorded even in a step whose batch is not stored: they belong to the object.
    apply(
        &store,
        &StepWrite {
            loaded: vec![("1001".into(), 1_000), ("2001".into(), 2_000)],
            ..StepWrite::default()
        },
    )
    .await?;
    apply(
        &store,
        &StepWrite {
            loaded: vec![("1001".into(), 3_000)],
            ..StepWrite::default()
        },
    )
    .await?;
    let mut ids: Vec<String> = vec!["2001".into(), "9999".into(), "1001".into()];
    // More than one HMGET chunk.
    ids.extend((0..25_000).map(|i| format!("x{i}")));
    let before = store.round_trips();
    let times = within(STEP, "last loaded", store.last_loaded(&ids)).await??;
    assert_eq!(store.round_trips() - before, 1);
    assert_eq!(times.len(), ids.len());
    assert_eq!(times[..3], [Some(2_000), None, Some(3_000)]);
    assert!(times[3..].iter().all(Option::is_none));
    assert!(
        within(STEP, "none", store.last_loaded(&[]))
            .await??
            .is_empty()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_leases_survive_a_control_plane_restart() -> anyhow::Result<()> {
    let (redis, store, mut con) = start(DAY).await?;
    let ttl = Duration::from_secs(10);
    let t0 = Utc::now();
    let zone = |z: &str| Zone::parse(z).expect("zone");
    let reg = || Registration {
        capacity: 2,
        version: "0.1.0".into(),
        hostname: "host-a".into(),
        result_key: Some(LeaseKey::new([0x42; 32])),
        ..Registration::default()
    };
    let mut registry = Registry::new(ttl);
    let raw = registry.register(zone("raw"), reg(), 7, t0).clone();
    let app = registry.register(zone("application"), reg(), 7, t0).clone();
    let gone = registry.register(zone("raw"), reg(), 7, t0).clone();
    let held = HeldAttempt {
        batch_id: "b-1".into(),
        object_id: "1001".into(),
        attempt: 1,
        dispatch_epoch: 3,
    };
    registry
        .heartbeat(&raw.id, raw.lease_epoch, vec![held.clone()], false, t0)
        .expect("renewed");
    registry
        .deregister(&gone.id, gone.lease_epoch, t0)
        .expect("deregistered");
    let changes = registry.take_changes().expect("changes");
    let before = store.round_trips();
    within(STEP, "save agents", store.save_agents(&changes)).await??;
    assert_eq!(store.round_trips() - before, 1, "one transaction");
    registry.forget_inactive(t0 + chrono::TimeDelta::hours(2));
    let forgotten = registry.take_changes().expect("changes");
    assert_eq!(forgotten.removed, vec![gone.id.clone()]);
    within(STEP, "save agents", store.save_agents(&forgotten)).await??;
    // A lease nobody can read must not keep a control plane from starting.
    redis::cmd("HSET")
        .arg(format!("{PREFIX}agents"))
        .arg("agent-garbled")
        .arg("{not json")
        .query_async::<()>(&mut con)
        .await?;

    // A restarted control plane: a new connection, the registry rebuilt from what is stored, a
    // minute after the leases would have run out.
    let restarted = within(
        STEP,
        "connect store",
        RedisStore::connect(&redis.url(), PREFIX, DAY),
    )
    .await??;
    let (agents, next_epoch) = within(STEP, "load agents", restarted.load_agents()).await??;
    let mut ids: Vec<&str> = agents.iter().map(|a| a.id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![raw.id.as_str(), app.id.as_str()];
    want.sort_unstable();
    assert_eq!(
        ids, want,
        "the forgotten and the garbled leases are not restored"
    );
    assert_eq!(next_epoch, 4);
    let stored_raw = agents.iter().find(|a| a.id == raw.id).expect("raw agent");
    assert_eq!(stored_raw.in_flight, vec![held]);
    assert_eq!(stored_raw.zone, zone("raw"));
    assert_eq!(
        stored_raw.result_key,
        Some(LeaseKey::new([0x42; 32])),
        "the lease's result key is kept: results signed before the restart verify after it"
    );
    let later = t0 + chrono::TimeDelta::seconds(60);
    let mut restored = Registry::restore(ttl, agents, next_epoch, later);
    restored
        .heartbeat(&raw.id, raw.lease_epoch, vec![], false, later)
        .expect("the lease taken before the restart is honoured");
    let restored_app = restored.get(&app.id).expect("app agent");
    assert!(restored_app.state.is_live());
    assert_eq!(restored_app.zone, zone("application"));
    let fresh = restored.register(zone("raw"), reg(), 8, later).clone();
    assert_eq!(fresh.lease_epoch, 4, "epochs continue");

    // The Ready signing seed: the first candidate stored is the one every later caller gets.
    let first = within(STEP, "seed", restarted.ready_signing_seed([1; 32])).await??;
    let second = within(STEP, "seed", store.ready_signing_seed([2; 32])).await??;
    assert_eq!((first, second), ([1; 32], [1; 32]));

    // An empty store: no agents, epochs from 1.
    redis::cmd("FLUSHALL").query_async::<()>(&mut con).await?;
    let (agents, next_epoch) = within(STEP, "load agents", restarted.load_agents()).await??;
    assert!(agents.is_empty());
    assert_eq!(next_epoch, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_returns_only_due_entries_once_and_in_due_order() -> anyhow::Result<()> {
    let (_redis, store, _con) = start(DAY).await?;
    let entry = |node: u32, due_ms: i64| RetryEntry {
        batch_id: "b-with:colon".into(),
        node,
        attempt: 2,
        due_ms,
    };
    let schedule = vec![
        entry(1, 5_000),
        entry(2, 1_000),
        entry(3, 9_000),
        entry(4, 3_000),
        entry(5, 5_000),
    ];
    apply(
        &store,
        &StepWrite {
            schedule: schedule.clone(),
            ..StepWrite::default()
        },
    )
    .await?;

    let early = within(STEP, "claim early", store.claim_due_retries(999, 10)).await??;
    assert!(early.is_empty(), "claimed before due: {early:?}");
    let first = within(STEP, "claim 2", store.claim_due_retries(5_000, 2)).await??;
    assert_eq!(first, vec![entry(2, 1_000), entry(4, 3_000)]);
    let second = within(STEP, "claim rest", store.claim_due_retries(5_000, 10)).await??;
    assert_eq!(second, vec![entry(1, 5_000), entry(5, 5_000)]);
    let again = within(STEP, "claim again", store.claim_due_retries(5_000, 10)).await??;
    assert!(again.is_empty(), "claimed twice: {again:?}");
    let last = within(STEP, "claim last", store.claim_due_retries(i64::MAX, 10)).await??;
    assert_eq!(last, vec![entry(3, 9_000)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_claimers_never_get_the_same_entry() -> anyhow::Result<()> {
    let (redis, store, _con) = start(DAY).await?;
    const ENTRIES: u32 = 5_000;
    let schedule: Vec<RetryEntry> = (0..ENTRIES)
        .map(|i| RetryEntry {
            batch_id: format!("b-{}", i % 7),
            node: i,
            attempt: 1 + i % 3,
            due_ms: i64::from(i % 100),
        })
        .collect();
    apply(
        &store,
        &StepWrite {
            schedule: schedule.clone(),
            ..StepWrite::default()
        },
    )
    .await?;

    // Two control planes: separate connections.
    let mut claimers = Vec::new();
    for _ in 0..2 {
        let store = within(
            STEP,
            "connect claimer",
            RedisStore::connect(&redis.url(), PREFIX, DAY),
        )
        .await??;
        claimers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store.claim_due_retries(1_000, 13).await?;
                if batch.is_empty() {
                    return Ok::<_, PortError>(got);
                }
                got.extend(batch);
            }
        }));
    }
    let mut claimed = Vec::new();
    for c in claimers {
        claimed.push(within(STEP, "claimer", c).await???);
    }
    let (x, y) = (&claimed[0], &claimed[1]);
    eprintln!("claimer shares: {} / {}", x.len(), y.len());
    let xs: HashSet<_> = x.iter().cloned().collect();
    let ys: HashSet<_> = y.iter().cloned().collect();
    assert_eq!(xs.len(), x.len(), "a claimer got an entry twice");
    assert_eq!(ys.len(), y.len(), "a claimer got an entry twice");
    assert!(xs.is_disjoint(&ys), "both claimers got an entry");
    let all: HashSet<_> = schedule.into_iter().collect();
    assert_eq!(&xs | &ys, all, "entries lost");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_newest_first_with_cursor_paging() -> anyhow::Result<()> {
    let (_redis, store, _con) = start(DAY).await?;
    let a = stored("dlq-a", 1, "[a]");
    let b = stored("dlq-b", 2, "[b]");
    create(&store, &a, &objects(2), &running(1), &[]).await?;
    create(&store, &b, &objects(2), &running(1), &[]).await?;
    // 25 letters, some sharing a time.
    let letters: Vec<StoredDeadLetter> = (0..25u32)
        .map(|i| {
            let batch = if i % 3 == 0 { &b } else { &a };
            letter(
                &batch.batch_id,
                i,
                1_700_000_000_000 + i64::from(i / 2) * 1_000,
            )
        })
        .collect();
    apply(
        &store,
        &StepWrite {
            dead_letters: letters.clone(),
            ..StepWrite::default()
        },
    )
    .await?;

    for filter in [None, Some(a.batch_id.clone()), Some(b.batch_id.clone())] {
        let mut listed = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let (page, next) = within(
                STEP,
                "list dead letters",
                store.list_dead_letters(filter.clone(), cursor, 4),
            )
            .await??;
            pages += 1;
            assert!(page.len() <= 4);
            listed.extend(page);
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
            ensure!(pages < 100, "paging does not end");
        }
        let mut expected: Vec<_> = letters
            .iter()
            .filter(|d| filter.as_ref().is_none_or(|f| &d.batch_id == f))
            .cloned()
            .collect();
        assert!(
            listed
                .windows(2)
                .all(|w| w[0].dead_at_ms >= w[1].dead_at_ms),
            "not newest first"
        );
        assert_eq!(pages, expected.len().div_ceil(4), "filter {filter:?}");
        let key = |d: &StoredDeadLetter| (d.batch_id.clone(), d.node);
        listed.sort_by_key(key);
        expected.sort_by_key(key);
        assert_eq!(listed, expected, "filter {filter:?}");
    }
    let bad = within(
        STEP,
        "foreign cursor",
        store.list_dead_letters(None, Some("12".into()), 4),
    )
    .await?;
    assert!(
        matches!(bad, Err(PortError::Rejected { .. })),
        "foreign cursor: {bad:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_are_listed_newest_first_with_cursor_paging() -> anyhow::Result<()> {
    let (_redis, store, _con) = start(DAY).await?;
    let mut created = Vec::new();
    for i in 0..11i64 {
        // Two batches per millisecond: ties are paged exactly too.
        let b = stored(&format!("list-{i}"), 1_700_000_000_000 + i / 2, "[]");
        create(&store, &b, &objects(2), &running(1), &[]).await?;
        created.push(b);
    }
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let (ids, next) = within(STEP, "list", store.list_batches(cursor, 3)).await??;
        listed.extend(ids);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
        ensure!(listed.len() <= created.len(), "paging repeats entries");
    }
    let created_at: BTreeMap<_, _> = created
        .iter()
        .map(|b| (b.batch_id.clone(), b.created_at_ms))
        .collect();
    assert_eq!(listed.len(), created.len());
    assert_eq!(
        listed.iter().collect::<BTreeSet<_>>(),
        created_at.keys().collect::<BTreeSet<_>>()
    );
    assert!(
        listed
            .windows(2)
            .all(|w| created_at[&w[0]] >= created_at[&w[1]]),
        "not newest first: {listed:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_thousand_node_batch_round_trips() -> anyhow::Result<()> {
    let (_redis, store, mut con) = start(DAY).await?;
    const N: u32 = 100_000;
    // Objects with every field set, like a real 100k-object submission.
    let big = objects(N);
    let batch = stored("big", 1_700_000_000_000, "");
    let nodes: Vec<(u32, NodeRecord)> = (0..N)
        .map(|i| {
            let r = match i % 5 {
                0 => record(NodeState::Ready, 1, u64::from(i) + 1),
                1 => record(NodeState::SkippedFresh, 0, 0),
                2 => record(NodeState::Running, 2, u64::from(i) + 1),
                3 => dead(3, "retries exhausted: timeout talking to the warehouse"),
                _ => record(NodeState::Loaded, 1, u64::from(i) + 1),
            };
            (i, r)
        })
        .collect();
    let started = Instant::now();
    assert_eq!(
        create(&store, &batch, &big, &running(u64::from(N) + 1), &nodes).await?,
        CreateOutcome::Created
    );
    let created = started.elapsed();

    let started = Instant::now();
    let before = store.round_trips();
    let active = within(STEP, "load active", store.load_active()).await??;
    let loaded = started.elapsed();
    let load_trips = store.round_trips() - before;
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].batch, batch);
    assert_eq!(active[0].objects, big);
    assert_eq!(active[0].nodes, nodes);

    // A step that rewrites every node (a cancel) is still one round trip.
    let cancelled: Vec<(u32, NodeRecord)> = (0..N)
        .map(|i| (i, record(NodeState::Cancelled, 1, u64::from(i))))
        .collect();
    let before = store.round_trips();
    apply(
        &store,
        &StepWrite {
            batches: vec![BatchWrite {
                batch_id: batch.batch_id.clone(),
                head: finished(BatchState::Cancelled, u64::from(N) + 1),
                nodes: cancelled,
            }],
            ..StepWrite::default()
        },
    )
    .await?;
    assert_eq!(store.round_trips() - before, 1);
    assert!(
        within(STEP, "load active", store.load_active())
            .await??
            .is_empty()
    );

    let nodes_key = format!("{PREFIX}batch:{}:nodes", batch.batch_id);
    let memory: i64 = within(
        STEP,
        "MEMORY USAGE",
        redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&nodes_key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut con),
    )
    .await??;
    eprintln!(
        "{N} nodes: create {created:?}, load_active {loaded:?} in {load_trips} round trips, \
         node records {:.1} MB in redis ({} B/node)",
        memory as f64 / 1e6,
        memory / i64::from(N),
    );
    ensure!(
        memory < 100 * i64::from(N),
        "node records take {memory} bytes in redis"
    );
    ensure!(pttl(&mut con, &nodes_key).await? > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_is_retryable_and_the_store_recovers_after_a_restart() -> anyhow::Result<()> {
    let (mut redis, store, _con) = start(DAY).await?;
    let store = store.with_timeout(Duration::from_secs(2));
    within(STEP, "ping", store.ping()).await??;

    redis.stop();
    let down = within(STEP, "ping while down", store.ping()).await?;
    match &down {
        Err(e @ PortError::Unavailable { .. }) => assert!(e.retryable()),
        other => anyhow::bail!("expected unavailable, got {other:?}"),
    }
    let batch = stored("after-restart", 1, "[]");
    let write = within(
        STEP,
        "create while down",
        store.create_batch(&batch, &objects(1), &running(1), &[]),
    )
    .await?;
    assert!(
        write.as_ref().is_err_and(PortError::retryable),
        "create while down: {write:?}"
    );

    within(STEP, "start redis again", redis.start_again()).await??;
    let deadline = Instant::now() + STEP;
    while let Err(e) = store.ping().await {
        ensure!(Instant::now() < deadline, "no reconnect: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The new server has no scripts: the first call loads them again (2 more round trips).
    let before = store.round_trips();
    assert_eq!(
        create(&store, &batch, &objects(2), &running(1), &[]).await?,
        CreateOutcome::Created
    );
    assert_eq!(store.round_trips() - before, 3);
    let active = within(STEP, "load active", store.load_active())
        .await??
        .into_iter()
        .map(|r| r.batch)
        .collect::<Vec<_>>();
    assert_eq!(active, vec![batch]);
    Ok(())
}

/// A finished batch's trails (its nodes' latest transitions and last agents) are stored beside
/// its records, read back with them by `load_batch`, and expire with the batch.
#[tokio::test(flavor = "multi_thread")]
async fn trails_are_read_back_with_their_batch_and_expire_with_it() -> anyhow::Result<()> {
    use strata_control_plane::ports::{NodeTrail, StoredTransition};
    let (_redis, store, mut con) = start(DAY).await?;
    let batch = stored("trails", 1, "[]");
    let nodes = vec![(0, record(NodeState::Loaded, 1, 1))];
    create(
        &store,
        &batch,
        &objects(2),
        &finished(BatchState::Succeeded, 2),
        &nodes,
    )
    .await?;
    let trail = NodeTrail {
        transitions: vec![StoredTransition {
            from: NodeState::Running,
            to: NodeState::Loaded,
            attempt: 1,
            at_ms: 1_700_000_000_123,
        }],
        agent: Some("agent-raw-1".into()),
    };
    within(
        STEP,
        "save trails",
        store.save_trails(&batch.batch_id, &[(0, trail.clone())]),
    )
    .await??;
    let (restored, trails) = within(STEP, "load batch", store.load_batch(&batch.batch_id))
        .await??
        .context("stored")?;
    assert_eq!(restored.batch, batch);
    assert_eq!(restored.nodes, nodes);
    assert_eq!(trails, vec![(0, trail)]);
    let key = format!("{PREFIX}batch:{}:trails", batch.batch_id);
    let ttl = pttl(&mut con, &key).await?;
    assert!(ttl > 0 && ttl <= DAY.as_millis() as i64, "trails TTL {ttl}");
    // Not stored: nothing written, nothing read.
    within(
        STEP,
        "save trails",
        store.save_trails("b-none", &[(0, NodeTrail::default())]),
    )
    .await??;
    assert!(
        within(STEP, "load", store.load_batch("b-none"))
            .await??
            .is_none()
    );
    Ok(())
}

/// Dead letters wait in the outbox from the write that stores them until they are marked sent.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_wait_in_the_outbox_until_marked_sent() -> anyhow::Result<()> {
    let (_redis, store, _con) = start(DAY).await?;
    let batch = stored("outbox", 1, "[]");
    create(&store, &batch, &objects(3), &running(1), &[]).await?;
    apply(
        &store,
        &StepWrite {
            dead_letters: vec![
                letter(&batch.batch_id, 0, 10),
                letter(&batch.batch_id, 2, 20),
            ],
            ..StepWrite::default()
        },
    )
    .await?;
    let unsent = within(STEP, "outbox", store.unsent_dead_letters(10)).await??;
    let nodes: BTreeSet<u32> = unsent.iter().map(|d| d.node).collect();
    assert_eq!(nodes, BTreeSet::from([0, 2]));
    assert_eq!(unsent[0].letter.batch_id, batch.batch_id);
    within(
        STEP,
        "sent",
        store.dead_letters_sent(&[(batch.batch_id.clone(), 2)]),
    )
    .await??;
    let unsent = within(STEP, "outbox", store.unsent_dead_letters(10)).await??;
    assert_eq!(unsent.iter().map(|d| d.node).collect::<Vec<_>>(), [0]);
    Ok(())
}

/// A Redis that lost the state written to it (FLUSHALL, a restart without persistence) is found
/// out at the next write and the next ping: `StateLost`, not retryable, and nothing is written
/// to the empty Redis. Stores opening one Redis share its generation marker.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_lost_its_state_is_found_out_and_written_no_more() -> anyhow::Result<()> {
    let (mut redis, store, mut con) = start(DAY).await?;
    let store = store.with_timeout(Duration::from_secs(2));
    within(STEP, "open generation", store.open_generation([1; 16])).await??;
    let other = within(
        STEP,
        "a second store",
        RedisStore::connect(&redis.url(), PREFIX, DAY),
    )
    .await??;
    within(STEP, "open it", other.open_generation([2; 16])).await??;
    let marker: String = within(
        STEP,
        "GET generation",
        redis::cmd("GET")
            .arg(format!("{PREFIX}generation"))
            .query_async(&mut con),
    )
    .await??;
    assert_eq!(marker, "01".repeat(16), "the first store's marker stays");
    let batch = stored("generation", 1, "[]");
    create(&store, &batch, &objects(1), &running(1), &[]).await?;
    within(STEP, "ping", other.ping()).await??;

    let keys = |con: &mut MultiplexedConnection| {
        let mut con = con.clone();
        async move {
            within(
                STEP,
                "KEYS",
                redis::cmd("KEYS")
                    .arg("*")
                    .query_async::<Vec<String>>(&mut con),
            )
            .await?
            .map_err(anyhow::Error::from)
        }
    };
    let expect_lost = |what: &str, r: Result<(), PortError>| match r {
        Err(e @ PortError::StateLost { .. }) => {
            assert!(!e.retryable(), "{what}: {e}");
            assert!(e.to_string().contains("generation"), "{what}: {e}");
            Ok(())
        }
        other => Err(anyhow::anyhow!("{what}: expected StateLost, got {other:?}")),
    };
    within(
        STEP,
        "FLUSHALL",
        redis::cmd("FLUSHALL").query_async::<()>(&mut con),
    )
    .await??;
    expect_lost(
        "ping after FLUSHALL",
        within(STEP, "ping", store.ping()).await?,
    )?;
    let step = StepWrite {
        batches: vec![BatchWrite {
            batch_id: batch.batch_id.clone(),
            head: running(5),
            nodes: vec![(0, record(NodeState::Running, 1, 1))],
        }],
        ..StepWrite::default()
    };
    expect_lost(
        "apply after FLUSHALL",
        within(STEP, "apply", store.apply(&step)).await?,
    )?;
    let again = stored("generation-2", 2, "[]");
    expect_lost(
        "create after FLUSHALL",
        within(
            STEP,
            "create",
            store.create_batch(&again, &objects(1), &running(1), &[]),
        )
        .await?
        .map(|_| ()),
    )?;
    assert_eq!(
        keys(&mut con).await?,
        Vec::<String>::new(),
        "written to the empty Redis"
    );

    // Restarted without persistence: the same, once the store reconnects.
    within(STEP, "restart redis", redis.start_again()).await??;
    let deadline = Instant::now() + STEP;
    let found = loop {
        match store.ping().await {
            Err(e @ PortError::StateLost { .. }) => break e,
            other => {
                ensure!(Instant::now() < deadline, "after the restart: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    println!("after a restart without persistence: {found}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_works_over_tls() -> anyhow::Result<()> {
    let redis = within(STEP, "start redis with TLS", RedisServer::start_tls()).await??;
    assert!(redis.url().starts_with("rediss://"));
    let store = within(
        STEP,
        "connect over TLS",
        RedisStore::connect(&redis.url(), PREFIX, DAY),
    )
    .await??;
    within(STEP, "ping", store.ping()).await??;
    let batch = stored("tls", 1_700_000_000_000, r#"[{"id":"1001"}]"#);
    create(&store, &batch, &objects(2), &running(1), &[]).await?;
    let active = within(STEP, "load active", store.load_active()).await??;
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].batch, batch);
    // A plain-text client is not answered.
    let plain = redis.url().replacen("rediss://", "redis://", 1);
    let plain = plain.trim_end_matches("#insecure");
    let refused = within(STEP, "plain text", RedisStore::connect(plain, PREFIX, DAY)).await?;
    assert!(
        refused.is_err(),
        "a plain-text connection to a TLS port worked"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_fails_fast_and_retryably_when_redis_is_absent() -> anyhow::Result<()> {
    let port = strata_tests::free_port()?;
    let started = Instant::now();
    let result = within(
        STEP,
        "connect to nothing",
        RedisStore::connect(&format!("redis://127.0.0.1:{port}/"), PREFIX, DAY),
    )
    .await?;
    let e = result.err().context("connected to a closed port")?;
    assert!(e.retryable(), "{e}");
    eprintln!("gave up after {:?}: {e}", started.elapsed());
    let bad = within(
        STEP,
        "bad ttl",
        RedisStore::connect("redis://x/", PREFIX, Duration::ZERO),
    )
    .await?;
    assert!(matches!(bad, Err(PortError::Rejected { .. })));
    Ok(())
}
