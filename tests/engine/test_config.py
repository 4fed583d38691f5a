import pytest

from lora_magic.core.config import RunConfig, coerce, fields_by_section
from lora_magic.core.errors import ConfigError


def test_every_setting_has_help_and_a_section():
    sections = fields_by_section()
    assert set(sections) == {"run", "model", "data", "lora", "train", "probes"}
    for fields in sections.values():
        for f in fields:
            assert f.metadata["help"].strip(), f.name


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"quantization": "3bit"}, r"quantization='3bit' is not valid; choose one of: none, 8bit, 4bit"),
        ({"template": "alpacca"}, r"did you mean 'alpaca'"),
        ({"r": 0}, r"r=0 is not valid; it must be a whole number of at least 1"),
        ({"learning_rate": 3.0}, r"learning_rate=3.0 .* between 0 and 1"),
        ({"eval_fraction": 1.0}, r"eval_fraction=1.0"),
        (
            {"targets": ""},
            r"targets=\[\] is not valid; it must be one of attention, attention-all, all-linear",
        ),
        ({"template": "custom"}, r"template='custom' needs prompt_format and response_format"),
        ({"name": "../escape"}, r"not a valid run name"),
        ({"probes": [1, 2]}, r"probes=\[1, 2\] is not valid; it must be a list of prompt strings"),
        ({"launch": "slurm"}, r"launch='slurm' is not valid; choose one of: kernel, process, accelerate"),
        ({"processes": 2}, r"processes=2 needs launch='accelerate'"),
        (
            {"launch": "accelerate", "processes": 3, "batch_size": 4},
            r"batch_size=4 cannot be split between processes=3",
        ),
    ],
)
def test_bad_values_name_the_setting_and_what_is_valid(settings, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**settings)


def test_unknown_setting_suggests_the_close_one():
    with pytest.raises(
        ConfigError, match=r"unknown setting 'lerning_rate' \(did you mean 'learning_rate'\?\)"
    ):
        RunConfig.from_dict({"lerning_rate": 1e-4})


def test_text_values_are_coerced_to_the_field_type():
    config = RunConfig.from_dict({"r": "16", "learning_rate": "1e-4", "train_on_prompt": "yes", "epochs": 2})
    assert (config.r, config.learning_rate, config.train_on_prompt, config.epochs) == (16, 1e-4, True, 2.0)
    with pytest.raises(ConfigError, match=r"r='many' is not valid; it must be a whole number"):
        coerce("r", "many")


def test_targets_accept_a_preset_or_a_comma_separated_list():
    assert RunConfig(targets="all-linear").targets == "all-linear"
    assert RunConfig(targets="q_proj, v_proj,o_proj").targets == ["q_proj", "v_proj", "o_proj"]


def test_to_dict_describes_in_memory_data_and_round_trips():
    config = RunConfig(data=[{"instruction": "a", "response": "b"}], r=4)
    saved = config.to_dict()
    assert saved["data"] == "<list: 1 rows>"
    restored = RunConfig.from_dict({k: v for k, v in saved.items() if k != "data"})
    assert restored.r == 4 and restored.to_dict() | {"data": None} == saved | {"data": None}


def test_a_batch_that_the_launched_processes_cannot_share_is_refused(monkeypatch):
    from lora_magic.core import recipe
    from lora_magic.core.hardware import Machine

    on = Machine("CPU", 8.0, gpu=False)
    arguments = dict(output_dir="out", train_examples=40, eval_examples=0)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as accelerate launch / torchrun set it
    assert (
        recipe.trainer_arguments(RunConfig(batch_size=4), on, **arguments)["per_device_train_batch_size"] == 2
    )
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"batch_size=4 cannot be split between 3 processes"):
        recipe.trainer_arguments(RunConfig(batch_size=4), on, **arguments)


def test_sampling_settings_are_checked_once_with_what_is_valid():
    from lora_magic.core.config import Sampling

    assert Sampling().generate_arguments() == {"max_new_tokens": 96, "top_k": None, "do_sample": False}
    sampled = Sampling(max_new_tokens=8, temperature=0.7, top_p=0.9).generate_arguments()
    assert sampled["do_sample"] and sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9
    for bad, message in [
        (
            {"max_new_tokens": 10**9},
            r"max_new_tokens=1000000000 is not valid; it must be a whole number from 1 to 4096",
        ),
        ({"max_new_tokens": 0}, r"max_new_tokens=0 is not valid"),
        ({"temperature": -1}, r"temperature=-1 is not valid; it must be a number from 0 \(greedy\) to 10"),
        ({"top_p": 0}, r"top_p=0 is not valid; it must be more than 0 and at most 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Sampling(**bad)
    with pytest.raises(ConfigError, match=r"probe_tokens=5000 is not valid; it must be at most 4096"):
        RunConfig(probe_tokens=5000)


def test_the_settings_that_identify_a_base_and_those_that_changed():
    from lora_magic.core.config import BASE_SETTINGS, Base, changed_settings

    config = RunConfig(model="some/model", quantization="4bit")
    assert Base.of(config) == Base("some/model", "4bit", "auto", "auto", False)
    assert BASE_SETTINGS == ("model", "quantization", "dtype", "device", "trust_remote_code")
    stored = config.to_dict()
    assert changed_settings(stored, config.replace(data=[{"a": "b"}])) == []  # the run's data is its own
    assert changed_settings(stored, config.replace(r=16)) == ["r: 8 then, 16 now"]
    del stored["method"]  # a run of an older version: the setting it predates has its default
    assert changed_settings(stored, config) == []
