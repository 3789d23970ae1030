#!/usr/bin/env bash
# What the JupyterLab end-to-end test needs on a fresh Debian machine. Idempotent, and quick when done already.
# Python packages come from the pyproject extras `jupyter` and `test` (the Makefile installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-.venv/bin/python}"

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "jupyter_setup: installing chromium from Debian"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

missing=$("$PY" -c "
import importlib.util as u
print(' '.join(m for m in ('jupyterlab', 'jupyter_server', 'ipykernel', 'ipywidgets', 'playwright') if not u.find_spec(m)))
")
if [ -n "$missing" ]; then
    echo "jupyter_setup: $missing missing; installing the jupyter and test extras"
    "$PY" -m pip install -q -e ".[jupyter,test]"
fi

# The widget frontend ships inside jupyterlab_widgets; without it the rating widget cannot render.
"$PY" - <<'PY'
import sys
from pathlib import Path

labext = Path(sys.prefix) / "share/jupyter/labextensions/@jupyter-widgets/jupyterlab-manager/package.json"
if not labext.exists():
    sys.exit(f"jupyter_setup: {labext} is missing; reinstall ipywidgets (pip install --force-reinstall jupyterlab_widgets)")
PY
