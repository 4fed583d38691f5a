"""Choosing widgets or text, and buttons that answer while a cell is busy (a real ipykernel)."""

from __future__ import annotations

import time

import pytest

from lora_magic.widgets import use_widgets


def test_the_environment_variable_forces_a_mode(monkeypatch):
    monkeypatch.setenv("LORA_MAGIC_WIDGETS", "on")
    assert use_widgets()
    monkeypatch.setenv("LORA_MAGIC_WIDGETS", "off")
    assert not use_widgets()


def test_plain_python_gets_text(monkeypatch):
    monkeypatch.delenv("LORA_MAGIC_WIDGETS", raising=False)
    assert not use_widgets()


@pytest.fixture
def kernel(monkeypatch):
    """An ipykernel of this Python, as a notebook server starts one."""
    from jupyter_client.manager import start_new_kernel

    monkeypatch.delenv("LORA_MAGIC_WIDGETS", raising=False)
    manager, client = start_new_kernel(kernel_name="python3")
    yield client
    client.stop_channels()
    manager.shutdown_kernel(now=True)


def execute(client, code: str, allow_stdin: bool = True, wait: bool = True) -> str:
    msg_id = client.execute(code, allow_stdin=allow_stdin)
    if not wait:
        return msg_id
    out = []
    while True:
        msg = client.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise AssertionError("\n".join(msg["content"]["traceback"]))
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out)


def test_a_notebook_frontend_gets_widgets_and_nbclient_gets_text(kernel):
    code = "from lora_magic.widgets import use_widgets; print(use_widgets())"
    assert execute(kernel, code, allow_stdin=True).strip() == "True"
    assert execute(kernel, code, allow_stdin=False).strip() == "False"  # nbclient executes so
    assert execute(kernel, "%config LoraMagics.widgets = 'off'\n" + code).strip() == "False"


def test_a_routed_button_is_clicked_while_the_cell_is_busy(kernel):
    setup = (
        "import threading, time, ipywidgets\n"
        "from lora_magic.widgets.frontend import route_to_subshell\n"
        "button = ipywidgets.Button()\n"
        "clicked = threading.Event()\n"
        "button.on_click(lambda _: clicked.set())\n"
        "print(route_to_subshell(button), button.comm.comm_id)\n"
    )
    routed, comm_id = execute(kernel, setup).split()
    if routed != "True":
        pytest.skip("this ipykernel cannot route comm messages to a subshell")
    busy = execute(kernel, "print('clicked' if clicked.wait(20) else 'not clicked')", wait=False)
    time.sleep(1)  # the cell above is running now
    click = {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}}
    kernel.shell_channel.send(kernel.session.msg("comm_msg", click))
    while True:
        msg = kernel.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == busy and msg["msg_type"] == "stream":
            assert msg["content"]["text"].strip() == "clicked"
            break
