"""Bad input that used to escape as tracebacks: unreadable data files, an unreachable Hub."""

import re
import time

import pytest

import lora_magic as lm
from lora_magic.data.sources import load_records

BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\xfd" * 64


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (".jsonl", r"is not a valid JSON Lines file: it is not UTF-8 text$"),
        (".json", r"is not a valid JSON file: it is not UTF-8 text$"),
        (".csv", r"is not a valid CSV file: it is not UTF-8 text$"),
        (".parquet", r"is not a valid Parquet file: .*(magic bytes|not a parquet file)"),
    ],
)
def test_a_binary_data_file_is_named_with_what_it_is_not(tmp_path, suffix, message):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(BINARY)
    with pytest.raises(lm.DataError, match=f"^{re.escape(str(path))} " + message):
        load_records(str(path))


def test_a_json_file_that_is_not_json_says_where(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[{"instruction": "a", ')
    with pytest.raises(
        lm.DataError, match=rf"^{path} is not a valid JSON file: Expecting .* at line 1, column 23$"
    ):
        load_records(str(path))


def test_an_unreachable_hub_fails_in_seconds_and_says_how_to_use_a_folder(records, runs_dir, monkeypatch):
    from huggingface_hub import constants
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401 (imported before timing)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: no network
    train = lm.train  # imports the engine before the clock starts
    start = time.perf_counter()
    with pytest.raises(lm.ModelError) as refused:
        train(model="someone/no-such-model", data=records, steps=2)
    assert time.perf_counter() - start < 10
    assert str(refused.value) == (
        "cannot download 'someone/no-such-model': the Hugging Face Hub cannot be reached (127.0.0.1: "
        "Connection refused). Use a local folder instead: download it where there is network "
        "(hf download someone/no-such-model --local-dir DIR) and pass model='DIR'"
    )
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_offline_mode_is_honoured_without_waiting(records, monkeypatch):
    from huggingface_hub import constants
    from transformers import AutoTokenizer  # noqa: F401 (imported before timing)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    preview = lm.preview
    start = time.perf_counter()
    with pytest.raises(lm.ModelError, match=r"cannot be reached \(offline mode is on \(HF_HUB_OFFLINE\)\)"):
        preview(model="someone/no-such-model", data=records)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("entry", ["train", "preview", "inspect_data"])
def test_a_misspelt_setting_is_a_config_error_with_a_suggestion_everywhere(entry, records):
    with pytest.raises(lm.ConfigError, match=r"^unknown setting 'stpes' \(did you mean 'steps'\?\)"):
        getattr(lm, entry)(data=records, stpes=3)


@pytest.mark.parametrize(
    ("data", "settings", "message"),
    [
        (
            [{"instruction": "a", "response": "b"}] * 20,
            {"eval_fraction": 0.99},
            r"^eval_fraction=0.99 of 20 rows holds out 20, leaving none to train on",
        ),
        (
            [{"instruction": "half of \udc80 a character", "response": "b"}],
            {},
            r"^row 0, field 'instruction' holds '\\udc80' at position 8, half of a character",
        ),
        ([{"instruction": "a", "response": "b", 3: "c"}], {}, r"^row 0 has a field named 3, not by text"),
        (
            [{"instruction": "a", "response": "b"}, {"instruction": "a", "response": {"x": [[[[1]]]]}}],
            {"eval_fraction": 0},
            r"^row 1, field 'response': expected text, got dict",
        ),
    ],
)
def test_data_that_libraries_would_choke_on_is_refused_naming_the_row(
    tiny_model_dir, runs_dir, data, settings, message
):
    with pytest.raises(lm.DataError, match=message):
        lm.train(model=tiny_model_dir, data=data, steps=1, **settings)
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_a_data_file_nested_too_deeply_is_refused(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"instruction": "a", "response": ' + "[" * 5000 + "]" * 5000 + "}\n")
    with pytest.raises(lm.DataError, match=r"deep.jsonl: its values are nested too deeply to read"):
        load_records(str(path))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("config", r"its config.json holds list, not a configuration"),
        ("model_type", r"its config.json has no model_type"),
        ("weights", r"could not load model .*: .*"),
    ],
)
def test_a_damaged_model_folder_is_a_model_error(tiny_model_dir, tmp_path, damage, message):
    import json
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    if damage == "config":
        (folder / "config.json").write_text("[]")
    elif damage == "model_type":
        (folder / "config.json").write_text(
            json.dumps({k: v for k, v in config.items() if k != "model_type"})
        )
    else:
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as by a broken copy
    with pytest.raises(lm.ModelError, match=message):
        lm.load_base(lm.RunConfig(model=str(folder)))


def test_a_rank_larger_than_the_layers_it_adapts_is_refused(tiny_model_dir, records, runs_dir):
    with pytest.raises(lm.ConfigError, match=r"^r=100000 is more than the 32 features of .*\.v_proj"):
        lm.train(model=tiny_model_dir, data=records, r=100000, steps=1)
    assert lm.session().adapters == {}
