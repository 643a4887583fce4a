#!/usr/bin/env bash
# Checks that the repository's tracked files stand on their own:
#   (a) no tracked file references a path outside the repository (a design or style document kept
#       elsewhere, notes beside the checkout, a machine's absolute paths);
#   (b) in tracked Markdown files, every relative link `[text](path)` and every backticked
#       `docs/...` or `tests/...` path names a file or directory tracked in the repository
#       (anchors `#...` and `:line` suffixes are ignored; fenced code blocks are skipped).
#
#   tests/check_docs.sh [--root DIR]   check the git repository at DIR (default: this checkout)
#   tests/check_docs.sh --self-test    prove the check fails on bad references and passes on good
#                                      ones, in throw-away repositories
#
# Prints one `file:line: problem` per finding and exits 1 if there is any. Needs bash, git, grep
# and awk only. tests/run.sh runs both modes.
set -euo pipefail

SELF=tests/check_docs.sh
# What a reference outside the repository looks like. This file must name them, so it is the one
# file exempt from (a).
OUTSIDE='\.\./shared|shared/notes|DESIGN\.md|DESIGN §|DESIGN section|STYLE\.md|/work/|/root/|/home/'

check() { # check ROOT: prints findings, returns 1 if any
    local root=$1 found=0
    cd "$root"

    # (a) references outside the repository.
    local hits
    hits="$(git grep -n -I -E "$OUTSIDE" -- . ":(exclude)$SELF" || true)"
    if [[ -n $hits ]]; then
        found=1
        while IFS= read -r hit; do
            # file:line:text
            local file=${hit%%:*} rest=${hit#*:}
            local line=${rest%%:*} text=${rest#*:}
            local what
            what="$(grep -o -E "$OUTSIDE" <<<"$text" | head -n 1)"
            printf '%s:%s: references a path outside the repository (%s); point at the repository'"'"'s own docs instead\n' \
                "$file" "$line" "$what"
        done <<<"$hits"
    fi

    # (b) relative links and backticked docs/ and tests/ paths in Markdown files.
    declare -A tracked=()
    local f d
    while IFS= read -r f; do
        tracked[$f]=1
        d=$f
        while [[ $d == */* ]]; do
            d=${d%/*}
            tracked[$d]=1
        done
    done < <(git ls-files)

    local md ref kind lineno target base path
    while IFS= read -r md; do
        base=$(dirname "$md")
        while IFS=$'\t' read -r lineno kind ref; do
            target=${ref%%#*}
            target=${target%%\?*}
            [[ -z $target ]] && continue # an anchor in the same file
            if [[ $kind == link ]]; then
                case $target in
                    *://* | mailto:* | /*) continue ;; # URLs; absolute paths are (a)'s business
                esac
                path=$base/$target
            else
                target=${target%%:[0-9]*} # `tests/foo.rs:12`
                case $target in
                    *'*'* | *'<'* | *'{'* | *'$'*) continue ;; # patterns, not paths
                esac
                path=$target
            fi
            path=$(normalise "$path")
            if [[ -z ${tracked[$path]:-} ]]; then
                found=1
                printf '%s:%s: %s %s names %s, which is not in the repository\n' \
                    "$md" "$lineno" "$([[ $kind == link ]] && echo link || echo path)" "$ref" "$path"
            fi
        done < <(refs_of "$md")
    done < <(git ls-files -- '*.md')

    return "$found"
}

refs_of() { # refs_of FILE: "line<TAB>link|path<TAB>target" for each reference outside code fences
    awk '
        /^[[:space:]]*(```|~~~)/ { fenced = !fenced; next }
        fenced { next }
        {
            s = $0
            while (match(s, /\]\([^) \t]+( "[^"]*")?\)/)) {
                t = substr(s, RSTART + 2, RLENGTH - 3)
                sub(/ ".*$/, "", t)
                sub(/^</, "", t); sub(/>$/, "", t)
                printf "%d\tlink\t%s\n", NR, t
                s = substr(s, RSTART + RLENGTH)
            }
            s = $0
            while (match(s, /`(docs|tests)\/[^` \t]*`/)) {
                printf "%d\tpath\t%s\n", NR, substr(s, RSTART + 1, RLENGTH - 2)
                s = substr(s, RSTART + RLENGTH)
            }
        }
    ' "$1"
}

normalise() { # normalise PATH: resolves `.` and `..`, drops a trailing slash (no file access)
    local IFS=/ part
    local -a out=()
    for part in $1; do
        case $part in
            '' | .) ;;
            ..) if ((${#out[@]})); then unset 'out[${#out[@]}-1]'; else out+=(..); fi ;;
            *) out+=("$part") ;;
        esac
    done
    printf '%s\n' "${out[*]}"
}

self_test() {
    local tmp status=0
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN

    make_repo() { # make_repo DIR: an empty git repository with docs/
        mkdir -p "$1/docs/adr" "$1/tests"
        git -C "$1" init -q
    }
    commit() { git -C "$1" add -A && git -C "$1" -c user.name=t -c user.email=t@t commit -q -m t; }

    # A clean repository passes.
    make_repo "$tmp/good"
    printf '# A\n\nSee [B](adr/b.md#why), [the tests](../tests/README.md), `docs/a.md` and `tests/README.md:3`.\n' >"$tmp/good/docs/a.md"
    printf '# B\n\n[back](../a.md) and [a site](https://example.com/x.md).\n\n```sh\n[not](checked.md)\n```\n' >"$tmp/good/docs/adr/b.md"
    printf '# tests\n' >"$tmp/good/tests/README.md"
    commit "$tmp/good"
    if ! out="$(check "$tmp/good" 2>&1)"; then
        printf 'check_docs self-test: a clean repository was refused:\n%s\n' "$out" >&2
        status=1
    fi

    # Each kind of bad reference is found and named with its file and line.
    make_repo "$tmp/bad"
    printf '# A\n\nAs the notes say (../shared/notes/kafka-broker.md).\n' >"$tmp/bad/docs/a.md"
    printf '// the target design (DESIGN §4)\n' >"$tmp/bad/tests/lib.rs"
    printf 'cd /work/main && make\n' >"$tmp/bad/tests/run.sh"
    printf '# B\n\n[gone](missing.md) and `docs/nope.md`.\n' >"$tmp/bad/docs/b.md"
    commit "$tmp/bad"
    if out="$(check "$tmp/bad" 2>&1)"; then
        printf 'check_docs self-test: a repository with bad references passed\n' >&2
        status=1
    else
        local want
        for want in 'docs/a.md:3: references a path outside' 'tests/lib.rs:1: references a path outside' \
            'tests/run.sh:1: references a path outside' 'docs/b.md:3: link missing.md names docs/missing.md' \
            'docs/b.md:3: path docs/nope.md names docs/nope.md'; do
            if ! grep -qF "$want" <<<"$out"; then
                printf 'check_docs self-test: expected "%s" in:\n%s\n' "$want" "$out" >&2
                status=1
            fi
        done
    fi
    ((status == 0)) && echo "ok: check_docs refuses every bad reference and accepts good ones"
    return "$status"
}

case ${1:-} in
    --self-test) self_test ;;
    --root)
        check "${2:?usage: check_docs.sh --root DIR}" || {
            printf '\ncheck_docs: the references above point outside the repository or to files it does not have\n' >&2
            exit 1
        }
        ;;
    '')
        root="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)" || {
            echo "check_docs: not in a git checkout: the tracked files cannot be listed" >&2
            exit 1
        }
        if check "$root"; then
            echo "ok: no reference outside the repository, every linked document exists"
        else
            printf '\ncheck_docs: the references above point outside the repository or to files it does not have\n' >&2
            exit 1
        fi
        ;;
    *)
        echo "usage: tests/check_docs.sh [--root DIR | --self-test]" >&2
        exit 2
        ;;
esac
