#!/usr/bin/env python3
"""Check the Grafana dashboard's PromQL: offline as promtool rules, or live against Prometheus.

Grafana cannot run here, so this stands in for it (stdlib only):

    # deploy-check: structure, then every expression as a recording rule for `promtool check rules`
    python3 deploy/check-dashboard.py deploy/grafana/dashboards/attnserve.json --rules > rules.json
    # container-test: every expression against a live Prometheus' /api/v1/query
    python3 deploy/check-dashboard.py deploy/grafana/dashboards/attnserve.json http://127.0.0.1:9090

Grafana's variables are replaced as Grafana would ($model set to "All" = .*, $__rate_interval
to 1m); the variables' own queries, label_values(metric, label), go to /api/v1/label/<label>/values.
Live mode prints one line per expression (ok / EMPTY, number of series) and exits 1 if any query
fails, 2 if some panel or variable has no data at all (nothing scraped yet: retry), else 0.
"""

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

DATASOURCE_UID = "prometheus"  # deploy/grafana/provisioning/datasources/prometheus.yml
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$model": ".*"}


def load_dashboard(path: str) -> dict:
    """The dashboard JSON, after checks that Grafana would otherwise only show as broken panels."""
    with open(path) as f:
        dashboard = json.load(f)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == DATASOURCE_UID, f"{panel['title']}: datasource uid"
        assert panel["targets"], f"{panel['title']}: no queries"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']}: empty expr"
            assert target["datasource"]["uid"] == DATASOURCE_UID, f"{panel['title']}: datasource"
    return dashboard


def substitute(expr: str) -> str:
    # Longest names first: $__rate_interval must not be read as $__interval.
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"a Grafana variable this script does not know: {expr}"
    return expr


def as_promtool_rules(dashboard: dict) -> dict:
    """Every expression as a recording rule: `promtool check rules` then parses each, offline."""
    rules = [
        {
            "record": f"dashboard:panel{panel['id']}:{target['refId']}",
            "expr": substitute(target["expr"]),
        }
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
    return {"groups": [{"name": "dashboard", "rules": rules}]}


def prometheus_get(base_url: str, path: str, params: dict[str, str]) -> dict:
    url = f"{base_url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:  # a bad query: 400 with a JSON body naming the error
        return json.load(e)


def check_live(dashboard: dict, base_url: str) -> int:
    failed, without_data = False, []

    for variable in dashboard.get("templating", {}).get("list", []):
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable.get("definition", ""))
        if match:
            metric, label = match.groups()
            answer = prometheus_get(base_url, f"/api/v1/label/{label}/values", {"match[]": metric})
            failed |= answer.get("status") != "success"
            values = answer.get("data") or []
            print(
                f"{'ok   ' if values else 'EMPTY'} ${variable['name']}: {variable['definition']} = {values}"
            )
            if not values:
                without_data.append(f"variable ${variable['name']}")

    for panel in dashboard["panels"]:
        num_with_data = 0
        for target in panel["targets"]:
            answer = prometheus_get(
                base_url, "/api/v1/query", {"query": substitute(target["expr"])}
            )
            if answer.get("status") != "success":
                failed = True
                print(f"FAIL  [{panel['title']}] {target['expr']}\n      {answer.get('error')}")
                continue
            series = answer["data"]["result"]
            num_with_data += bool(series)
            nan = " (all NaN)" if series and all(s["value"][1] == "NaN" for s in series) else ""
            status = "ok   " if series else "EMPTY"
            print(f"{status} [{panel['title']}] {len(series)} series{nan}: {target['expr']}")
        if num_with_data == 0:
            without_data.append(f"panel {panel['title']!r}")

    if failed:
        print("some dashboard queries failed")
        return 1
    if without_data:
        print("no data yet for: " + ", ".join(without_data))
        return 2
    print("every dashboard query succeeded and every panel has data")
    return 0


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 1
    dashboard = load_dashboard(sys.argv[1])
    if sys.argv[2] == "--rules":
        print(json.dumps(as_promtool_rules(dashboard), indent=1))
        return 0
    return check_live(dashboard, sys.argv[2].rstrip("/"))


if __name__ == "__main__":
    sys.exit(main())
