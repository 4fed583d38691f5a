"""`lm.evaluate` / `%lora eval`: runs and their base scored on the same held-out prompts.

Runs that share a base are scored on one loaded model; the base model's results are computed once
(model/scoring.py). Each run's results go to its evaluation.json.
"""

from __future__ import annotations

from typing import Any

from ..core.config import Base, RunConfig, describe_source
from ..core.errors import DataError, RunError
from ..core.record import config_to_load
from ..core.store import RunStore
from ..data.sources import load_records
from ..model.answering import check_batch_size
from ..model.scoring import Evaluation, answer_budget, examples_for, save, score
from ..model.session import BASE, session

# The settings that make the prompts: runs evaluated together must agree on them.
TEMPLATE_SETTINGS = (
    "template",
    "instruction_field",
    "input_field",
    "response_field",
    "prompt_format",
    "response_format",
    "system_prompt",
)


def evaluate(
    *runs: str,
    data: Any = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    runs_dir: Any = None,
    trust_remote_code: bool = False,
) -> Evaluation:
    """Score the base model and each run's adapter on held-out prompts and save the results in
    each run's folder. `data`: records in the runs' template (default: the first run's eval
    split); `limit`: the first N of them; `max_new_tokens`: default the longest reference + 16;
    `batch_size`: prompts answered at once at most (default: what the memory left allows);
    `trust_remote_code`: allows runs trained with it to load their model's code."""
    if not runs:
        raise RunError("name at least one run to evaluate")
    if limit is not None and limit < 1:
        raise DataError(f"limit={limit!r} is not valid; it must be at least 1")
    check_batch_size(batch_size)
    store = RunStore(runs_dir)
    configs = {name: _adapter_config(store, name, trust_remote_code) for name in runs}
    first = configs[runs[0]]
    for name, config in configs.items():
        if _template(config) != _template(first):
            raise RunError(
                f"runs {runs[0]!r} and {name!r} were trained with different templates, so the same prompts "
                "cannot be put to both; evaluate them separately"
            )
    source = data if data is not None else store.path(runs[0]) / "data" / "eval.jsonl"
    if data is None and not _has_rows(source):
        raise DataError(
            f"run {runs[0]!r} held no data out for evaluation (eval_fraction 0 and no eval_data); "
            "pass the prompts and references: --data FILE_OR_VARIABLE"
        )
    shared = session()
    shared.refuse_while_leased("evaluate")
    groups: dict[Base, list[str]] = {}  # runs that share a base are scored on one loaded model
    for name, config in configs.items():
        groups.setdefault(Base.of(config), []).append(name)
    results: dict[str, tuple[dict[str, float], list[str]]] = {}
    base_of: dict[str, str] = {}  # each run's base, by the name it has in the results
    for key, names in groups.items():
        shared.ensure_base(configs[names[0]])
        for name in names:
            if name not in shared.adapters:
                shared.load_adapter(name, runs_dir=runs_dir, trust_remote_code=trust_remote_code)
        examples = examples_for(load_records(source), first, shared.tokenizer, limit)
        max_new_tokens = max_new_tokens or answer_budget(examples, shared.tokenizer)
        base = BASE if len(groups) == 1 else f"{BASE} ({key.model}, {key.quantization})"
        with shared.leased("an evaluation is running"):
            scored = score(names, examples, first, max_new_tokens, batch_size)
        results[base] = scored.pop(BASE)
        results.update(scored)
        base_of.update(dict.fromkeys(names, base))
    evaluation = Evaluation.of(
        describe_source(str(source) if data is None else data), max_new_tokens, examples, results
    )
    for name in runs:
        save(store, name, evaluation, [base_of[name], name])
    return evaluation


def _adapter_config(store: RunStore, name: str, trust_remote_code: bool) -> RunConfig:
    record = store.read(name)
    config = config_to_load(record, trust_remote_code)
    if not (store.path(name) / "adapter" / "adapter_config.json").is_file():
        raise RunError(
            f"run {name!r} has no saved adapter yet (it is {record['status']}); nothing to evaluate"
        )
    return config


def _has_rows(path: Any) -> bool:
    return path.is_file() and bool(path.read_text(encoding="utf-8").strip())


def _template(config: RunConfig) -> tuple:
    return tuple(getattr(config, name) for name in TEMPLATE_SETTINGS)
