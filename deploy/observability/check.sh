#!/usr/bin/env bash
# Validates the observability configs (tests/tests/deploy_configs.rs runs it in ./tests/run.sh):
#
#   deploy/observability/check.sh [--dir DIR] [--root ROOT]
#
#   1. promtool check config prometheus.yml   (also loads the rule files it names)
#   2. promtool check rules alerts.yml
#   3. promtool test rules alerts.test.yml    (each alert fires, and stays quiet, where it should)
#   4. check_names.py: the dashboard is valid JSON, every panel has a unique id and the
#      ${DS_PROMETHEUS} datasource, and every metric, label and function in the rules, the test
#      series and the dashboard exists -- metrics as declared in ROOT's
#      control-plane/server/src/metrics.rs and worker-agent/src/metrics.rs.
#
# Every step runs; the exit status is 1 when any failed (each failure is printed), else 0.
# --dir: the directory to check [this script's directory]; --root: the repository whose sources
# declare the metrics [this repository]. Env: STRATA_PROMTOOL_BIN (else promtool on the PATH;
# `deploy/local/provision.sh promtool` installs Debian's), STRATA_CHECK_PYTHON [python3].
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="$HERE"
ROOT="$(cd "$HERE/../.." && pwd)"
while (($#)); do
    case $1 in
    --dir)
        DIR="$(cd "${2:?--dir needs a directory}" && pwd)"
        shift 2
        ;;
    --root)
        ROOT="$(cd "${2:?--root needs a directory}" && pwd)"
        shift 2
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        printf 'check.sh: unknown argument %s (--dir DIR, --root ROOT)\n' "$1" >&2
        exit 2
        ;;
    esac
done

PROMTOOL="${STRATA_PROMTOOL_BIN:-$(command -v promtool || true)}"
if [[ -z $PROMTOOL || ! -x $PROMTOOL ]]; then
    printf 'check.sh: error: promtool not found%s: run deploy/local/provision.sh promtool (Debian'"'"'s prometheus package), or set STRATA_PROMTOOL_BIN\n' \
        "${STRATA_PROMTOOL_BIN:+ (STRATA_PROMTOOL_BIN=$STRATA_PROMTOOL_BIN)}" >&2
    exit 1
fi
PYTHON="${STRATA_CHECK_PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || {
    printf 'check.sh: error: %s not found (set STRATA_CHECK_PYTHON)\n' "$PYTHON" >&2
    exit 1
}

failed=()
step() { # step TITLE COMMAND...: runs it in DIR, prints its output indented
    local title=$1 out rc=0
    shift
    out="$(cd "$DIR" && "$@" 2>&1)" || rc=$?
    if [[ $rc == 0 ]]; then
        printf 'ok    %s\n' "$title"
    else
        printf 'FAIL  %s (exit %s)\n' "$title" "$rc"
        failed+=("$title")
    fi
    [[ -z $out ]] || printf '      %s\n' "${out//$'\n'/$'\n      '}"
}

printf 'checking %s (metrics from %s; %s)\n' "$DIR" "$ROOT" "$("$PROMTOOL" --version 2>&1 | head -n1)"
step "promtool check config prometheus.yml" "$PROMTOOL" check config prometheus.yml
step "promtool check rules alerts.yml" "$PROMTOOL" check rules alerts.yml
step "promtool test rules alerts.test.yml" "$PROMTOOL" test rules alerts.test.yml
step "metric names, labels, functions; dashboard panels and datasources" \
    "$PYTHON" "$HERE/check_names.py" --dir "$DIR" --root "$ROOT"

if ((${#failed[@]})); then
    joined="$(printf '%s; ' "${failed[@]}")"
    printf '\ncheck.sh: %d of 4 checks failed: %s\n' "${#failed[@]}" "${joined%; }" >&2
    exit 1
fi
printf '\ncheck.sh: all 4 checks passed\n'
