"""lora_magic's training speed and memory against the floor: a minimal hand-written torch + PEFT loop.

    .venv/bin/python benchmarks/floor.py [--examples 40] [--rounds 5]
        [--contenders lora_magic,floor,trl] [--batch-size 4]

Every contender trains the built-in model (SmolLM2-135M-Instruct, float32) for one epoch on the
same tokenized examples: the first `--examples` bundled product descriptions, split and encoded by
`lora_magic.data.prepare` with the default settings (a 10 % eval split, the alpaca template, loss
on the response only). Same LoRA (r=8, alpha=16, dropout 0.05, q_proj/v_proj), batch size,
learning rate (2e-4, linear decay), AdamW, gradient clipping at 1.0 and float32.

Contenders (each run is a fresh subprocess, so that its peak memory is its own):

- `lora_magic`: `lora_magic.train(data=rows)` with the defaults, as a user gets it, with the live
  dashboard attached and pumped in the foreground (as `%%finetune` does). Its own eval split is
  evaluated as the defaults say.
- `floor`: a hand-written loop: PEFT's `get_peft_model`, examples shuffled, padded to the batch's
  longest, `model(**batch).loss`, backward, `clip_grad_norm_(1.0)`, `torch.optim.AdamW`.
- `trl`: TRL's `SFTTrainer(model, args=SFTConfig(...), train_dataset, peft_config=LoraConfig(...))`
  as its documentation shows it, given the same pre-tokenized examples, with the batch size,
  learning rate and epoch set to the others' and float32 without gradient checkpointing (TRL's
  own defaults turn on bf16 and gradient checkpointing; `trl-defaults` keeps them, adding only
  `use_cpu=True`, without which transformers refuses bf16 on a machine without a GPU).
- `lora_magic-wait`: the same run without the dashboard (`run.wait()`), as `lm.train` from a
  script: what the dashboard costs.
- `lora_magic+noeval`, `lora_magic-wait+noeval`: the same run without its evaluations (VARIANTS
  below; applied by replacing `trl.SFTConfig` in this process only).

The contenders alternate within each round (in a rotated order) and each round uses seed
`42 + round` for all of them, so machine-load drift and the shuffle's padding hit all alike.
Useful tokens/s = the train examples' tokens (no padding) / the wall time from the call that
starts training (the model already loaded) to the end of the epoch, set-up and evaluations
included. Peak memory = the process's peak resident set (VmHWM) from just before that call;
the model's loading is left out. Prints one line per run, then a Markdown table of medians; its
ratios to the floor are the medians of each round's ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m"

# Trainer-argument changes under test: `lora_magic+NAME` runs the default lora_magic run with these
# SFTConfig keywords replaced.
VARIANTS: dict[str, dict] = {
    "noeval": {"eval_strategy": "no", "eval_on_start": False},  # what evaluation costs the default run
}


# -- measuring --------------------------------------------------------------------------------------
def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")


class Clock:
    """Times the training steps and evaluations of a transformers Trainer in this process."""

    def __init__(self) -> None:
        self.first_step: float | None = None
        self.eval_seconds = 0.0
        self.evaluations = 0

    def install(self) -> None:
        from transformers import Trainer

        step, evaluate = Trainer.training_step, Trainer.evaluate
        clock = self

        def training_step(self, *args, **kwargs):
            if clock.first_step is None:
                clock.first_step = time.perf_counter()
            return step(self, *args, **kwargs)

        def timed_evaluate(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return evaluate(self, *args, **kwargs)
            finally:
                clock.eval_seconds += time.perf_counter() - started
                clock.evaluations += 1

        Trainer.training_step, Trainer.evaluate = training_step, timed_evaluate


def examples(count: int, seed: int):
    """(the RunConfig, the tokenizer, lora_magic's prepared split) for the first `count` rows."""
    from lora_magic.core.config import RunConfig
    from lora_magic.data.prepare import prepare
    from lora_magic.data.sources import bundled_dataset, load_records
    from lora_magic.data.tokens import load_tokenizer

    config = RunConfig(model=MODEL, data=load_records(str(bundled_dataset()))[:count], seed=seed)
    tokenizer = load_tokenizer(config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return config, tokenizer, prepare(config, tokenizer)


def load_plain_base():
    import torch
    from transformers import AutoModelForCausalLM

    from lora_magic.core.catalogue import builtin_checkpoint

    return AutoModelForCausalLM.from_pretrained(builtin_checkpoint(MODEL), dtype=torch.float32)


def lora_config():
    from peft import LoraConfig

    return LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=["q_proj", "v_proj"],
        bias="none",
        task_type="CAUSAL_LM",
    )


def batch_shape(train: list[dict], batch_size: int, seed: int) -> dict:
    """Shares of the positions of the floor's padded batches: padding, positions whose next token
    carries loss, and positions at which any example of the batch has such a label (what the CPU
    loss projects onto the vocabulary)."""
    import torch

    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    positions = padding = labelled = union = 0
    for start in range(0, len(order), batch_size):
        batch = [train[i]["labels"] for i in order[start : start + batch_size]]
        longest = max(map(len, batch))
        positions += len(batch) * (longest - 1)
        padding += sum(longest - len(labels) for labels in batch)
        scored = [{p for p, label in enumerate(labels[1:]) if label != -100} for labels in batch]
        labelled += sum(map(len, scored))
        union += len(batch) * len(set().union(*scored))
    return {"padding": padding / positions, "labelled": labelled / positions, "union": union / positions}


# -- the contenders ---------------------------------------------------------------------------------
def padded(batch: list[dict], pad_token_id: int) -> dict:
    """The floor's batch: examples padded on the right to the longest, as model(**batch) takes it."""
    import torch

    longest = max(len(e["input_ids"]) for e in batch)
    pad = [longest - len(e["input_ids"]) for e in batch]
    return {
        "input_ids": torch.tensor([e["input_ids"] + [pad_token_id] * p for e, p in zip(batch, pad)]),
        "labels": torch.tensor([e["labels"] + [-100] * p for e, p in zip(batch, pad)]),
        "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * p for e, p in zip(batch, pad)]),
    }


def run_floor(train: list[dict], tokenizer, batch_size: int, seed: int) -> dict:
    import torch
    from peft import get_peft_model

    model = load_plain_base()
    reset_peak()
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = get_peft_model(model, lora_config())
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    steps = math.ceil(len(train) / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    first_step, losses = None, []
    for start in range(0, len(order), batch_size):
        batch = padded([train[i] for i in order[start : start + batch_size]], tokenizer.pad_token_id)
        first_step = first_step or time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "setup": first_step - started, "loss": statistics.fmean(losses)}


def run_trl(train: list[dict], tokenizer, batch_size: int, seed: int, defaults: bool) -> dict:
    import datasets
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    clock = Clock()
    clock.install()
    model = load_plain_base()
    with tempfile.TemporaryDirectory() as out:
        # TRL's defaults: bf16 and gradient checkpointing; on a CPU bf16 is refused without use_cpu
        matched = {"use_cpu": True} if defaults else {"bf16": False, "gradient_checkpointing": False}
        reset_peak()
        started = time.perf_counter()
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(
                output_dir=out,
                per_device_train_batch_size=batch_size,
                learning_rate=2e-4,
                num_train_epochs=1,
                seed=seed,
                save_strategy="no",
                disable_tqdm=True,
                **matched,
            ),
            train_dataset=datasets.Dataset.from_list(train),
            processing_class=tokenizer,
            peft_config=lora_config(),
        )
        result = trainer.train()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "setup": clock.first_step - started, "loss": result.training_loss}


def apply_variant(overrides: dict) -> None:
    """Replace `trl.SFTConfig` in this process by one that applies `overrides`: lora_magic's trainer
    imports it when a run starts, so the run trains with the changed arguments."""
    import trl

    original = trl.SFTConfig
    trl.SFTConfig = lambda **arguments: original(**{**arguments, **overrides})


def run_lora_magic(config, prepared, seed: int, variant: str | None, dashboard: bool) -> dict:
    import lora_magic as lm
    from lora_magic.model.session import session
    from lora_magic.training import sft  # noqa: F401  TRL, imported before the clock as the others' libraries are
    from lora_magic.widgets import Dashboard
    from lora_magic.widgets.watch import pump

    clock = Clock()
    clock.install()
    if variant:
        apply_variant(VARIANTS[variant])
    session().ensure_base(config)  # the model is loaded before the clock starts, as for the others
    with tempfile.TemporaryDirectory() as runs_dir:
        reset_peak()
        started = time.perf_counter()
        run = lm.train(config, runs_dir=runs_dir)
        if dashboard:
            pump(run, Dashboard(run))
        else:
            run.wait()
        seconds = time.perf_counter() - started
        assert run.status == "completed", run.error
        assert run.total_steps == math.ceil(len(prepared.train) / config.batch_size)
    return {
        "seconds": seconds,
        "setup": clock.first_step - started,
        "loss": run.metrics["train_loss"],
        "eval_seconds": clock.eval_seconds,
        "evaluations": clock.evaluations,
    }


def one(contender: str, count: int, batch_size: int, seed: int) -> dict:
    import torch

    config, tokenizer, prepared = examples(count, seed)
    config = config.replace(batch_size=batch_size)
    if contender == "floor":
        result = run_floor(prepared.train, tokenizer, batch_size, seed)
    elif contender in ("trl", "trl-defaults"):
        result = run_trl(prepared.train, tokenizer, batch_size, seed, defaults=contender == "trl-defaults")
    else:
        base, _, variant = contender.partition("+")
        result = run_lora_magic(config, prepared, seed, variant or None, dashboard=base == "lora_magic")
    useful = sum(len(e["input_ids"]) for e in prepared.train)
    return {
        "contender": contender,
        "seed": seed,
        "examples": len(prepared.train),
        "useful_tokens": useful,
        "tokens_per_second": useful / result["seconds"],
        "peak_mb": rss_mb("VmHWM"),
        "threads": torch.get_num_threads(),
        **result,
    }


# -- the driver -------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=40, help="bundled rows (10 %% become the eval split)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--contenders", default="lora_magic,floor,trl")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one contender, print JSON
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    parser.add_argument("--log", help="also append each run's JSON line to this file")
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.examples, args.batch_size, args.seed)), flush=True)
        return
    contenders = args.contenders.split(",")
    for name in contenders:
        variant = name.partition("+")[2]
        if variant and variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    _, _, prepared = examples(args.examples, args.seed)
    shape = batch_shape(prepared.train, args.batch_size, args.seed)
    print(
        f"{len(prepared.train)} examples in batches of {args.batch_size}: {shape['padding']:.1%} of the "
        f"positions padding, {shape['labelled']:.1%} with a labelled next token, "
        f"{shape['union']:.1%} projected by the CPU loss",
        flush=True,
    )
    rows: dict[str, list[dict]] = {name: [] for name in contenders}
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    for round_ in range(args.rounds):
        shift = round_ % len(contenders)
        for name in contenders[shift:] + contenders[:shift]:
            command = [sys.executable, __file__, "--one", name, "--examples", str(args.examples)]
            command += ["--batch-size", str(args.batch_size), "--seed", str(42 + round_)]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                print(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}", flush=True)
                continue
            row = json.loads(lines[-1][len("RESULT ") :])
            rows[name].append(row)
            print(
                f"round {round_ + 1} {name:>22}: {row['tokens_per_second']:6.1f} useful tokens/s, "
                f"{row['seconds']:6.1f} s (set-up {row['setup']:.1f} s, eval {row.get('eval_seconds', 0):.1f} s), "
                f"peak {row['peak_mb']:.0f} MB, loss {row['loss']:.3f}",
                flush=True,
            )
            if args.log:
                with open(args.log, "a") as log:
                    log.write(json.dumps(row) + "\n")
    report(rows)


def report(rows: dict[str, list[dict]]) -> None:
    """Medians over the rounds; × floor is the median of each round's ratio to that round's floor
    run, which the machine's drift from round to round disturbs least."""

    def median(name: str, key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in rows[name])

    def ratio(name: str, key: str) -> float:
        floors = {r["seed"]: r[key] for r in rows.get("floor", [])}
        paired = [r[key] / floors[r["seed"]] for r in rows[name] if r["seed"] in floors]
        return statistics.median(paired) if paired else math.nan

    print(
        "\n| contender | runs | useful tokens/s | × floor | seconds | set-up s | eval s | peak MB | × floor |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in [name for name in rows if rows[name]]:
        print(
            f"| {name} | {len(rows[name])} | {median(name, 'tokens_per_second'):.1f} "
            f"| {ratio(name, 'tokens_per_second'):.2f} | {median(name, 'seconds'):.1f} "
            f"| {median(name, 'setup'):.1f} | {median(name, 'eval_seconds'):.1f} "
            f"| {median(name, 'peak_mb'):.0f} | {ratio(name, 'peak_mb'):.2f} |"
        )


if __name__ == "__main__":
    main()
