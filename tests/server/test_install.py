"""Where the server keeps its runs by default, and that installing the package enables both extensions."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from traitlets.config import Config

JUPYTER = [sys.executable, "-m", "jupyter"]


@pytest.fixture
def jp_server_config(monkeypatch):
    monkeypatch.setenv("LORA_MAGIC_RUNS", "")
    return Config({"ServerApp": {"jpserver_extensions": {"lora_magic": True}}})


async def test_default_store_is_in_the_root_folder_and_shared_with_kernels(jp_fetch, jp_root_dir):
    expected = (Path(jp_root_dir) / "lora_runs").resolve()
    reply = json.loads((await jp_fetch("lora-magic", "runs")).body)
    assert reply["root"] == str(expected)
    # Kernels started by this server inherit it, so every notebook's runs land in the same store.
    assert os.environ["LORA_MAGIC_RUNS"] == str(expected)


def jupyter(*args: str) -> str:
    done = subprocess.run([*JUPYTER, *args], capture_output=True, text=True, timeout=120, check=True)
    return re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # without colours


def test_the_installed_package_enables_the_server_extension():
    lines = [line.strip() for line in jupyter("server", "extension", "list").splitlines()]
    assert any(line.startswith("lora_magic") and "enabled" in line for line in lines)
    assert any(line.startswith("lora_magic") and line.endswith("OK") for line in lines)


def test_the_installed_package_enables_the_lab_extension():
    line = next(line for line in jupyter("labextension", "list").splitlines() if "lora_magic" in line)
    assert "enabled" in line and "OK" in line
