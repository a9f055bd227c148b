#!/usr/bin/env bash
# Build the real Dockerfile on this machine and check what users run:
#   1. the image alone: /ready, a translation, a stream, /metrics, the health check, and a clean
#      exit (0) on `docker stop` (SIGTERM drain); then a translation and a clean exit again with
#      ATTNSERVE_ENGINE_PROCESS=1 on a read-only root;
#   2. deploy/docker-compose.yml's attnserve and prometheus services: Prometheus scrapes the
#      server, and every PromQL expression of the Grafana dashboard runs against it (Grafana
#      itself has no package here, so it is not started).
#
# No registry is reachable here, so the images the Dockerfile and the compose file name are made
# locally and imported under those names (each once; later runs reuse them):
#   - python:3.11-slim-bookworm: mmdebstrap writes a Debian bookworm rootfs (python3, venv, and
#     this machine's CA certificates, which only this test image carries);
#   - prom/prometheus:<tag>: a bookworm rootfs with Debian's prometheus package, with the official
#     image's entrypoint, default arguments, user and working directory.
# Needs root and .venv (`make container-test` makes it first); installs docker.io and mmdebstrap;
# host networking, everything on 127.0.0.1. Stops what it started, dockerd included.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/lib.sh
BASE=python:3.11-slim-bookworm
IMAGE=attnserve  # the compose file's image
PROMETHEUS=$(sed -n 's/^ *image: *\(prom\/prometheus:.*\)$/\1/p' deploy/docker-compose.yml)
PORT=18765       # the single container; the compose services use 8000 and 9090
compose() { docker compose -f deploy/docker-compose.yml "$@"; }
step() { echo "== $* (at ${SECONDS}s)"; }

# --- tools, and the docker daemon (stopped again on exit if this script started it) ---------------
step "tools and dockerd"
apt_install docker.io mmdebstrap
install_compose_plugin
dockerd_pid=
cleanup() {
    docker rm -f attnserve-test >/dev/null 2>&1 || true
    compose down --volumes --timeout 40 >/dev/null 2>&1 || true
    docker image prune --force >/dev/null 2>&1 || true  # earlier builds of $IMAGE: disk fills up
    if [ -n "$dockerd_pid" ]; then kill "$dockerd_pid" && wait "$dockerd_pid" || true; fi
}
trap cleanup EXIT
if ! docker info >/dev/null 2>&1; then
    dockerd >/tmp/attnserve-dockerd.log 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi

# --- the local stand-ins for registry images ------------------------------------------------------
step "local base images"
# rootfs_image NAME [DOCKER-IMPORT-CHANGE...] -- [MMDEBSTRAP-OPTION...]: a bookworm rootfs as NAME.
rootfs_image() {
    local name=$1 changes=() tar
    shift
    while [ "$1" != -- ]; do changes+=(--change "$1"); shift; done
    shift
    docker image inspect "$name" >/dev/null 2>&1 && return 0
    echo "making $name with mmdebstrap"
    tar=$(mktemp --suffix=.tar)
    mmdebstrap --variant=minbase --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        "$@" bookworm "$tar" >/tmp/attnserve-mmdebstrap.log 2>&1 ||
        { tail -20 /tmp/attnserve-mmdebstrap.log; return 1; }
    docker import "${changes[@]}" "$tar" "$name" >/dev/null
    rm -f "$tar"
}
# The base also trusts the CAs this machine added (for pip inside `docker build`). mmdebstrap runs
# a hook with sh, the rootfs as "$1".
ca_hook='mkdir -p "$1/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null
    chroot "$1" update-ca-certificates'
rootfs_image "$BASE" -- --include=python3,python3-venv,ca-certificates --customize-hook="$ca_hook"
rootfs_image "$PROMETHEUS" \
    'ENTRYPOINT ["/bin/prometheus"]' \
    'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]' \
    'USER nobody' 'WORKDIR /prometheus' 'EXPOSE 9090' 'VOLUME ["/prometheus"]' \
    -- --include=prometheus \
    --customize-hook='mkdir -p "$1/prometheus" && chown nobody:nogroup "$1/prometheus"'
# Debian's package must be the version the compose file pins (prom/prometheus:vX.Y.Z).
version=$(docker run --rm --network none "$PROMETHEUS" --version 2>&1 | head -1)
echo "$PROMETHEUS: $version"
grep -q "version ${PROMETHEUS##*:v}" <<<"$version"

# --- build the image, with this machine's torch wheel in the build context ------------------------
step "docker build"
# (pip finds it through this machine's pip configuration; deploy/wheels/*.whl is git-ignored.)
.venv/bin/python -m pip download --quiet --no-deps --dest deploy/wheels torch==2.13.0 2>&1 |
    { grep -v 'is ignored: it is neither' || true; }
ls deploy/wheels/torch-2.13.0*.whl
docker build --network host -t "$IMAGE" . >/tmp/attnserve-build.log

# --- 1. the image alone ---------------------------------------------------------------------------
step "the image alone"
docker rm -f attnserve-test >/dev/null 2>&1 || true
docker run -d --name attnserve-test --network host \
    -e ATTNSERVE_HOST=127.0.0.1 -e ATTNSERVE_PORT="$PORT" "$IMAGE" >/dev/null
url="http://127.0.0.1:$PORT"
for _ in $(seq 120); do curl -sf "$url/ready" >/dev/null && break; sleep 1; done
curl -sf "$url/ready"
echo
answer=$(curl -sf "$url/v1/translate" -H 'content-type: application/json' \
    -d '{"text": "Open the file"}')
echo "$answer"
grep -q '"text":"Datei öffnen"' <<<"$answer"
# the decode-attention kernel was built in the image's build stage, and is used
info=$(curl -sf "$url/info")
grep -q '"decode_attention":"kernel"' <<<"$info" || { echo "no kernel in the image: $info"; exit 1; }
answer=$(curl -sfN "$url/v1/translate" -H 'content-type: application/json' \
    -d '{"text": "Save the document", "stream": true}')
echo "$answer" | grep -v '^$'
grep -q 'data: \[DONE\]' <<<"$answer"
# (into a variable first: `curl | grep -q` fails under pipefail when grep stops reading early)
metrics=$(curl -sf "$url/metrics")
grep -q '^attnserve_requests_total{model="en-de",route="/v1/translate",status="200"} 2.0' <<<"$metrics"
for _ in $(seq 30); do
    [ "$(docker inspect --format '{{.State.Health.Status}}' attnserve-test)" = healthy ] && break
    sleep 1
done
docker inspect --format 'health: {{.State.Health.Status}}, user: {{.Config.User}}' attnserve-test
[ "$(docker inspect --format '{{.State.Health.Status}}' attnserve-test)" = healthy ]
[ "$(docker inspect --format '{{.Config.User}}' attnserve-test)" = 10001 ]  # not root
docker stop -t 30 attnserve-test >/dev/null
code=$(docker inspect --format '{{.State.ExitCode}}' attnserve-test)
echo "exit code after docker stop: $code"
[ "$code" = 0 ]
docker rm attnserve-test >/dev/null

# --- 1b. the image with the engines in a process of their own, on a read-only root as the
# Kubernetes Deployment runs it (deploy/k8s/configmap.yaml has the option, commented) -------------
step "the image with --engine-process"
docker run -d --name attnserve-test --network host --read-only --tmpfs /tmp \
    -e ATTNSERVE_HOST=127.0.0.1 -e ATTNSERVE_PORT="$PORT" -e ATTNSERVE_ENGINE_PROCESS=1 \
    "$IMAGE" >/dev/null
for _ in $(seq 120); do curl -sf "$url/ready" >/dev/null && break; sleep 1; done
answer=$(curl -sf "$url/v1/translate" -H 'content-type: application/json' \
    -d '{"text": "Open the file"}')
echo "$answer"
grep -q '"text":"Datei öffnen"' <<<"$answer"
processes=$(docker top attnserve-test -o pid,args)
echo "$processes"
grep -q 'multiprocessing.spawn' <<<"$processes"  # the engine process
docker stop -t 30 attnserve-test >/dev/null
code=$(docker inspect --format '{{.State.ExitCode}}' attnserve-test)
echo "exit code after docker stop: $code"
[ "$code" = 0 ]
docker rm attnserve-test >/dev/null

# --- 2. docker compose: the server and Prometheus -------------------------------------------------
step "docker compose: attnserve and prometheus"
for port in 8000 9090; do  # curl exits 7 when nothing listens there
    rc=0; curl -s -o /dev/null "http://127.0.0.1:$port/" || rc=$?
    [ "$rc" = 7 ] || { echo "127.0.0.1:$port is in use; the compose services need it"; exit 1; }
done
compose up -d --no-build --pull never attnserve prometheus
for _ in $(seq 120); do curl -sf http://127.0.0.1:8000/ready >/dev/null && break; sleep 1; done
curl -sf http://127.0.0.1:8000/ready >/dev/null

# Traffic for every panel: beam search, a stream, the LM, and a 422 (the errors panel), twice,
# a scrape apart, so that rate() and histogram_quantile() have two different samples.
send_requests() {
    local api=http://127.0.0.1:8000 json='content-type: application/json'
    curl -sf "$api/v1/translate" -H "$json" -d '{"text": ["Open the file", "Print"]}' >/dev/null
    curl -sfN "$api/v1/translate" -H "$json" \
        -d '{"text": "Save the document", "stream": true}' >/dev/null
    curl -sf "$api/generate" -H "$json" -o /dev/null \
        -d '{"model": "en-lm", "inputs": "Click here to", "parameters": {"max_new_tokens": 8}}'
    curl -s -o /dev/null "$api/v1/translate" -H "$json" -d '{"text": "Open", "beam_size": 0}'
}
send_requests
sleep 6  # > scrape_interval (5 s)
send_requests

# prom_value EXPR: the first value of an instant query; nothing if there is none (or no answer yet).
prom_value() {
    curl -sf http://127.0.0.1:9090/api/v1/query --data-urlencode "query=$1" | python3 -c \
        'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' \
        2>/dev/null || true
}
for _ in $(seq 60); do
    [ "$(prom_value 'up{job="attnserve"}')" = 1 ] &&
        [ -n "$(prom_value 'sum(attnserve_requests_total{status="200"})')" ] && break
    sleep 1
done
echo "prometheus: target up = $(prom_value 'up{job="attnserve"}'), requests_total =" \
    "$(prom_value 'sum(attnserve_requests_total{status="200"})')"
[ "$(prom_value 'up{job="attnserve"}')" = 1 ]
[ -n "$(prom_value 'sum(attnserve_requests_total{status="200"})')" ]

# Every dashboard expression: 1 = a query failed (stop), 2 = a panel has no data yet (retry).
for _ in $(seq 12); do
    rc=0
    python3 deploy/check-dashboard.py deploy/grafana/dashboards/attnserve.json \
        http://127.0.0.1:9090 >/tmp/attnserve-dashboard.txt || rc=$?
    [ "$rc" = 2 ] || break
    sleep 5
done
cat /tmp/attnserve-dashboard.txt
[ "$rc" = 0 ]
compose down --volumes --timeout 40
echo "container test passed (${SECONDS}s)"
