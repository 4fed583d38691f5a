"""`python -m lora_magic.demo`: fine-tune the built-in model on the bundled product descriptions,
then answer a held-out prompt with the base model and with the fine-tuned adapter."""

from __future__ import annotations

import argparse

import lora_magic as lm
from lora_magic.core.events import COMPLETED, EVAL, LOG

PROMPT = "Create a detailed description for the following product: Zenith Desk Lamp, belonging to category: Lighting"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps (default 40)")
    parser.add_argument("--quantization", default="none", choices=["none", "8bit", "4bit"])
    parser.add_argument("--runs-dir", default=None, help="run store (default ./lora_runs)")
    args = parser.parse_args()

    records = lm.load_records(lm.bundled_dataset())
    print(
        f"Fine-tuning smollm2-135m ({args.quantization}) on {len(records)} product descriptions, {args.steps} steps"
    )
    run = lm.train(
        model="smollm2-135m",
        quantization=args.quantization,
        data=records,
        eval_fraction=0.05,
        steps=args.steps,
        learning_rate=1e-3,
        targets="all-linear",  # learns the format in far fewer steps than q/v alone
        runs_dir=args.runs_dir,
    )
    run.subscribe(_print_progress)
    run.wait()
    if run.status != COMPLETED:
        raise SystemExit(f"run {run.name} {run.status}: {run.error}")
    print(f"\nAdapter saved in {run.adapter_path}\n")
    print(lm.compare(PROMPT, max_new_tokens=80))


def _print_progress(event: dict) -> None:
    if event["type"] == LOG and (event["step"] % 5 == 0 or event["step"] == event["total_steps"]):
        print(
            f"step {event['step']}/{event['total_steps']}  loss {event['loss']:.3f}  "
            f"{event['tokens_per_second']:.0f} tokens/s  eta {event['eta']:.0f}s",
            flush=True,
        )
    elif event["type"] == EVAL:
        print(f"step {event['step']}  eval loss {event['eval_loss']:.3f}", flush=True)


if __name__ == "__main__":
    main()
