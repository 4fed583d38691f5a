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
