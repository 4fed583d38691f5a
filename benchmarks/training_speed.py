"""Training and generation speed of the built-in model under different settings.

    .venv/bin/python benchmarks/training_speed.py [--steps 8] [--tokens 32]
        [--cases defaults,trl-defaults,8bit,4bit,dora,rslora]

Rows: lora_magic's CPU defaults (float32, no gradient checkpointing); TRL's SFTConfig defaults
(bf16 + gradient checkpointing); 8-bit LoRA; 4-bit QLoRA; the DoRA and rsLoRA variants of the
defaults. Batch 4 of the bundled product
descriptions (~90 tokens each). The first step is excluded (warm-up). After training, the
adapter answers one prompt greedily with the KV cache. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import lora_magic as lm
from lora_magic.data.sources import bundled_dataset, load_records

PROMPT = "Create a detailed description for the following product: Polar Kettle, belonging to category: Kitchen Appliance"
CASES = {  # name: (the table's label, the run's settings)
    "defaults": ("lora_magic CPU defaults (fp32, no checkpointing)", {}),
    "trl-defaults": (
        "TRL defaults (bf16 + gradient checkpointing)",
        {"precision": "bf16", "gradient_checkpointing": "on"},
    ),
    "8bit": ("8-bit base (LoRA)", {"quantization": "8bit"}),
    "4bit": ("4-bit base (QLoRA)", {"quantization": "4bit"}),
    "dora": ("DoRA (`dora: true`)", {"dora": True}),
    "rslora": ("rsLoRA (`rslora: true`)", {"rslora": True}),
}


def measure(steps: int, tokens: int, runs_dir: str, **settings) -> tuple[float, float, float]:
    """(seconds per step, training tokens/s, generated tokens/s)."""
    run = lm.train(
        model="smollm2-135m",
        data=load_records(str(bundled_dataset())),
        eval_fraction=0,
        steps=steps,
        batch_size=4,
        runs_dir=runs_dir,
        **settings,
    ).wait()
    logs = [e for e in run.events if e["type"] == "log"]
    per_step = (logs[-1]["elapsed"] - logs[0]["elapsed"]) / (len(logs) - 1)
    training_tokens = sum(e["tokens_per_second"] for e in logs[1:]) / (len(logs) - 1)
    answer = lm.compare(PROMPT, adapters=[run.name], max_new_tokens=tokens).answers[0]
    lm.free()
    return per_step, training_tokens, answer.tokens_per_second


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens generated after training")
    parser.add_argument("--cases", default=",".join(CASES), help=f"some of: {', '.join(CASES)}")
    args = parser.parse_args()
    cases = args.cases.split(",")
    if unknown := [case for case in cases if case not in CASES]:
        parser.error(f"unknown cases {', '.join(unknown)}; known: {', '.join(CASES)}")
    from lora_magic.core.hardware import device

    print(f"device: {device()}, {torch.get_num_threads()} threads")
    print("| setting | s/step | training tokens/s | generated tokens/s |\n| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as runs_dir:
        for label, settings in (CASES[case] for case in cases):
            per_step, training, generated = measure(args.steps, args.tokens, runs_dir, **settings)
            print(f"| {label} | {per_step:.2f} | {training:.0f} | {generated:.1f} |", flush=True)


if __name__ == "__main__":
    main()
