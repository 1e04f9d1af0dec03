# Shared install steps for scripts/serve and scripts/test. Sourced, not run.

find_python313() {
    if [ -n "${ORCH_PYTHON:-}" ]; then echo "$ORCH_PYTHON"; return; fi
    local root="${PYENV_ROOT:-$HOME/.pyenv}" candidate
    for candidate in "$root"/versions/3.13*/bin/python3 "$(command -v python3.13 || true)"; do
        if [ -x "$candidate" ]; then echo "$candidate"; return; fi
    done
    echo "error: Python 3.13 not found: install it with pyenv (pyenv install 3.13) or set ORCH_PYTHON" >&2
    return 1
}

# ensure_venv EXTRAS: .venv with the project installed editable; reinstalls only when pyproject.toml changes.
ensure_venv() {
    local extras="$1" python stamp want
    python=$(find_python313)
    if [ ! -x .venv/bin/python ]; then
        echo "==> creating .venv with $python"
        "$python" -m venv .venv
    fi
    stamp=.venv/.orch-installed
    want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "==> installing the project and its dependencies into .venv"
        # pip's output goes to a log, shown only when the install fails.
        if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]" >.venv/pip-install.log 2>&1; then
            grep -v '^WARNING: Location' .venv/pip-install.log >&2
            return 1
        fi
        echo "$want" > "$stamp"
    fi
}

apt_install() {
    echo "==> apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q "$@" >/dev/null
}

# ensure_sandbox_tools: what sandbox hosts need (orchestrator/sandbox): their image is this
# machine's root, so it must have what a cloud image has (sshd, python3, sudo), plus the
# namespace and network tools that make them.
ensure_sandbox_tools() {
    command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || apt_install openssh-server
    command -v unshare >/dev/null || apt_install util-linux
    command -v ip >/dev/null || apt_install iproute2
    [ -x /usr/bin/sudo ] || apt_install sudo
    [ -x /usr/bin/python3 ] || apt_install python3
}

# ensure_rabbitmq: the Debian broker, installed and running on 127.0.0.1:5672.
ensure_rabbitmq() {
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    if ! rabbitmqctl -q status >/dev/null 2>&1; then
        echo "==> starting rabbitmq-server"
        rabbitmq-server -detached
        local waited=0
        # -detached returns before the node registers with epmd, so poll until it answers.
        until rabbitmqctl -q status >/dev/null 2>&1; do
            waited=$((waited + 2))
            if [ "$waited" -ge 180 ]; then
                echo "error: rabbitmq-server did not start within 180 s; see /var/log/rabbitmq/" >&2
                return 1
            fi
            sleep 2
        done
    fi
}

# web_build_stale: true when web/dist is missing or older than any of the page's sources.
web_build_stale() {
    [ -f web/dist/index.html ] || return 0
    [ -n "$(find web/src web/public web/index.html web/package.json web/package-lock.json web/vite.config.* \
        -newer web/dist/index.html -print -quit 2>/dev/null)" ]
}

# Vite 8 needs Node 20.19 or later; Debian bookworm's nodejs is 18. An older node gets this
# one, the official build published on the npm registry, installed into .venv/node.
NODE_MIN_VERSION=20.19.0
NODE_PACKAGE_VERSION=20.20.2
NODE_LOCAL_BIN=.venv/node/node_modules/node-linux-$([ "$(uname -m)" = aarch64 ] && echo arm64 || echo x64)/bin

node_is_recent() {
    local have
    have=$(node --version 2>/dev/null) || return 1
    have=${have#v}
    [ "$(printf '%s\n%s\n' "$NODE_MIN_VERSION" "$have" | sort -V | head -n1)" = "$NODE_MIN_VERSION" ]
}

# ensure_node: node >= NODE_MIN_VERSION and npm on PATH (npm from the machine, or Debian's
# when missing and this is root); returns 1 when there is no npm to be had.
ensure_node() {
    [ ! -x "$NODE_LOCAL_BIN/node" ] || export PATH="$PWD/$NODE_LOCAL_BIN:$PATH"
    if ! command -v npm >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt_install nodejs npm || echo "warning: could not install nodejs and npm from Debian" >&2
    fi
    command -v npm >/dev/null || return 1
    node_is_recent && return 0
    local package="${NODE_LOCAL_BIN#.venv/node/node_modules/}"
    package="${package%/bin}@$NODE_PACKAGE_VERSION"
    echo "==> node $(node --version 2>/dev/null) is older than $NODE_MIN_VERSION: installing $package into .venv/node"
    if ! npm install --prefix .venv/node --no-save --no-audit --no-fund "$package" >.venv/node-install.log 2>&1; then
        tail -n 20 .venv/node-install.log >&2
        return 1
    fi
    export PATH="$PWD/$NODE_LOCAL_BIN:$PATH"
}

# ensure_web: the web page built into web/dist (npm ci && npm run build in web/) when it is
# missing or stale, with node and npm from the machine, or Debian's when missing. Without
# them the service still starts and says in one line that the page is not built.
ensure_web() {
    [ -f web/package.json ] || return 0
    web_build_stale || return 0
    if ! ensure_node; then
        echo "warning: node and npm not found: the API is served, the web page is not built" >&2
        return 0
    fi
    echo "==> building the web page in web/ (node $(node --version))"
    # npm's output goes to a log, shown only when the build fails.
    if ! (cd web && { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] \
            || npm ci --no-audit --no-fund; } && npm run build) >.venv/web-build.log 2>&1; then
        tail -n 40 .venv/web-build.log >&2
        echo "warning: the web page build failed (log: .venv/web-build.log): the API is served without it" >&2
    fi
}
