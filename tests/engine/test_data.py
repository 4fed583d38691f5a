import json

import pandas as pd
import pytest
from transformers import AutoTokenizer

from lora_magic.core.config import RunConfig
from lora_magic.core.errors import DataError
from lora_magic.data.prepare import prepare, preview
from lora_magic.data.sources import load_records, split_records
from lora_magic.data.templates import ALPACA_PREAMBLE, render
from lora_magic.data.tokens import encode


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_alpaca_template_is_the_source_format(tokenizer):
    record = {"instruction": "Describe the lamp.", "response": "A bright lamp."}
    prompt, completion = render(record, 0, RunConfig(), tokenizer)
    assert prompt == f"{ALPACA_PREAMBLE}\n\n### Instruction:\nDescribe the lamp.\n\n### Response:\n"
    assert completion == "A bright lamp.\n\n### End"
    with_input, _ = render({**record, "input": "It is red."}, 0, RunConfig(), tokenizer)
    assert "### Input:\nIt is red.\n\n### Response:" in with_input


def test_chat_template_uses_the_tokenizer_template_and_system_prompt(tokenizer):
    config = RunConfig(template="chat", system_prompt="Be brief.")
    prompt, completion = render({"instruction": "Hi?", "response": "Hello."}, 0, config, tokenizer)
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>") and prompt.endswith(
        "<|im_start|>assistant\n"
    )
    assert completion == "Hello.<|im_end|>"
    ids = encode(prompt, completion, tokenizer, config)["input_ids"]
    assert ids.count(tokenizer.eos_token_id) == 3  # system, user, assistant turns; no EOS added twice


def test_custom_template_fills_fields(tokenizer):
    config = RunConfig(template="custom", prompt_format="Q: {question}\nA: ", response_format="{answer}")
    assert render({"question": "2+2?", "answer": "4"}, 0, config, tokenizer) == ("Q: 2+2?\nA: ", "4")


def test_loss_is_on_the_response_only_and_ends_with_eos(tokenizer):
    config = RunConfig()
    prompt, completion = render({"instruction": "Say hi.", "response": "Hi."}, 0, config, tokenizer)
    example = encode(prompt, completion, tokenizer, config)
    prompt_len = len(tokenizer(prompt)["input_ids"])
    assert example["labels"][:prompt_len] == [-100] * prompt_len
    assert example["labels"][prompt_len:] == example["input_ids"][prompt_len:]
    assert example["input_ids"][-1] == tokenizer.eos_token_id
    everything = encode(prompt, completion, tokenizer, config.replace(train_on_prompt=True))
    assert everything["labels"] == everything["input_ids"]


def test_sources_all_give_the_same_records(tmp_path, records):
    from datasets import Dataset

    frame = pd.DataFrame(records)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "d.json").write_text(json.dumps(records))
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    sources = [
        records,
        frame,
        Dataset.from_list(records),
        *(str(tmp_path / f"d.{s}") for s in ("jsonl", "json", "csv", "parquet")),
    ]
    for source in sources:
        assert load_records(source) == records, type(source)


def test_eval_split_is_seeded_or_taken_from_the_datasetdict(records):
    from datasets import Dataset, DatasetDict

    train, evaluation = split_records(RunConfig(data=records, eval_fraction=0.25))
    assert (len(train), len(evaluation)) == (18, 6) and not {r["instruction"] for r in train} & {
        r["instruction"] for r in evaluation
    }
    assert split_records(RunConfig(data=records, eval_fraction=0.25)) == (train, evaluation)
    splits = DatasetDict(train=Dataset.from_list(records[:20]), test=Dataset.from_list(records[20:]))
    assert [len(s) for s in split_records(RunConfig(data=splits))] == [20, 4]
    assert len(split_records(RunConfig(data=records, max_examples=5))[0]) == 5


def test_max_examples_is_a_seeded_subset_of_the_training_rows(records):
    full, evaluation = split_records(RunConfig(data=records, eval_fraction=0.25))
    some, same_evaluation = split_records(RunConfig(data=records, eval_fraction=0.25, max_examples=5))
    assert same_evaluation == evaluation and len(some) == 5
    assert [r for r in full if r in some] == some and some != full[:5]  # drawn from all, kept in order
    assert split_records(RunConfig(data=records, eval_fraction=0.25, max_examples=5))[0] == some
    assert split_records(RunConfig(data=records, eval_fraction=0.25, max_examples=5, seed=1))[0] != some


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "the training data is empty"),
        (
            [{"instruction": "a", "response": "b"}, {"instruction": "c"}],
            r"row 1 has no field 'response'; its fields are: instruction",
        ),
        ([{"instruction": "a", "response": 3.5}], r"row 0, field 'response': expected text, got float 3.5"),
        ([{"instruction": "  ", "response": "b"}], r"row 0, field 'instruction' is empty"),
        (["just text"], r"row 0 is a str, not a record"),
        ({"a": 1}, r"data of type dict is not supported"),
        ("missing.jsonl", r"no data file at missing.jsonl"),
    ],
)
def test_bad_data_names_the_row_and_field(data, message, tokenizer):
    with pytest.raises(DataError, match=message):
        prepare(RunConfig(data=data, eval_fraction=0), tokenizer)


def test_broken_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "response": "b"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2 is not valid JSON"):
        load_records(str(path))


def test_prompt_filling_max_length_is_refused(tokenizer, records):
    with pytest.raises(DataError, match=r"row 0: the prompt alone fills max_length=8 tokens"):
        prepare(RunConfig(data=records, max_length=8), tokenizer)


def test_preview_shows_tokens_truncation_and_the_loss_mask(tokenizer, records):
    shown = preview(RunConfig(data=records, eval_fraction=0.25, max_length=48), n=2, tokenizer=tokenizer)
    assert (shown.count, shown.eval_count, len(shown.examples)) == (18, 6, 2)
    first = shown.examples[0]
    assert first.tokens > 48 and first.truncated and shown.truncated == 18
    trained = "".join(piece for piece, loss in first.pieces if loss)
    assert trained and trained in first.completion
    assert "⟦" in repr(shown) and "<mark>" in shown._repr_html_()
