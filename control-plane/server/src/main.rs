//! `strata-control-plane`: the thin binary. Reads the configuration (flags, `STRATA_*`
//! environment, optional TOML file), connects Kafka and Redis, and serves until SIGINT/SIGTERM.
//! Exports traces over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (flushed at exit).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use strata_control_plane::adapters::kafka::{KafkaDataPlane, KafkaSettings};
use strata_control_plane::adapters::redis::RedisStore;
use strata_control_plane::auth::grants;
use strata_control_plane::config::{Command, Flags};
use strata_control_plane::run::run_with;
use strata_control_plane::telemetry;
use strata_runtime::{executor, logs, otlp, shutdown};

/// How long spans still queued at shutdown may take to be exported.
const TRACES_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> ExitCode {
    let mut flags = Flags::parse();
    if let Some(command) = flags.command.take() {
        return run_command(command, &flags);
    }
    let print = flags.print_config;
    let config = match flags.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strata-control-plane: {e}");
            return ExitCode::from(2);
        }
    };
    if print {
        print!("{}", config.to_display_toml());
        return ExitCode::SUCCESS;
    }
    if config.auth_file.is_none() && !config.insecure {
        eprintln!(
            "strata-control-plane: no authentication configured: give --auth-file (bearer tokens \
             and certificate subjects with their roles; `strata-control-plane --auth-file FILE \
             new-token --name NAME --role submit` makes one) or, on a trusted network only, \
             --insecure"
        );
        return ExitCode::from(2);
    }
    logs::init(
        "info",
        std::io::stdout,
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
    );
    let runtime = match executor::build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata-control-plane: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Traces, when the environment names an OTLP endpoint (the exporter's gRPC channel lives on
    // the runtime).
    let traces = match runtime.block_on(async { otlp::install_from_env(telemetry::SERVICE_NAME) }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("strata-control-plane: traces: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(t) = &traces {
        tracing::info!(endpoint = %t.endpoint(), "exporting traces over OTLP");
    }
    let result: anyhow::Result<()> = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.grpc_addr))?;
        let admin = tokio::net::TcpListener::bind(config.admin_addr)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot listen on {} (--admin-addr): {e}", config.admin_addr)
            })?;
        let store = RedisStore::connect(&config.redis_url, &config.key_prefix, config.finished_ttl)
            .await
            .map_err(|e| anyhow::anyhow!("redis at {}: {e}", config.redis_url_masked()))?;
        let data = KafkaDataPlane::connect(KafkaSettings {
            topic_prefix: config.topic_prefix.clone(),
            partitions: config.topic_partitions,
            replication_factor: config.topic_replication_factor,
            min_insync_replicas: config.topic_min_insync_replicas,
            consumer_group: config.consumer_group.clone(),
            extra: config.kafka_client_properties(),
            ..KafkaSettings::new(config.kafka_brokers.clone())
        })
        .map_err(|e| anyhow::anyhow!("kafka at {}: {e}", config.kafka_brokers))?;
        let shutdown = shutdown::signal()?;
        let data = Arc::new(data);
        let served = run_with(
            &config,
            data.clone(),
            Arc::new(store),
            listener,
            Some(admin),
            shutdown,
        )
        .await;
        // Commit the stored result offsets and leave the consumer group before exiting.
        data.close().await;
        served?;
        Ok(())
    });
    // Every span has ended (the driver has stopped): export what is queued, bounded. The runtime
    // still runs the exporter's channel.
    if let Some(t) = traces {
        t.shutdown_blocking(TRACES_FLUSH);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-control-plane: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command instead of serving.
fn run_command(command: Command, flags: &Flags) -> ExitCode {
    match command {
        Command::NewToken { name, roles } => {
            let Some(path) = &flags.auth_file else {
                eprintln!("strata-control-plane new-token: give --auth-file (or STRATA_AUTH_FILE)");
                return ExitCode::from(2);
            };
            match grants::add_new_token(path, &name, &roles) {
                Ok(token) => {
                    println!("{token}");
                    eprintln!(
                        "strata-control-plane: token for {name:?} added to {} (its SHA-256 only); \
                         send SIGHUP to running control planes",
                        path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("strata-control-plane new-token: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
