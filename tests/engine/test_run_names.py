"""Run names are PEFT adapter names too; the output head cannot carry a trainable adapter under TRL."""

import shutil

import pytest

import lora_magic as lm
from lora_magic.core.errors import ConfigError
from lora_magic.core.store import RunStore


def test_a_dotted_run_name_is_refused_before_anything_loads(runs_dir):
    with pytest.raises(
        ConfigError, match=r"name='v1\.2' is not a valid run name; use letters, digits, '_' and '-'"
    ):
        lm.RunConfig(name="v1.2")


def test_a_model_folder_with_dots_gets_a_usable_automatic_run_name(
    tiny_model_dir, records, tmp_path, runs_dir
):
    dotted = tmp_path / "tiny.llama-v0.1"
    shutil.copytree(tiny_model_dir, dotted)
    run = lm.train(model=str(dotted), data=records, steps=1, eval_fraction=0.0).wait()
    assert run.status == "completed", run.error
    assert run.name.startswith("tiny-llama-v0-1-") and run.adapter_path is not None


def test_an_adapter_on_the_output_head_is_refused_before_the_run_exists(tiny_model_dir, records, runs_dir):
    with pytest.raises(
        ConfigError, match=r"adapter on the output head \(lm_head\) cannot be trained.*include_lm_head"
    ):
        lm.train(model=tiny_model_dir, data=records, steps=1, targets="all-linear", include_lm_head=True)
    assert RunStore(runs_dir).names() == []
