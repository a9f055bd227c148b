#!/usr/bin/env bash
# Build the real Dockerfile on this machine and check the running image: /ready, a translation,
# a stream, /metrics, the health check, and a clean exit (0) on `docker stop` (SIGTERM drain).
#
# No registry is reachable here, so the Dockerfile's base image is made locally: mmdebstrap
# writes a Debian bookworm rootfs (python3, venv, this machine's CA certificates, which only this
# test image carries) and `docker import` names it as the Dockerfile's FROM line expects.
# Needs root, docker.io and mmdebstrap (installed if missing); host networking on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=python:3.11-slim-bookworm
IMAGE=attnserve:test
PORT=${PORT:-18765}

command -v dockerd >/dev/null && command -v mmdebstrap >/dev/null ||
    apt-get install -y --no-install-recommends docker.io mmdebstrap >/dev/null
if ! docker info >/dev/null 2>&1; then
    dockerd >/tmp/attnserve-dockerd.log 2>&1 &
    for _ in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    tar=$(mktemp --suffix=.tar)
    mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates" && cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null; chroot "$1" update-ca-certificates' \
        bookworm "$tar" >/dev/null 2>&1
    docker import "$tar" "$BASE" >/dev/null
    rm -f "$tar"
fi
wheel=$(python3 -m pip download --no-deps --dest deploy/wheels torch==2.13.0 -q 2>/dev/null; ls deploy/wheels/torch-2.13.0*.whl | head -1)
echo "torch wheel: $wheel"
docker build --network host -t "$IMAGE" . >/tmp/attnserve-build.log
docker rm -f attnserve-test >/dev/null 2>&1 || true
docker run -d --name attnserve-test --network host \
    -e ATTNSERVE_HOST=127.0.0.1 -e ATTNSERVE_PORT="$PORT" "$IMAGE" >/dev/null
trap 'docker rm -f attnserve-test >/dev/null 2>&1 || true' EXIT
url="http://127.0.0.1:$PORT"
for _ in $(seq 120); do curl -sf "$url/ready" >/dev/null && break; sleep 1; done
curl -sf "$url/ready"
echo
curl -sf "$url/v1/translate" -H 'content-type: application/json' -d '{"text": "Open the file"}' |
    tee /dev/stderr | grep -q '"text":"Datei öffnen"'
curl -sfN "$url/v1/translate" -H 'content-type: application/json' \
    -d '{"text": "Save the document", "stream": true}' | tee /dev/stderr | grep -q 'data: \[DONE\]'
curl -sf "$url/metrics" | grep -q '^attnserve_requests_total{model="en-de",route="/v1/translate",status="200"} 2.0'
for _ in $(seq 30); do
    [ "$(docker inspect --format '{{.State.Health.Status}}' attnserve-test)" = healthy ] && break
    sleep 1
done
docker inspect --format 'health: {{.State.Health.Status}}, user: {{.Config.User}}' attnserve-test
[ "$(docker inspect --format '{{.State.Health.Status}}' attnserve-test)" = healthy ]
docker stop -t 30 attnserve-test >/dev/null
code=$(docker inspect --format '{{.State.ExitCode}}' attnserve-test)
echo "exit code after docker stop: $code"
[ "$code" = 0 ]
echo "container test passed"
