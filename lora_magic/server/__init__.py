"""Jupyter Server extension: the run store over REST, for the JupyterLab runs sidebar.

Enabled on install through `jupyter-config/server-config/lora_magic.json`. Every kernel the
server starts inherits `LORA_MAGIC_RUNS`, so runs started from any notebook land in one store
that the sidebar shows: `$LORA_MAGIC_RUNS` if set, else `lora_runs/` in the server's root folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.store import RunStore
from .handlers import handlers


def runs_root(serverapp) -> Path:
    configured = os.environ.get("LORA_MAGIC_RUNS")
    return Path(configured) if configured else Path(serverapp.root_dir).expanduser() / "lora_runs"


def _load_jupyter_server_extension(serverapp) -> None:
    root = runs_root(serverapp).resolve()
    os.environ["LORA_MAGIC_RUNS"] = str(root)
    web_app = serverapp.web_app
    web_app.settings["lora_magic_store"] = RunStore(root)
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.log.info("lora_magic: serving runs from %s", root)
