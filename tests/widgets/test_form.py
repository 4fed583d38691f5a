"""The configuration form: knobs generated from RunConfig, the live example, the cell round trip, Train."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import yaml

from lora_magic.core.config import RunConfig, field_names, fields_by_section
from lora_magic.widgets import ConfigForm
from lora_magic.widgets.form import TOOLTIP


@pytest.fixture
def namespace(records, tiny_model_dir):
    return {"df": pd.DataFrame(records), "rows": records, "count": 3, "_hidden": records, "words": ["a"]}


def form_for(namespace, tiny_model_dir, **settings) -> ConfigForm:
    return ConfigForm(namespace, RunConfig(model=tiny_model_dir, **settings))


def test_every_setting_has_a_knob_with_its_help(namespace, tiny_model_dir):
    form = form_for(namespace, tiny_model_dir)
    assert set(form.inputs) == set(field_names())
    assert [form.tabs.get_title(i) for i in range(len(form.tabs.children))] == list(fields_by_section())
    for field in dataclasses.fields(RunConfig):
        knob = form.inputs[field.name]
        assert getattr(knob, TOOLTIP) == field.metadata["help"]
        if field.metadata["choices"]:
            assert tuple(knob.options) == field.metadata["choices"]


def test_data_is_chosen_among_the_notebooks_data_variables(namespace, tiny_model_dir):
    form = form_for(namespace, tiny_model_dir)
    choices = [value for _, value in form.inputs["data"].options]
    assert choices == ["df", "rows", "a file path"]
    assert form.inputs["data"].value == "df"  # the first one, when the config names none
    assert form.config().data is namespace["df"]
    form.inputs["data"].value = "a file path"
    form.paths["data"].value = "/tmp/train.jsonl"
    assert form.config().data == "/tmp/train.jsonl"


def test_the_form_starts_from_a_given_config(namespace, tiny_model_dir):
    form = form_for(namespace, tiny_model_dir, data=namespace["rows"], r=16, probes=["a", "b"])
    assert form.inputs["data"].value == "rows"
    assert form.inputs["r"].value == 16
    assert form.inputs["probes"].value == "a\nb"
    assert form.config() == RunConfig(model=tiny_model_dir, data=namespace["rows"], r=16, probes=["a", "b"])


def test_copy_as_cell_round_trips_through_yaml(namespace, tiny_model_dir):
    form = form_for(namespace, tiny_model_dir)
    form.inputs["data"].value = "rows"
    form.inputs["r"].value = 16
    form.inputs["learning_rate"].value = 1e-3
    form.inputs["targets"].value = "q_proj, v_proj"
    form.inputs["scheduler"].value = "cosine"
    form.inputs["probes"].value = "Describe the red lamp.\nWhat is: a kettle?"
    form.inputs["max_examples"].value = "10"
    form.inputs["system_prompt"].value = "Be brief.\nBe kind."
    cell = form.to_cell()
    first, *lines = cell.splitlines()
    assert first == "%%finetune"
    assert r'system_prompt: "Be brief.\nBe kind."' in lines
    assert "data: rows" in lines and "r: 16" in lines and "scheduler: cosine" in lines
    assert not any(line.startswith(("alpha:", "epochs:", "name:")) for line in lines)  # defaults left out
    settings = yaml.safe_load("\n".join(lines))
    settings["data"] = namespace[settings["data"]]  # what %%finetune does with a variable name
    assert RunConfig.from_dict(settings) == form.config()
    form.copy_button.click()
    assert form.cell.value == cell and form.cell.layout.display is None


def test_example_is_rendered_live_with_its_token_count(namespace, tiny_model_dir):
    form = form_for(namespace, tiny_model_dir)
    assert "### Instruction:" in form.example.value and "tokens" in form.example.value
    form.inputs["prompt_format"].value = "Q: {instruction}\nA: "
    form.inputs["response_format"].value = "{response}"
    form.inputs["template"].value = "custom"
    assert "Q: Describe" in form.example.value
    assert "### Instruction:" not in form.example.value
    form.inputs["response_field"].value = "answer"
    form.inputs["template"].value = "alpaca"
    assert "no field &#x27;answer&#x27;" in form.example.value  # the data error is shown in place


def test_train_button_starts_the_engine(namespace, tiny_model_dir, runs_dir):
    form = form_for(namespace, tiny_model_dir, steps=2, eval_fraction=0.0)
    form.train_button.click()
    run = form.run
    assert run is not None and run.config.steps == 2
    run.wait(60)
    assert run.status == "completed" and run.adapter_path is not None
    assert run.config.data is namespace["df"]
