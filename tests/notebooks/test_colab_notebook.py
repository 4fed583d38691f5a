"""examples/colab.ipynb needs a GPU and the Hub, so it is not run here; it is checked instead: valid
nbformat, valid Python, and every magic in it parsed by the magic's own parser into valid settings."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
from IPython.core.inputtransformer2 import TransformerManager
from IPython.testing import globalipapp

from lora_magic.core.config import RunConfig
from lora_magic.magics import LoraMagics
from lora_magic.magics.options import config_values, parse, read_body, split
from lora_magic.magics.registry import lookup

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "colab.ipynb"


def magic_calls(source: str) -> list[tuple[str, list[str]]]:
    """The magics of a cell as IPython runs them: (name, [line] or [line, body])."""
    tree = ast.parse(TransformerManager().transform_cell(source))  # a SyntaxError fails the test
    return [
        (node.args[0].value, [arg.value for arg in node.args[1:]])
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("run_line_magic", "run_cell_magic")
    ]


def check(name: str, line: str, body: str | None = None) -> None:
    if name == "finetune":
        args = parse(LoraMagics.finetune.parser, split(line))
        RunConfig.from_dict({**read_body(body), **config_values(args)})
    elif name == "compare":
        parse(LoraMagics.compare.parser, split(line))
        assert body.strip(), "a %%compare cell needs a prompt"
    elif name == "lora":
        words = split(line)
        parse(lookup(words[0]).parser, words[1:])
    elif name == "config":
        owner, _, setting = line.partition("=")[0].strip().partition(".")
        assert owner == "LoraMagics" and setting in LoraMagics.class_traits(config=True), line
    else:
        assert globalipapp.get_ipython().find_magic(name), f"no magic %{name}"


def test_the_colab_notebook_is_valid_and_uses_only_real_magics_and_settings():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.accelerator == "GPU"
    calls = [call for cell in nb.cells if cell.cell_type == "code" for call in magic_calls(cell.source)]
    for name, arguments in calls:
        check(name, *arguments)
    used = [(name, arguments[0].split()[0] if name == "lora" else "") for name, arguments in calls]
    assert used[:3] == [("pip", ""), ("load_ext", ""), ("config", "")]
    for step in [("finetune", ""), ("compare", ""), ("lora", "merge")]:
        assert step in used
    model = calls[2][1][0].partition("=")[2].split("#")[0].strip().strip('"')
    assert model.count("/") == 1  # a Hub id, the default of every magic
    finetune = next(arguments for name, arguments in calls if name == "finetune")
    settings = read_body(finetune[1])
    assert settings["quantization"] == "4bit" and settings["device"] == "cuda"
    assert any("drive.mount(" in cell.source for cell in nb.cells)
