"""The data report and cleaning on the bundled products with known injected problems; the
length curriculum read from the batches the model was given."""

import base64
import itertools
import json
import re
import time

import pytest
from transformers import AutoTokenizer

import lora_magic as lm
from lora_magic.core.config import RunConfig
from lora_magic.core.errors import DataError
from lora_magic.core.store import RunStore
from lora_magic.data.prepare import prepare
from lora_magic.data.report import inspect_data
from lora_magic.data.sources import bundled_dataset
from lora_magic.widgets import Dashboard

MAX_LENGTH = 160  # the bundled rows have 83 to 89 tokens with the tiny tokenizer
CLEANING = {"dedup": "near", "min_response_tokens": 1, "drop_template_markers": True}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def products() -> list[dict]:
    return [json.loads(line) for line in bundled_dataset().read_text().splitlines()]


def trigrams(record: dict) -> set[str]:
    words = re.findall(r"\w+", f"{record['instruction']} {record['response']}".lower())
    return {" ".join(words[i : i + 3]) for i in range(len(words) - 2)}


def changed(record: dict, *swaps: tuple[str, str]) -> dict:
    response = record["response"]
    for old, new in swaps:
        assert old in response
        response = response.replace(old, new, 1)
    return {**record, "response": response}


def near_copy(record: dict) -> dict:
    """One word changed: 3 of about 45 word 3-grams differ, a similarity of about 0.87."""
    return changed(record, (" made for ", " built for "))


def far_copy(record: dict) -> dict:
    """Four words changed: a similarity of about 0.56, under the default threshold of 0.8."""
    swaps = [
        (" made for ", " built for "),
        (" combines ", " pairs "),
        (" so it ", " and it "),
        (" is a ", " is one "),
    ]
    return changed(record, *swaps)


@pytest.fixture(scope="module")
def injected() -> tuple[list[dict], dict[str, list[int]], dict]:
    """The 160 bundled products (no problem at the default settings) with problems put in at
    known rows. Returns the rows, the rows of each problem, and the stated near-duplicate."""
    base = products()
    near, far = near_copy(base[40]), far_copy(base[50])
    long_text = " ".join(f"detail{i}" for i in range(300))
    problems = {
        7: ("exact_duplicates", dict(base[3])),
        21: ("empty_responses", {"instruction": "Name a colour for the Aurora Lamp.", "response": ""}),
        33: (
            "template_markers",
            {"instruction": "Describe the Zenith Fan.", "response": "Quiet.\n\n### End\nIt folds."},
        ),
        58: ("near_duplicates", near),
        64: ("far_from_a_row", far),
        77: ("truncated", {"instruction": "List every detail of the Atlas Tent.", "response": long_text}),
        90: ("exact_duplicates", dict(base[60])),
        101: ("empty_responses", {"instruction": "Give the Orbit Fan a tagline.", "response": "   "}),
        115: ("short_responses", {"instruction": "Is the Comet Kettle cordless?", "response": "Yes."}),
        120: (
            "template_markers",
            {"instruction": "Describe the Delta Mug.", "response": "### Response: a mug for tea."},
        ),
        133: (
            "repeated_prompts",
            {
                "instruction": "Describe the Nimbus Umbrella.",
                "response": "Describe the Nimbus Umbrella. It keeps you dry.",
            },
        ),
        150: (
            "truncated",
            {"instruction": "Describe the Summit Stove.", "response": long_text.replace("detail", "part")},
        ),
    }
    rows, originals = [], iter(base)
    for row in range(len(base) + len(problems)):
        rows.append(problems[row][1] if row in problems else next(originals))
    expected: dict[str, list[int]] = {}
    for row, (kind, _) in problems.items():
        expected.setdefault(kind, []).append(row)
    stated = {"row": 58, "of": rows.index(base[40]), "similarity": similarity(near, base[40])}
    assert 0.85 < stated["similarity"] < 0.95 and 0.5 < similarity(far, base[50]) < 0.7  # as stated above
    return rows, expected, stated


def similarity(a: dict, b: dict) -> float:
    return len(trigrams(a) & trigrams(b)) / len(trigrams(a) | trigrams(b))


def test_the_report_counts_each_injected_problem_and_names_its_rows(injected, tokenizer):
    rows, expected, stated = injected
    report = inspect_data(data=rows, max_length=MAX_LENGTH, tokenizer=tokenizer)
    found = {name: finding.rows for name, finding in report.findings.items()}
    assert found == {
        "truncated": expected["truncated"],
        "nothing_to_learn": [],
        "exact_duplicates": expected["exact_duplicates"],
        "near_duplicates": [stated["row"]],  # and not the row at similarity 0.6
        "empty_responses": expected["empty_responses"],
        "short_responses": expected["short_responses"],
        "repeated_prompts": expected["repeated_prompts"],
        "template_markers": expected["template_markers"],
    }
    notes = {name: finding.notes for name, finding in report.findings.items()}
    assert notes["exact_duplicates"] == {7: "= row 3", 90: f"= row {rows.index(rows[90])}"}
    assert notes["near_duplicates"] == {stated["row"]: f"{stated['similarity']:.2f} like row {stated['of']}"}
    assert notes["template_markers"] == {33: "'### End' in response", 120: "'### Response:' in response"}
    assert all(int(note.split()[0]) > 300 for note in notes["truncated"].values())
    assert (
        report.rows == len(rows) and len(report.lengths) == len(rows) - 2
    )  # empty responses have no example
    assert "word 3-gram Jaccard ≥ 0.8" in report.findings["near_duplicates"].title
    assert report.padding["length"] < report.padding["shuffle"]
    assert 0.3 < report.loss_tokens / report.tokens < 0.7  # the response only
    everything = inspect_data(data=rows, max_length=MAX_LENGTH, train_on_prompt=True, tokenizer=tokenizer)
    assert everything.loss_tokens == everything.tokens
    assert report.cleaning is None  # no cleaning setting on


def test_the_threshold_and_the_short_response_limit_follow_the_settings(injected, tokenizer):
    rows, _, _ = injected
    base = products()
    pairs = [base[40], near_copy(base[40]), base[50], far_copy(base[50])]
    for threshold, flagged in ((0.95, []), (0.8, [1]), (0.5, [1, 3])):
        report = inspect_data(data=pairs, dedup_threshold=threshold, tokenizer=tokenizer)
        assert report.findings["near_duplicates"].rows == flagged, threshold
    longer = inspect_data(data=rows, max_length=MAX_LENGTH, min_response_tokens=40, tokenizer=tokenizer)
    assert len(longer.findings["short_responses"].rows) > 100  # most products answer in 30-40 tokens


def test_cleaning_removes_exactly_the_injected_rows_and_says_which(injected, tokenizer):
    rows, expected, stated = injected
    prepared = prepare(RunConfig(data=rows, max_length=MAX_LENGTH, eval_fraction=0.1, **CLEANING), tokenizer)
    dropped = {
        "short_responses": expected["empty_responses"],  # min_response_tokens=1: the empty ones only
        "template_markers": expected["template_markers"],
        "exact_duplicates": expected["exact_duplicates"],
        "near_duplicates": [stated["row"]],
    }
    assert prepared.cleaning == {"rows": len(rows), "kept": len(rows) - 7, "dropped": dropped}
    gone = {row for names in dropped.values() for row in names}
    kept = prepared.train_records + prepared.eval_records
    assert sorted(map(json.dumps, kept)) == sorted(json.dumps(r) for i, r in enumerate(rows) if i not in gone)
    report = inspect_data(data=rows, max_length=MAX_LENGTH, tokenizer=tokenizer, **CLEANING)
    assert report.cleaning == prepared.cleaning
    assert "Cleaning dropped 7 of 172 rows: 2 short_responses, 2 template_markers" in repr(report)


def test_default_settings_keep_every_row_and_refuse_an_empty_response(injected, tokenizer):
    rows, _, _ = injected
    clean_rows = [r for r in rows if r["response"].strip()]
    prepared = prepare(RunConfig(data=clean_rows, max_length=MAX_LENGTH, eval_fraction=0), tokenizer)
    assert prepared.train_records == clean_rows and prepared.cleaning == {
        "rows": len(clean_rows),
        "kept": len(clean_rows),
        "dropped": {},
    }
    with pytest.raises(DataError, match="row 21, field 'response' is empty"):
        prepare(RunConfig(data=rows, max_length=MAX_LENGTH, eval_fraction=0), tokenizer)


def test_the_report_renders_text_and_a_histogram_quickly(tokenizer):
    inspect_data(data=str(bundled_dataset()), tokenizer=tokenizer)._repr_html_()  # imports done once
    start = time.perf_counter()
    report = inspect_data(data=str(bundled_dataset()), tokenizer=tokenizer)
    page = report._repr_html_()
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"the report of the bundled data took {elapsed:.2f} s"
    picture = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page).group(1)
    assert base64.b64decode(picture).startswith(b"\x89PNG\r\n\x1a\n") and len(picture) > 5000
    text = repr(report)
    assert "160 rows of data" in text and "0 longer than max_length=512" in text
    assert "exact duplicates of an earlier row" in text and "near-duplicates" in text


def test_run_json_and_the_dashboard_list_what_cleaning_dropped(injected, tiny_model_dir, runs_dir):
    rows, expected, stated = injected
    run = lm.train(
        model=tiny_model_dir,
        data=rows,
        max_length=MAX_LENGTH,
        steps=2,
        batch_size=2,
        eval_fraction=0,
        name="cleaned",
        **CLEANING,
    ).wait()
    assert run.status == "completed"
    record = RunStore(runs_dir).read("cleaned")
    assert record["config"]["dedup"] == "near" and record["config"]["min_response_tokens"] == 1
    assert record["cleaning"]["dropped"] == {
        "short_responses": expected["empty_responses"],
        "template_markers": expected["template_markers"],
        "exact_duplicates": expected["exact_duplicates"],
        "near_duplicates": [stated["row"]],
    }
    saved = [json.loads(line) for line in (run.path / "data" / "train.jsonl").read_text().splitlines()]
    assert len(saved) == len(rows) - 7 and not any("### End" in r["response"] for r in saved)
    header = Dashboard(run).header.value
    assert (
        "cleaning dropped 7 of 172 rows: 2 short_responses, 2 template_markers, 2 exact_duplicates, 1 near_duplicates"
        in header
    )


def batches_seen(tiny_model_dir: str, records: list[dict], order: str) -> list[list[int]]:
    """The tokens of each example in each training batch, read where the model receives them."""
    config = RunConfig(model=tiny_model_dir, data=records, eval_fraction=0, batch_size=4, order=order)
    lm.session().ensure_base(config)
    seen: list[list[int]] = []
    padding = lm.session().tokenizer.pad_token_id

    def record(module, args, kwargs):  # a right-padded batch may come without its attention mask
        if module.training:
            seen.append((kwargs["input_ids"] != padding).sum(dim=1).tolist())

    hook = lm.session().base_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        assert lm.train(config).wait().status == "completed"
    finally:
        hook.remove()
    return seen


def test_length_order_trains_batches_short_to_long(tiny_model_dir, runs_dir):
    words = ["a", "quiet", "lamp", "that", "folds", "flat", "and", "glows", "warm", "on", "any", "desk"]
    records = [
        {"instruction": f"Describe lamp {i}.", "response": " ".join(words[: 1 + (7 * i) % len(words)])}
        for i in range(16)
    ]
    by_length = batches_seen(tiny_model_dir, records, "length")
    lengths = [n for batch in by_length for n in batch]
    assert len(by_length) == 4 and len(lengths) == 16
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    assert all(max(a) <= min(b) for a, b in itertools.pairwise(by_length))
    shuffled = [n for batch in batches_seen(tiny_model_dir, records, "shuffle") for n in batch]
    assert sorted(shuffled) == lengths and shuffled != lengths  # the default still shuffles
