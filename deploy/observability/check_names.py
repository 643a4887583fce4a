#!/usr/bin/env python3
"""Checks deploy/observability against the metrics the binaries really export (run by check.sh).

- The metric names and label names are read from the sources that declare them:
  control-plane/server/src/metrics.rs and worker-agent/src/metrics.rs (registry prefix, constant
  labels, each metric's name and variable labels; histograms also give _bucket, _sum, _count).
- Every PromQL expression of alerts.yml, of the series of alerts.test.yml and of the Grafana
  dashboard may only name those metrics (and Prometheus's own `up`), only put known labels in its
  selectors and `by`/`on` lists, only call known PromQL functions, and only compare `state`,
  `outcome`, `verdict` or `kind` to values that appear as string literals in the Rust sources.
- The dashboard is valid JSON; every panel has a unique id and a gridPos, every panel that is not
  a row has a Prometheus datasource (`${DS_PROMETHEUS}`) and targets that have it too; the
  `DS_PROMETHEUS` and `zone` template variables exist.
- The Grafana provisioning files exist and name the dashboard directory and a Prometheus data
  source.

Standard library only. Exit status 0 when everything holds; else 1, with one line per problem.
"""

import argparse
import json
import os
import re
import sys

SOURCES = ["control-plane/server/src/metrics.rs", "worker-agent/src/metrics.rs"]
# Series Prometheus adds itself (scrape health).
BUILTIN = {"up": {"job", "instance"}}
TARGET_LABELS = {"job", "instance"}
# Labels whose values are fixed strings of the code: compared values must exist there.
VALUE_CHECKED = {"state", "outcome", "verdict", "kind"}

AGGREGATORS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "atan2", "inf", "nan",
}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters",
    "double_exponential_smoothing", "hour", "idelta", "increase", "irate", "label_join",
    "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate",
    "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sort_by_label",
    "sort_by_label_desc", "sqrt", "time", "timestamp", "vector", "year", "avg_over_time",
    "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
    "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time",
    "mad_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin",
    "sinh", "tan", "tanh", "deg", "rad", "pi", "start", "end",
}

IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
NUMBER = re.compile(r"(0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)[a-zA-Z0-9]*")
MATCHER = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*")


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, what):
        item = f"{where}: {what}"
        if item not in self.items:
            self.items.append(item)


# --- the metrics, from the Rust sources ----------------------------------------------------------

def skip_string(text, i):
    """i at the opening quote of a Rust or PromQL string literal; returns the index after it."""
    quote = text[i]
    i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    raise ValueError("unterminated string")


def string_literals(text):
    return set(re.findall(r'"((?:[^"\\]|\\.)*)"', text))


CONSTRUCTOR = re.compile(
    r"\b(HistogramOpts::new|Opts::new|IntGauge::new|IntCounter::new|Gauge::new|Counter::new"
    r"|gauge|counter|histogram)\(\s*\"([a-z_][a-z0-9_]*)\""
)


def parse_metrics(path, problems):
    """{full metric name: set of label names} of one metrics.rs."""
    text = open(path, encoding="utf-8").read()
    # Comments out (a `//` inside a string literal would be cut too: metrics.rs has none there).
    code = re.sub(r"//[^\n]*", "", text)
    m = re.search(r"Registry::new_custom\(\s*Some\(\s*\"([a-z_][a-z0-9_]*)\"", code)
    if not m:
        problems.add(path, "no Registry::new_custom(Some(\"prefix\"...)) found: cannot read the prefix")
        return {}
    prefix = m.group(1)
    const_labels = set()
    end = code.find(".expect(", m.end())
    for c in re.finditer(r"\(\s*\"([a-zA-Z_][a-zA-Z0-9_]*)\"\s*\.to_owned\(\)", code[m.end():end]):
        const_labels.add(c.group(1))
    metrics = {}
    for c in CONSTRUCTOR.finditer(code):
        kind, name = c.group(1), c.group(2)
        rest = code[c.end():]
        # Variable labels: a `&[...]` literal before the statement's `.expect(` (helpers take them
        # as their last argument, *Vec::new as its second).
        labels_at = rest.find("&[")
        expect_at = rest.find(".expect(")
        labels = set()
        if labels_at != -1 and (expect_at == -1 or labels_at < expect_at):
            close = rest.find("]", labels_at)
            labels = set(re.findall(r"\"([a-zA-Z_][a-zA-Z0-9_]*)\"", rest[labels_at:close]))
        full = f"{prefix}_{name}"
        all_labels = labels | const_labels | TARGET_LABELS
        if full in metrics:
            problems.add(path, f"metric {full} declared twice")
        metrics[full] = all_labels
        if kind in ("HistogramOpts::new", "histogram"):
            metrics[full + "_bucket"] = all_labels | {"le"}
            metrics[full + "_sum"] = all_labels
            metrics[full + "_count"] = all_labels
    if len([n for n in metrics if not n.endswith(("_bucket", "_sum", "_count"))]) < 5:
        problems.add(path, f"only {len(metrics)} metrics found: has the way metrics are declared changed?")
    return metrics


# --- PromQL ----------------------------------------------------------------------------------------

def analyse(expr):
    """(selectors, functions, grouping labels) of a PromQL expression.

    selectors: list of (metric name or None, [(label, op, value)]).
    Grafana variables ($zone, $__rate_interval, ...) may stand in strings and ranges.
    """
    selectors, functions, grouping = [], [], []
    i, n = 0, len(expr)
    last_metric = None  # index into selectors of a metric name just read (its {...} follows)
    while i < n:
        ch = expr[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "#":
            while i < n and expr[i] != "\n":
                i += 1
            continue
        if ch in "\"'`":
            i = skip_string(expr, i)
            last_metric = None
            continue
        if ch == "[":
            close = expr.index("]", i)
            i = close + 1
            last_metric = None
            continue
        if ch == "{":
            matchers = []
            i += 1
            while True:
                while i < n and (expr[i].isspace() or expr[i] == ","):
                    i += 1
                if i < n and expr[i] == "}":
                    i += 1
                    break
                m = MATCHER.match(expr, i)
                if not m or m.end() >= n or expr[m.end()] not in "\"'`":
                    raise ValueError(f"cannot read the label matchers at {expr[i:i + 30]!r}")
                end = skip_string(expr, m.end())
                matchers.append((m.group(1), m.group(2), expr[m.end() + 1:end - 1]))
                i = end
            if last_metric is not None:
                selectors[last_metric][1].extend(matchers)
            else:
                selectors.append((None, matchers))
            last_metric = None
            continue
        if ch == "$":  # a Grafana variable outside a string or range
            m = re.compile(r"\$\{?[a-zA-Z0-9_]+\}?").match(expr, i)
            i = m.end() if m else i + 1
            continue
        m = NUMBER.match(expr, i) if (ch.isdigit() or ch == ".") else None
        if m:
            i = m.end()
            last_metric = None
            continue
        m = IDENT.match(expr, i)
        if m:
            word = m.group(0)
            i = m.end()
            j = i
            while j < n and expr[j].isspace():
                j += 1
            follows_paren = j < n and expr[j] == "("
            if word in GROUPING:
                if follows_paren:
                    close = expr.index(")", j)
                    grouping.extend(l.strip() for l in expr[j + 1:close].split(",") if l.strip())
                    i = close + 1
            elif word in KEYWORDS:
                pass
            elif word in AGGREGATORS or follows_paren:
                functions.append(word)
            else:
                selectors.append((word, []))
                last_metric = len(selectors) - 1
                continue
            last_metric = None
            continue
        i += 1  # an operator or a parenthesis
        last_metric = None
    return selectors, functions, grouping


def check_expr(where, expr, metrics, literals, problems):
    try:
        selectors, functions, grouping = analyse(expr)
    except ValueError as e:
        problems.add(where, f"cannot read the expression ({e}): {expr.strip()}")
        return
    if not selectors:
        problems.add(where, f"selects no metric: {expr.strip()}")
    known_labels = set()
    for name, matchers in selectors:
        if name is None:
            problems.add(where, "a selector without a metric name ({...} alone): name the metric")
            continue
        if name not in metrics:
            problems.add(where, f"unknown metric {name} (not declared in {' or '.join(SOURCES)})")
            continue
        known_labels |= metrics[name]
        for label, op, value in matchers:
            if label == "__name__":
                continue
            if label not in metrics[name]:
                problems.add(where, f"{name} has no label {label} (labels: {', '.join(sorted(metrics[name]))})")
            if label in VALUE_CHECKED and op in ("=", "!=") and "$" not in value and value not in literals:
                problems.add(where, f"{name}{{{label}{op}\"{value}\"}}: no such {label} in the Rust sources")
    for f in functions:
        if f not in FUNCTIONS and f not in AGGREGATORS:
            problems.add(where, f"unknown PromQL function {f}()")
    for label in grouping:
        if known_labels and label not in known_labels:
            problems.add(where, f"groups by {label}, a label none of its metrics has")


# --- the files -----------------------------------------------------------------------------------

def rule_exprs(path, problems):
    """[(name, expr)] of a rules file written as alerts.yml is (`expr: |` blocks or one line)."""
    lines = open(path, encoding="utf-8").read().split("\n")
    out, rules, name = [], 0, None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*-\s*(alert|record):\s*(\S+)", line)
        if m:
            rules += 1
            name = m.group(2)
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if m:
            indent, value = len(m.group(1)), m.group(2).strip()
            if value in ("|", "|-", ">", ">-"):
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i])
                    i += 1
                out.append((name, "\n".join(block)))
                continue
            out.append((name, value.strip("'\"")))
        i += 1
    if rules != len(out):
        problems.add(path, f"{rules} rules but {len(out)} expr read: write each expr as `expr: |` and a block")
    return out


def test_series(path):
    text = open(path, encoding="utf-8").read()
    return [m.group(1) for m in re.finditer(r"series:\s*'([^']*)'", text)] + [
        m.group(1) for m in re.finditer(r'series:\s*"((?:[^"\\]|\\.)*)"', text)
    ]


def check_dashboard(path, metrics, literals, problems):
    try:
        dash = json.load(open(path, encoding="utf-8"))
    except (OSError, ValueError) as e:
        problems.add(path, f"not valid JSON: {e}")
        return 0
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds_var = variables.get("DS_PROMETHEUS")
    if not ds_var or ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
        problems.add(path, "no template variable DS_PROMETHEUS of type datasource (prometheus)")
    zone = variables.get("zone")
    if not zone:
        problems.add(path, "no template variable zone")
    else:
        q = zone.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_]+)\s*\)\s*", q or "")
        if not m:
            problems.add(path, f"variable zone: expected label_values(metric, zone), got {q!r}")
        elif m.group(1) not in metrics:
            problems.add(path, f"variable zone: unknown metric {m.group(1)}")
        elif m.group(2) not in metrics[m.group(1)]:
            problems.add(path, f"variable zone: {m.group(1)} has no label {m.group(2)}")
    if "schemaVersion" not in dash:
        problems.add(path, "no schemaVersion")

    def all_panels(panels):
        for p in panels:
            yield p
            yield from all_panels(p.get("panels", []))

    seen, count = {}, 0
    for p in all_panels(dash.get("panels", [])):
        count += 1
        title = p.get("title", "?")
        where = f"{path}: panel {p.get('id')} {title!r}"
        pid = p.get("id")
        if not isinstance(pid, int):
            problems.add(where, "no integer id")
        elif pid in seen:
            problems.add(where, f"id {pid} also used by panel {seen[pid]!r}")
        else:
            seen[pid] = title
        if "gridPos" not in p:
            problems.add(where, "no gridPos")
        if p.get("type") == "row":
            continue
        ds = p.get("datasource")
        if not isinstance(ds, dict) or ds.get("type") != "prometheus" or ds.get("uid") != "${DS_PROMETHEUS}":
            problems.add(where, f"datasource must be {{type: prometheus, uid: ${{DS_PROMETHEUS}}}}, is {ds!r}")
        targets = p.get("targets") or []
        if not targets:
            problems.add(where, "no targets")
        for t in targets:
            tds = t.get("datasource")
            if tds is not None and tds != ds:
                problems.add(where, f"target {t.get('refId')}: datasource {tds!r} differs from the panel's")
            if not t.get("expr", "").strip():
                problems.add(where, f"target {t.get('refId')}: no expr")
                continue
            check_expr(f"{where} target {t.get('refId')}", t["expr"], metrics, literals, problems)
    if count == 0:
        problems.add(path, "no panels")
    return count


def check_provisioning(grafana_dir, problems):
    prov = os.path.join(grafana_dir, "provisioning")
    ds = os.path.join(prov, "datasources", "strata.yml")
    dashboards = os.path.join(prov, "dashboards", "strata.yml")
    for path, needles in (
        (ds, ["apiVersion: 1", "datasources:", "type: prometheus"]),
        (dashboards, ["apiVersion: 1", "providers:", "type: file", "path:"]),
    ):
        if not os.path.isfile(path):
            problems.add(path, "missing")
            continue
        text = open(path, encoding="utf-8").read()
        for needle in needles:
            if needle not in text:
                problems.add(path, f"has no `{needle}`")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", required=True, help="deploy/observability (or a copy)")
    parser.add_argument("--root", required=True, help="repository root (the Rust sources)")
    args = parser.parse_args()
    problems = Problems()

    metrics = dict(BUILTIN)
    for rel in SOURCES:
        path = os.path.join(args.root, rel)
        if not os.path.isfile(path):
            problems.add(path, "missing")
            continue
        metrics.update(parse_metrics(path, problems))
    literals = set()
    for sub in ("control-plane", "worker-agent"):
        for base, _, files in os.walk(os.path.join(args.root, sub)):
            for f in files:
                if f.endswith(".rs"):
                    literals |= string_literals(open(os.path.join(base, f), encoding="utf-8").read())

    alerts = os.path.join(args.dir, "alerts.yml")
    exprs = rule_exprs(alerts, problems)
    for name, expr in exprs:
        check_expr(f"{alerts}: {name}", expr, metrics, literals, problems)
    tests = os.path.join(args.dir, "alerts.test.yml")
    series = test_series(tests)
    for s in series:
        check_expr(f"{tests}: series {s}", s, metrics, literals, problems)
    dashboard = os.path.join(args.dir, "grafana", "strata-dashboard.json")
    panels = check_dashboard(dashboard, metrics, literals, problems)
    check_provisioning(os.path.join(args.dir, "grafana"), problems)

    if problems.items:
        for p in problems.items:
            print(f"  {p}")
        print(f"{len(problems.items)} problem(s)")
        return 1
    names = sorted(n for n in metrics if not n.endswith(("_bucket", "_sum", "_count")))
    print(f"ok: {len(names)} metrics declared in the sources; {len(exprs)} rules, {len(series)} test "
          f"series and {panels} dashboard panels use only those, with known labels and functions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
