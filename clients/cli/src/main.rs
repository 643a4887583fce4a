//! `strata`: the command line of Strata, over the gRPC API (`strata-client`).
//!
//! Exit codes: 0 = done (for `watch`/`submit --watch`/`dev --submit`: the batch succeeded);
//! 1 = the batch ended otherwise (failed, cancelled); 2 = bad usage or input (including the
//! control plane's `INVALID_ARGUMENT`); 3 = the control plane is unreachable or refused the call
//! for another reason.

mod dev;
mod render;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strata_client::{
    Client, ClientError, ClientOptions, DEFAULT_ENDPOINT, IdentityFiles, Security, Token,
};
use strata_proto::v1 as pb;
use strata_runtime::{executor, logs};
use tonic::Code;

use crate::render::{Output, print_json};

/// The environment variable holding the bearer token (no flag: see `--help`).
const TOKEN_ENV: &str = "STRATA_TOKEN";

/// Strata: gets a catalogue of layered data objects loaded in dependency order by worker agents.
#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    after_help = "Exit codes: 0 done (a watched batch succeeded), 1 a watched batch did not \
                  succeed, 2 bad usage or input, 3 control plane unreachable or call refused.\n\n\
                  Quick start (no services needed):\n  strata dev --submit \
                  clients/samples/catalogue.json\n\n\
                  TLS: an https:// endpoint (or --ca / --cert with host:port) is reached over \
                  TLS, trusting --ca (default: the system's CAs); --cert and --key present a \
                  client certificate to a control plane that verifies them (mutual TLS).\n\n\
                  Token: --token-file FILE or STRATA_TOKEN (environment only, not both; there \
                  is no --token flag, since a command line shows in `ps`). It is sent as \
                  `authorization: Bearer …` with every call and never printed."
)]
struct Cli {
    /// The control plane's gRPC endpoint (`https://` for TLS).
    #[arg(long, global = true, env = "STRATA_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    endpoint: String,

    /// PEM file of the CA certificates that signed the control plane's certificate (TLS).
    #[arg(long, global = true, env = "STRATA_CA", value_name = "FILE")]
    ca: Option<PathBuf>,

    /// PEM client certificate (chain) for a control plane that verifies clients (mutual TLS);
    /// with --key.
    #[arg(long, global = true, env = "STRATA_CLIENT_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(long, global = true, env = "STRATA_CLIENT_KEY", value_name = "FILE")]
    key: Option<PathBuf>,

    /// File holding the bearer token to send (surrounding white space ignored); or set
    /// STRATA_TOKEN.
    #[arg(long, global = true, env = "STRATA_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Control plane plus one simulated agent per zone in this process, in memory (no Kafka, no
    /// Redis), serving the real gRPC API.
    Dev(dev::DevArgs),
    /// Submits a catalogue (seed or native JSON) as a batch.
    Submit(SubmitArgs),
    /// Plans a catalogue without running it: waves, per-zone counts, critical path, what is
    /// fresh, coalesced or rejected.
    Plan(PlanArgs),
    /// Follows a batch to its end (progress per zone), then prints a summary; exit 0 only if it
    /// succeeded.
    Watch {
        /// The batch id.
        batch_id: String,
    },
    /// A batch's state and counts per zone, or the recent batches.
    Status {
        /// The batch id. None = list batches.
        batch_id: Option<String>,
    },
    /// One object of a batch: state, attempts, history, and why it is blocked.
    Object {
        /// The batch id.
        batch_id: String,
        /// The object id.
        object_id: String,
    },
    /// Objects waiting for a retry, and when.
    Retries {
        /// Only this batch.
        batch_id: Option<String>,
        /// Only this zone.
        #[arg(long)]
        zone: Option<String>,
    },
    /// Dead letters: list them, or replay them.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The registered worker agents.
    Agents {
        /// Only this zone.
        #[arg(long)]
        zone: Option<String>,
        /// Also agents whose lease expired or that deregistered.
        #[arg(long)]
        all: bool,
    },
    /// Cancels a running batch (nothing more is released; attempts in flight are ignored).
    Cancel {
        /// The batch id.
        batch_id: String,
        /// Why (shown in the batch's state reason).
        #[arg(long, default_value = "cancelled from the strata CLI")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Lists dead letters.
    List {
        /// Only this batch.
        batch_id: Option<String>,
        /// Only this zone.
        #[arg(long)]
        zone: Option<String>,
    },
    /// Replays dead objects of a batch (their blocked descendants come back too).
    Replay {
        /// The batch id.
        batch_id: String,
        /// The objects to replay. None = every dead object of the batch.
        object_ids: Vec<String>,
        /// Attempts for the replay (0 = the batch's policy).
        #[arg(long, default_value_t = 0)]
        max_attempts: u32,
        /// Watch the batch to its end afterwards.
        #[arg(long)]
        watch: bool,
    },
}

/// What to submit and how.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// The catalogue: a JSON file in the seed's format or Strata's native one.
    catalogue: PathBuf,
    #[command(flatten)]
    options: PlanOptions,
    /// Idempotency key: resubmitting with the same key returns the same batch. Default: a new
    /// key per invocation (retries of this invocation are safe, a second run is a new batch).
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Follow the batch to its end afterwards (exit 0 only if it succeeded).
    #[arg(long)]
    watch: bool,
}

impl SubmitArgs {
    /// Every object of `catalogue` as a target, watched to the end.
    pub fn for_file(catalogue: PathBuf) -> Self {
        Self {
            catalogue,
            options: PlanOptions {
                all: true,
                ..PlanOptions::default()
            },
            idempotency_key: None,
            watch: true,
        }
    }
}

/// Planning options shared by `submit` and `plan`.
#[derive(Debug, Clone, Default, clap::Args)]
struct PlanOptions {
    /// Only these objects and their ancestors (comma-separated). Default: the final-layer
    /// objects.
    #[arg(long, value_delimiter = ',', conflicts_with = "all")]
    targets: Vec<String>,
    /// Every object of the catalogue is a target.
    #[arg(long)]
    all: bool,
    /// Run objects even if they are fresh.
    #[arg(long)]
    force: bool,
    /// Attempts per object, the first included (0 = the zone's policy).
    #[arg(long, default_value_t = 0)]
    max_attempts: u32,
    /// Treat parents missing from the catalogue as external and already loaded.
    #[arg(long)]
    allow_external_parents: bool,
    /// A label for the batch (`key=value`, repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

#[derive(Debug, clap::Args)]
struct PlanArgs {
    /// The catalogue: a JSON file in the seed's format or Strata's native one.
    catalogue: PathBuf,
    #[command(flatten)]
    options: PlanOptions,
    /// Also list the objects outside the targets' closure.
    #[arg(long)]
    include_excluded: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

impl PlanOptions {
    fn to_proto(&self) -> pb::SubmitOptions {
        pb::SubmitOptions {
            targets: self.targets.clone(),
            all: self.all,
            force: self.force,
            max_attempts: self.max_attempts,
            retry_policy: None,
            allow_external_parents: self.allow_external_parents,
            labels: self.labels.iter().cloned().collect(),
        }
    }
}

/// Why the CLI stopped, and its exit code.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        let code = match e.downcast_ref::<ClientError>() {
            Some(ClientError::Status { status }) if status.code() == Code::InvalidArgument => 2,
            Some(ClientError::Endpoint { .. } | ClientError::Credentials { .. }) => 2,
            Some(_) => 3,
            None if e.downcast_ref::<std::io::Error>().is_some() => 2,
            None => 3,
        };
        Self {
            code,
            message: format!("{e:#}"),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        anyhow::Error::from(e).into()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logs::init(
        "warn",
        std::io::stderr,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    let runtime = match executor::build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("strata: {}", f.message.replace('\n', " "));
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let output = cli.output;
    if let Command::Dev(args) = cli.command {
        return Ok(dev::run(args, output).await?);
    }
    let security = Security {
        ca: cli.ca.clone(),
        identity: IdentityFiles::pair(cli.cert.clone(), cli.key.clone(), "--cert", "--key")?,
        token: Token::from_file_or_env(cli.token_file.as_deref(), "--token-file", TOKEN_ENV)?,
    };
    let client = Client::connect(
        &cli.endpoint,
        ClientOptions {
            security,
            ..ClientOptions::default()
        },
    )?;
    match cli.command {
        Command::Dev(_) => unreachable!("handled above"),
        Command::Submit(args) => Ok(submit_and_watch(&client, &args, output).await?),
        Command::Plan(args) => {
            plan(&client, &args, output).await?;
            Ok(0)
        }
        Command::Watch { batch_id } => {
            let batch = watch::watch(&client, &batch_id, output).await?;
            Ok(outcome_code(&batch))
        }
        Command::Status { batch_id } => {
            status(&client, batch_id.as_deref(), output).await?;
            Ok(0)
        }
        Command::Object {
            batch_id,
            object_id,
        } => {
            let o = client.get_object(&batch_id, &object_id).await?;
            if output == Output::Json {
                print_json(&o);
            } else {
                println!("{}", object_text(&o));
            }
            Ok(0)
        }
        Command::Retries { batch_id, zone } => {
            let r = client
                .list_retries(pb::ListRetriesRequest {
                    batch_id: batch_id.unwrap_or_default(),
                    zone: zone.unwrap_or_default(),
                    page_size: 0,
                    page_token: String::new(),
                })
                .await?;
            render::print_list(
                output,
                &r,
                &r.retries,
                "no object is waiting for a retry",
                &[
                    "batch",
                    "object",
                    "zone",
                    "attempt",
                    "next attempt",
                    "last error",
                ],
                |x| {
                    vec![
                        x.batch_id.clone(),
                        x.object_id.clone(),
                        x.zone.clone(),
                        format!("{}/{}", x.attempt, x.max_attempts),
                        render::time(x.next_attempt_at.as_ref()),
                        x.last_error.clone(),
                    ]
                },
            );
            Ok(0)
        }
        Command::Dlq(DlqCommand::List { batch_id, zone }) => {
            let r = client
                .list_dead_letters(pb::ListDeadLettersRequest {
                    batch_id: batch_id.unwrap_or_default(),
                    zone: zone.unwrap_or_default(),
                    page_size: 0,
                    page_token: String::new(),
                })
                .await?;
            render::print_list(
                output,
                &r,
                &r.dead_letters,
                "no dead letters",
                &[
                    "batch",
                    "object",
                    "zone",
                    "attempts",
                    "blocked",
                    "last error",
                ],
                |d| {
                    vec![
                        d.batch_id.clone(),
                        d.object_id.clone(),
                        d.zone.clone(),
                        d.attempts.to_string(),
                        d.blocked_descendant_count.to_string(),
                        d.last_error.clone(),
                    ]
                },
            );
            Ok(0)
        }
        Command::Dlq(DlqCommand::Replay {
            batch_id,
            object_ids,
            max_attempts,
            watch,
        }) => {
            let r = client
                .replay_dead_letters(pb::ReplayDeadLettersRequest {
                    batch_id: batch_id.clone(),
                    object_ids,
                    max_attempts,
                })
                .await?;
            if output == Output::Json {
                print_json(&r);
            } else {
                println!(
                    "replayed {} object(s): {}; {} blocked descendant(s) re-armed",
                    r.replayed_object_ids.len(),
                    r.replayed_object_ids.join(", "),
                    r.rearmed_descendant_count
                );
            }
            if watch {
                let batch = watch::watch(&client, &batch_id, output).await?;
                return Ok(outcome_code(&batch));
            }
            Ok(0)
        }
        Command::Agents { zone, all } => {
            let r = client.list_agents(&zone.unwrap_or_default(), all).await?;
            render::print_list(
                output,
                &r,
                &r.agents,
                "no agents registered",
                &[
                    "zone",
                    "agent",
                    "state",
                    "in flight",
                    "host",
                    "last heartbeat",
                ],
                |a| {
                    vec![
                        a.zone.clone(),
                        a.agent_id.clone(),
                        a.state()
                            .as_str_name()
                            .trim_start_matches("AGENT_STATE_")
                            .to_owned(),
                        format!("{}/{}", a.in_flight, a.capacity),
                        a.hostname.clone(),
                        render::time(a.last_heartbeat_at.as_ref()),
                    ]
                },
            );
            Ok(0)
        }
        Command::Cancel { batch_id, reason } => {
            let b = client.cancel(&batch_id, &reason).await?;
            if output == Output::Json {
                print_json(&b);
            } else {
                println!("batch {} is {}", b.batch_id, render::batch_state(b.state()));
            }
            Ok(0)
        }
    }
}

/// 0 when the batch succeeded, 1 otherwise.
fn outcome_code(batch: &pb::Batch) -> u8 {
    if batch.state() == pb::BatchState::Succeeded {
        0
    } else {
        1
    }
}

fn catalogue_input(path: &PathBuf) -> anyhow::Result<pb::BatchInput> {
    let content = std::fs::read(path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
    })?;
    Ok(pb::BatchInput {
        source: Some(pb::batch_input::Source::Catalogue(pb::CatalogueDocument {
            format: pb::CatalogueFormat::Auto as i32,
            content,
        })),
    })
}

/// `strata submit` (and the submission of `dev --submit`): returns the exit code.
pub(crate) async fn submit_and_watch(
    client: &Client,
    args: &SubmitArgs,
    output: Output,
) -> anyhow::Result<u8> {
    let key = args.idempotency_key.clone().unwrap_or_else(|| {
        format!(
            "cli-{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
            std::process::id()
        )
    });
    let response = client
        .submit(pb::SubmitBatchRequest {
            idempotency_key: key.clone(),
            input: Some(catalogue_input(&args.catalogue)?),
            options: Some(args.options.to_proto()),
        })
        .await?;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string(&render::to_json(&response)).expect("JSON prints")
        );
    } else {
        println!(
            "batch {} {} (idempotency key {key})",
            response.batch_id,
            if response.created {
                "submitted"
            } else {
                "already submitted with this key"
            }
        );
        if let Some(s) = &response.summary {
            println!("{}", render::summary(s));
        }
    }
    if !args.watch {
        return Ok(0);
    }
    let batch = watch::watch(client, &response.batch_id, output).await?;
    Ok(outcome_code(&batch))
}

async fn plan(client: &Client, args: &PlanArgs, output: Output) -> anyhow::Result<()> {
    let response = client
        .plan(pb::PlanBatchRequest {
            input: Some(catalogue_input(&args.catalogue)?),
            options: Some(args.options.to_proto()),
            max_objects: 0,
            include_excluded: args.include_excluded,
        })
        .await?;
    if output == Output::Json {
        print_json(&response);
        return Ok(());
    }
    if let Some(s) = &response.summary {
        println!("{}", render::summary(s));
    }
    let mut waves: std::collections::BTreeMap<u32, Vec<&pb::PlannedObject>> = Default::default();
    for o in &response.objects {
        waves.entry(o.wave).or_default().push(o);
    }
    for (wave, objects) in waves {
        let items: Vec<String> = objects
            .iter()
            .map(|o| match o.disposition() {
                pb::Disposition::Run | pb::Disposition::Unspecified => {
                    format!("{} ({})", o.object_id, o.zone)
                }
                d => format!(
                    "{} ({}, {})",
                    o.object_id,
                    o.zone,
                    d.as_str_name()
                        .trim_start_matches("DISPOSITION_")
                        .to_lowercase()
                ),
            })
            .collect();
        println!("wave {wave}: {}", items.join(", "));
    }
    if response.omitted_count > 0 {
        println!("… and {} more objects", response.omitted_count);
    }
    Ok(())
}

async fn status(client: &Client, batch_id: Option<&str>, output: Output) -> anyhow::Result<()> {
    let Some(batch_id) = batch_id else {
        let r = client
            .list_batches(pb::ListBatchesRequest {
                page_size: 50,
                ..Default::default()
            })
            .await?;
        render::print_list(
            output,
            &r,
            &r.batches,
            "no batches",
            &["batch", "state", "objects", "created", "finished"],
            |b| {
                let total: u32 = b.counts.iter().map(|c| c.count).sum();
                vec![
                    b.batch_id.clone(),
                    render::batch_state(b.state()).to_owned(),
                    total.to_string(),
                    render::time(b.created_at.as_ref()),
                    render::time(b.finished_at.as_ref()),
                ]
            },
        );
        return Ok(());
    };
    let b = client.get_batch(batch_id).await?;
    if output == Output::Json {
        print_json(&b);
        return Ok(());
    }
    println!(
        "{}",
        watch::final_summary(&b, std::time::Duration::ZERO).replacen(" (watched 0.0 s)", "", 1)
    );
    println!(
        "created {}, finished {}",
        render::time(b.created_at.as_ref()),
        render::time(b.finished_at.as_ref())
    );
    if !b.state_reason.is_empty() {
        println!("reason: {}", b.state_reason);
    }
    Ok(())
}

fn object_text(o: &pb::ObjectStatus) -> String {
    let name = o.definition.as_ref().map(|d| d.name.as_str()).unwrap_or("");
    let mut lines = vec![
        format!(
            "object {} {name} ({}, wave {}) in batch {}",
            o.definition.as_ref().map(|d| d.id.as_str()).unwrap_or("?"),
            o.zone,
            o.wave,
            o.batch_id
        ),
        format!(
            "state {}, attempt {}/{}{}",
            render::object_state(o.state()),
            o.attempt,
            o.max_attempts,
            if o.agent_id.is_empty() {
                String::new()
            } else {
                format!(", agent {}", o.agent_id)
            }
        ),
    ];
    if let Some(b) = &o.blocked
        && !b.summary.is_empty()
    {
        lines.push(format!("blocked: {}", b.summary));
    }
    if !o.last_error.is_empty() {
        lines.push(format!("last error: {}", o.last_error));
    }
    if o.next_attempt_at.is_some() {
        lines.push(format!(
            "next attempt at {}",
            render::time(o.next_attempt_at.as_ref())
        ));
    }
    if !o.coalesced_onto_batch_id.is_empty() {
        lines.push(format!(
            "coalesced onto batch {}",
            o.coalesced_onto_batch_id
        ));
    }
    lines.push("history:".into());
    for t in &o.history {
        lines.push(format!(
            "  {}  {} → {}  attempt {}  {}",
            render::time(t.at.as_ref()),
            render::object_state(t.from_state()),
            render::object_state(t.to_state()),
            t.attempt,
            t.reason
        ));
    }
    lines.join("\n")
}
