#!/bin/sh
# An `exec` processor script: strata-worker-agent --processor exec --exec-command ./exec-load.sh
#
# Input: the Ready as JSON on stdin (batch_id, object_id, zone, attempt, max_attempts,
# dispatch_epoch, released_at, execution_timeout_ms, object{id,name,zone,parents,frequency,
# last_loaded_at,attributes}), and in the environment STRATA_BATCH_ID, STRATA_OBJECT_ID,
# STRATA_OBJECT_NAME, STRATA_ZONE, STRATA_ATTEMPT, STRATA_MAX_ATTEMPTS, STRATA_DISPATCH_EPOCH and
# STRATA_ATTR_<KEY> per attribute (upper-cased, non-alphanumerics as `_`).
#
# Output: exit 0 = loaded (the last stdout line becomes the result's info); exit 75 = temporary
# failure, retried (--exec-temp-fail-code); any other exit = permanent failure, the object goes
# DEAD. The tail of stderr (4 KiB) becomes the error. Past the zone's execution timeout the whole
# process group is killed and the attempt is retried.
set -eu

payload=$(cat)
echo "loading $STRATA_OBJECT_ID (${STRATA_OBJECT_NAME:-unnamed}) in zone $STRATA_ZONE, attempt $STRATA_ATTEMPT" >&2

case "${STRATA_ATTR_URL:-}" in
"") ;;
http*) ;;
*)
    echo "attribute URL is not an http(s) URL: $STRATA_ATTR_URL" >&2
    exit 2 # permanent: retrying cannot fix the catalogue
    ;;
esac

# ... load the object here; `exit 75` when the source is temporarily unavailable ...
bytes=$(printf '%s' "$payload" | wc -c)
echo "loaded $STRATA_OBJECT_ID (request of $bytes bytes)"
