"""reinf in Jupyter: the `%%ask` and `%reinf` magics (`%load_ext reinf.jupyter`) and the `/reinf/` page."""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    """Register `%%ask` and `%reinf`, and say what they are and whether a daemon is running."""
    from .magics import ReinfMagics, loaded_message

    magics = ReinfMagics(ipython)
    ipython.register_magics(magics)
    print(loaded_message(magics))


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "reinf.jupyter"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Serve the review queue and dashboard at `<base_url>reinf/`."""
    from .handlers import setup_handlers

    setup_handlers(serverapp.web_app)
    serverapp.log.info("reinf: review page at %sreinf/", serverapp.base_url)


# Jupyter Server before 2 looked for this name.
load_jupyter_server_extension = _load_jupyter_server_extension
