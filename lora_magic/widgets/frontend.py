"""Where the output goes: a widget frontend or plain text, and buttons that answer during a busy cell.

Widgets are used when the kernel is an ipykernel (ZMQInteractiveShell) whose current request
allows stdin. Notebook frontends (JupyterLab, Notebook 7, VS Code, Colab) allow stdin;
nbclient, nbconvert and papermill execute with allow_stdin=False and show no live widgets, so
they get text. `$LORA_MAGIC_WIDGETS` or `%config LoraMagics.widgets` ('on' / 'off' / 'auto')
overrides the guess, and `watch(..., widgets=True/False)` overrides both.

A widget's button click is a comm message on the kernel's shell channel, which waits while a cell
runs. Kernels with subshells (ipykernel >= 7) route a comm's messages to the subshell its reply
is bound to, so the dashboard's buttons are bound to one lora_magic subshell, a thread of its
own: Stop and Pause then work while `%%finetune` keeps the cell busy.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

ON, OFF = ("on", "1", "true", "yes"), ("off", "0", "false", "no")
_subshell: str | None = None
_subshell_lock = threading.Lock()


def _setting() -> str:
    value = os.environ.get("LORA_MAGIC_WIDGETS", "")
    shell = _shell()
    if not value and shell is not None:
        value = str(shell.config.get("LoraMagics", {}).get("widgets", ""))
    return value.strip().lower()


def _shell() -> Any:
    with contextlib.suppress(ImportError):
        from IPython import get_ipython

        return get_ipython()
    return None


def use_widgets() -> bool:
    """Whether this kernel has a frontend that renders live widgets (see the module docstring)."""
    setting = _setting()
    if setting in ON:
        return True
    if setting in OFF:
        return False
    shell = _shell()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    enable_colab_widgets()
    return bool(getattr(shell.kernel, "_allow_stdin", True))


def enable_colab_widgets() -> None:
    """Colab renders third-party widget state only with its custom widget manager turned on."""
    try:
        from google.colab import output
    except ImportError:
        return
    output.enable_custom_widget_manager()


def control_subshell() -> str | None:
    """The id of a kernel subshell for button clicks, created once; None if the kernel has none."""
    global _subshell
    shell = _shell()
    kernel = getattr(shell, "kernel", None)
    if kernel is None or getattr(kernel, "shell_channel_thread", None) is None:
        return None
    with _subshell_lock:
        if _subshell is None:
            _subshell = _create_subshell()
    return _subshell


def _create_subshell() -> str | None:
    """Ask this kernel for a subshell over its own control channel (Jupyter protocol 5.5)."""
    from ipykernel import get_connection_file
    from jupyter_client import BlockingKernelClient

    client = BlockingKernelClient(connection_file=get_connection_file())
    client.load_connection_file()
    client.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
    try:
        request = client.session.msg("create_subshell_request", {})
        client.control_channel.send(request)
        while True:
            reply = client.control_channel.get_msg(timeout=10)
            if reply["parent_header"].get("msg_id") == request["header"]["msg_id"]:
                return reply["content"].get("subshell_id")
    except Exception:  # no reply or refused: the buttons then answer once the cell is done
        return None
    finally:
        client.stop_channels()


def route_to_subshell(widget: Any) -> bool:
    """Have `widget`'s clicks handled in the control subshell; False where the kernel can't."""
    comm = getattr(widget, "comm", None)
    if comm is None or not hasattr(comm, "_reply_subshell_for"):
        return False
    subshell = control_subshell()
    if subshell is None:
        return False
    comm._reply_subshell_for = lambda data, default: subshell
    return True
