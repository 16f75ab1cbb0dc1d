#!/usr/bin/env bash
# Checks everything in deploy/monitoring with Prometheus's own validator, promtool
# (Debian: `apt-get install prometheus`), and Python 3:
#   1. promtool check rules   rollway.rules.yml
#   2. promtool test rules    rollway.rules.test.yml   (each alert fires on the series that should
#                                                       fire it and not on a healthy one)
#   3. promtool check config  prometheus.yml           (on a copy, next to a placeholder token file)
#   4. grafana-dashboard.json: structure (uid, schemaVersion, app/environment variables, every panel
#      with a datasource and targets with an expr), then every PromQL expression in it, Grafana
#      variables substituted, parsed by promtool as recording rules.
#   5. Every rollway_* metric named in the rules and the dashboard is one the agent or the proxy
#      renders (crates/agent/src/metrics.rs, crates/proxy/src/metrics.rs), when those are present.
# Grafana itself is not run: see README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

command -v promtool >/dev/null || {
  echo "check.sh: promtool not found; on Debian or Ubuntu: apt-get install prometheus" >&2
  exit 1
}
command -v python3 >/dev/null || { echo "check.sh: python3 not found" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "==> promtool check rules rollway.rules.yml"
promtool check rules rollway.rules.yml

echo "==> promtool test rules rollway.rules.test.yml"
promtool test rules rollway.rules.test.yml

echo "==> promtool check config prometheus.yml"
# promtool wants the token file to exist; check a copy next to a placeholder.
cp prometheus.yml rollway.rules.yml "$work/"
printf 'placeholder\n' > "$work/rollway-viewer.token"
(cd "$work" && promtool check config prometheus.yml)

echo "==> grafana-dashboard.json"
python3 - "$here" "$work/dashboard.rules.yml" <<'PY'
import json, re, sys
from pathlib import Path

here, rules_out = Path(sys.argv[1]), Path(sys.argv[2])
errors = []
def fail(message):
    errors.append(message)

dash = json.loads((here / "grafana-dashboard.json").read_text())
for key in ("uid", "title", "schemaVersion", "panels", "templating", "time"):
    if key not in dash:
        fail(f"dashboard: no {key!r}")
if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
    fail(f"dashboard: schemaVersion {dash.get('schemaVersion')!r}, want an int >= 36")
if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", str(dash.get("uid", ""))):
    fail(f"dashboard: uid {dash.get('uid')!r} is not a valid Grafana uid")

variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
for name in ("app", "environment"):
    v = variables.get(name)
    if v is None:
        fail(f"templating: no variable {name!r}")
        continue
    definition = v.get("definition", "")
    query = v.get("query", {})
    query = query.get("query", "") if isinstance(query, dict) else query
    if v.get("type") != "query" or not definition.startswith("label_values(") or query != definition:
        fail(f"templating: {name!r} is not a label_values query variable")
if variables.get("datasource", {}).get("type") != "datasource":
    fail("templating: no datasource variable")

exprs = []  # (where, expr)
for v in variables.values():
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v.get("definition", ""))
    if v.get("type") == "query":
        if not m:
            fail(f"templating {v['name']!r}: cannot read {v.get('definition')!r}")
        else:
            exprs.append((f"variable {v['name']}", m.group(1)))
for a in dash.get("annotations", {}).get("list", []):
    if a.get("expr"):
        exprs.append((f"annotation {a.get('name')}", a["expr"]))

ids, titles = set(), []
def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))
for p in walk(dash.get("panels", [])):
    where = f"panel {p.get('id')} {p.get('title')!r}"
    if p.get("id") in ids:
        fail(f"{where}: duplicate id")
    ids.add(p.get("id"))
    g = p.get("gridPos", {})
    if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
        fail(f"{where}: bad gridPos {g}")
    if p.get("type") == "row":
        continue
    titles.append(p.get("title"))
    ds = p.get("datasource") or {}
    if ds.get("type") != "prometheus" or not ds.get("uid"):
        fail(f"{where}: no prometheus datasource")
    targets = p.get("targets") or []
    if not targets:
        fail(f"{where}: no targets")
    refids = [t.get("refId") for t in targets]
    if len(set(refids)) != len(refids) or None in refids:
        fail(f"{where}: refIds {refids}")
    for t in targets:
        if not t.get("expr", "").strip():
            fail(f"{where} target {t.get('refId')}: no expr")
        else:
            exprs.append((f"{where} target {t.get('refId')}", t["expr"]))

wanted = ["Request rate by release", "5xx share by release", "p99 latency by release",
          "Current release", "Instances up", "Deployments by outcome", "Analysis verdicts", "Backup age"]
for title in wanted:
    if title not in titles:
        fail(f"dashboard: no panel {title!r}")

# Grafana's variables, as Grafana would expand them, so that promtool parses plain PromQL.
substitutions = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                 "${app}": ".*", "${environment}": ".*", "$app": ".*", "$environment": ".*"}
lines = ["groups:", "  - name: grafana-dashboard", "    rules:"]
for n, (where, expr) in enumerate(exprs):
    for k, v in substitutions.items():
        expr = expr.replace(k, v)
    if "$" in expr:
        fail(f"{where}: unexpanded variable in {expr!r}")
    lines.append(f"      - record: dashboard:expr_{n}")
    lines.append(f"        expr: {json.dumps(expr)}")
rules_out.write_text("\n".join(lines) + "\n")

# Metric names against the renderers, when the repository is around this folder.
sources = [here / "../../crates/agent/src/metrics.rs", here / "../../crates/proxy/src/metrics.rs"]
if all(s.exists() for s in sources):
    rendered = set()
    for s in sources:
        rendered |= set(re.findall(r"rollway_[a-z0-9_]+", s.read_text()))
    text = "\n".join(e for _, e in exprs) + (here / "rollway.rules.yml").read_text() \
        + (here / "rollway.rules.test.yml").read_text()
    for name in sorted(set(re.findall(r"rollway_[a-z0-9_]+", text))):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in rendered and base not in rendered:
            fail(f"metric {name} is rendered by neither the agent nor the proxy")
    print(f"  metric names: all rendered by crates/agent or crates/proxy")
else:
    print("  metric names: not checked (crates/ not next to this folder)")

if errors:
    print("\n".join("  FAILED: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"  structure: SUCCESS ({len(titles)} panels, {len(exprs)} expressions)")
PY
echo "==> promtool check rules (the dashboard's expressions)"
promtool check rules "$work/dashboard.rules.yml"
echo "check.sh: all monitoring files pass"
