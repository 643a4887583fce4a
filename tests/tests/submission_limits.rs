//! Oversized submissions against the real control-plane binary (authenticated, on the default
//! broker and a real Redis): a 1 GiB catalogue stream and a 10,000,000-object stream are refused
//! as the data arrives, the control plane's memory stays bounded by its limits (its peak resident
//! set is measured and printed), nothing is persisted, and the next batch is served.

use std::time::{Duration, Instant};

use anyhow::ensure;
use strata_proto::v1 as pb;
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_proto::v1::submit_batch_stream_request::Chunk;
use strata_tests::control_plane::{AuthFile, ControlPlane, Secured};
use strata_tests::redis_server::RedisServer;
use strata_tests::{TestBroker, within};
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Bound on starting a process.
const LONG: Duration = Duration::from_secs(60);
/// Bound on one oversized upload (256 MiB or a million objects over loopback).
const UPLOAD: Duration = Duration::from_secs(120);
/// The control plane's default bound on one stream (`--max-submission-bytes`).
const MAX_SUBMISSION_BYTES: u64 = 256 << 20;
/// Bytes per catalogue chunk, as the CLI sends them.
const CHUNK_BYTES: usize = 4 << 20;
const MIB: u64 = 1 << 20;

struct Target {
    cp: ControlPlane,
    _redis: RedisServer,
    _broker: TestBroker,
    client: OrchestratorClient<Channel>,
    token: String,
}

impl Target {
    async fn start() -> anyhow::Result<Self> {
        let broker = within(LONG, "start broker", TestBroker::start()).await??;
        let redis = within(LONG, "start redis", RedisServer::start()).await??;
        let auth = AuthFile::create()?;
        let token = auth.add_token("submitter", &["submit", "read"])?;
        let cp = within(
            LONG,
            "start the control plane",
            ControlPlane::start_secured_on(
                &broker,
                &redis.url(),
                Secured {
                    tls: None,
                    auth: Some(auth),
                },
                &["--topic-partitions", "1"],
            ),
        )
        .await??;
        let channel = Channel::from_shared(cp.endpoint())?.connect().await?;
        let client = OrchestratorClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        Ok(Self {
            cp,
            _redis: redis,
            _broker: broker,
            client,
            token,
        })
    }

    fn authed<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().expect("ascii"),
        );
        request
    }

    /// Streams `messages` (made as they are sent) and returns the status and how much the
    /// control plane's peak resident set grew, in bytes.
    async fn oversized(
        &mut self,
        what: &str,
        messages: impl Iterator<Item = pb::SubmitBatchStreamRequest> + Send + 'static,
    ) -> anyhow::Result<(tonic::Status, u64)> {
        self.cp.reset_peak_memory()?;
        let before = self.cp.memory("VmRSS")?;
        let started = Instant::now();
        let request = self.authed(tokio_stream::iter(messages));
        let reply = within(UPLOAD, what, self.client.submit_batch_stream(request)).await?;
        let status = match reply {
            Ok(r) => anyhow::bail!("{what} was accepted: {:?}", r.into_inner()),
            Err(status) => status,
        };
        let peak = self.cp.memory("VmHWM")?;
        let growth = peak.saturating_sub(before);
        eprintln!(
            "{what}: {:?} after {:.1} s; control-plane RSS {} MiB before, peak {} MiB (+{} MiB)",
            status.code(),
            started.elapsed().as_secs_f64(),
            before / MIB,
            peak / MIB,
            growth / MIB
        );
        Ok((status, growth))
    }

    /// Nothing was persisted, and a small batch is still accepted.
    async fn still_serving(&mut self) -> anyhow::Result<()> {
        let listed = self
            .client
            .list_batches(self.authed(pb::ListBatchesRequest::default()))
            .await?
            .into_inner();
        ensure!(
            listed.batches.is_empty(),
            "a refused upload left batches: {:?}",
            listed.batches
        );
        let submitted = self
            .client
            .submit_batch(self.authed(pb::SubmitBatchRequest {
                idempotency_key: "after".into(),
                input: Some(pb::BatchInput {
                    source: Some(pb::batch_input::Source::Objects(pb::ObjectList {
                        objects: vec![pb::ObjectDefinition {
                            id: "1001".into(),
                            ..Default::default()
                        }],
                    })),
                }),
                ..Default::default()
            }))
            .await?
            .into_inner();
        ensure!(submitted.created, "{submitted:?}");
        Ok(())
    }
}

fn header(catalogue: bool) -> pb::SubmitBatchStreamRequest {
    pb::SubmitBatchStreamRequest {
        chunk: Some(Chunk::Header(pb::SubmitBatchHeader {
            idempotency_key: "oversized".into(),
            catalogue_format: if catalogue {
                pb::CatalogueFormat::SeedJson as i32
            } else {
                pb::CatalogueFormat::Unspecified as i32
            },
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_catalogue_stream_is_refused_at_the_byte_limit_in_bounded_memory()
-> anyhow::Result<()> {
    let mut target = Target::start().await?;
    // 1 GiB of a well-formed seed catalogue's records, made chunk by chunk as they are sent.
    let record = br#"{"IdObjet": 1001, "NomObjet": "filler", "IdObjet_Parent": null},"#;
    let mut chunk = b"[".to_vec();
    while chunk.len() + record.len() <= CHUNK_BYTES {
        chunk.extend_from_slice(record);
    }
    chunk.resize(CHUNK_BYTES, b' ');
    let chunks = (1u64 << 30) / CHUNK_BYTES as u64;
    let messages = std::iter::once(header(true)).chain((0..chunks).map(move |_| {
        pb::SubmitBatchStreamRequest {
            chunk: Some(Chunk::Catalogue(pb::CatalogueChunk {
                content: chunk.clone(),
            })),
        }
    }));
    let (status, growth) = target.oversized("a 1 GiB catalogue", messages).await?;
    ensure!(status.code() == Code::ResourceExhausted, "{status:?}");
    ensure!(
        status
            .message()
            .contains(&format!("over the limit of {MAX_SUBMISSION_BYTES} bytes")),
        "{}",
        status.message()
    );
    // The document is held up to the limit (a growing buffer may briefly hold two copies), never
    // the gibibyte sent.
    ensure!(
        growth < 3 * MAX_SUBMISSION_BYTES,
        "the control plane's peak RSS grew by {} MiB for a stream refused at {} MiB",
        growth / MIB,
        MAX_SUBMISSION_BYTES / MIB
    );
    target.still_serving().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_million_object_stream_is_refused_at_the_object_cap_in_bounded_memory()
-> anyhow::Result<()> {
    let mut target = Target::start().await?;
    const PER_CHUNK: u64 = 10_000;
    const OBJECTS: u64 = 10_000_000;
    let messages = std::iter::once(header(false)).chain((0..OBJECTS / PER_CHUNK).map(|c| {
        pb::SubmitBatchStreamRequest {
            chunk: Some(Chunk::Objects(pb::ObjectList {
                objects: (0..PER_CHUNK)
                    .map(|i| pb::ObjectDefinition {
                        id: format!("o{}", c * PER_CHUNK + i),
                        zone: "raw".into(),
                        ..Default::default()
                    })
                    .collect(),
            })),
        }
    }));
    let (status, growth) = target
        .oversized("a 10,000,000-object stream", messages)
        .await?;
    ensure!(status.code() == Code::InvalidArgument, "{status:?}");
    ensure!(
        status.message().contains("1000000"),
        "the cap named: {}",
        status.message()
    );
    // At most the cap's objects are held (about 120 bytes each decoded), never ten million.
    ensure!(
        growth < 512 * MIB,
        "the control plane's peak RSS grew by {} MiB for a stream refused at the cap",
        growth / MIB
    );
    target.still_serving().await
}
