"""A real IPython shell with the extension loaded, the tiny model as default and `df` defined."""

from __future__ import annotations

import pytest
from IPython.testing import globalipapp


@pytest.fixture
def ip(runs_dir, records, tiny_model_dir):
    import pandas as pd

    shell = globalipapp.get_ipython()  # the module rebinds the name after the first call
    shell.extension_manager.load_extension("lora_magic")
    shell.run_line_magic("config", f"LoraMagics.default_model = {tiny_model_dir!r}")
    shell.run_line_magic("config", "LoraMagics.widgets = 'off'")
    shell.run_line_magic("config", "LoraMagics.runs_dir = ''")
    shell.push({"df": pd.DataFrame(records)})
    yield shell
    shell.magics_manager.registry["LoraMagics"].last_config = None


@pytest.fixture
def lm(ip):
    """The LoraMagics instance of the shell."""
    return ip.magics_manager.registry["LoraMagics"]
