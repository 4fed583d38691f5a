"""Fixtures for the server extension tests: jupyter_server's own (jp_fetch & co), for this folder only."""

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403
from traitlets.config import Config

from lora_magic.core.store import RunStore


@pytest.fixture
def store(runs_dir):
    return RunStore(runs_dir)


@pytest.fixture
def jp_server_config(runs_dir):
    return Config({"ServerApp": {"jpserver_extensions": {"lora_magic": True}}})
