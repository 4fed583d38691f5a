"""Where a CPU training run's peak memory goes, for float32, 8-bit and 4-bit bases of the built-in model.

    .venv/bin/python benchmarks/memory.py [--bases none,8bit,4bit] [--batch-size 8] [--steps 4]
        [--targets all-linear] [--r 16]

Each base is measured in a fresh process, in the order a run goes, by the process's resident set
(VmRSS) and its peak (VmHWM, reset on Linux by writing 5 to /proc/self/clear_refs):

- libraries: after importing lora_magic, torch, transformers, peft and trl (bitsandbytes with them);
- weights: the bytes of the loaded parameters and buffers (what quantisation shrinks);
- activations + logits: the peak of the first forward and backward pass of a batch (the
  bundled products, padded to the batch's longest) above the resident set before it;
- optimizer + gradients: the bytes of AdamW's two moments and the gradients of the LoRA weights
  after the first step (the resident set does not tell them apart: the C allocator keeps the
  activations' freed memory);
- loop peak: the peak over `--steps` steps of that hand-written loop;
- lora_magic peak: the peak a `lora_magic.train` run of the same settings reports (its own
  process, `--steps` steps, no eval split), for comparison with the loop's.

Prints a Markdown table in MB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

SCRIPT = r"""
import json, sys
from pathlib import Path

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

def reset():
    Path("/proc/self/clear_refs").write_text("5")

settings = json.loads(sys.argv[1])
mode = sys.argv[2]
import lora_magic as lm
import torch, transformers, peft, trl
from lora_magic.core.config import RunConfig
from lora_magic.data.prepare import prepare
from lora_magic.data.sources import bundled_dataset, load_records
from lora_magic.model.session import session
from lora_magic.model.targets import resolve_targets
config = RunConfig(
    model="smollm2-135m", quantization=settings["base"], targets=settings["targets"], r=settings["r"],
    batch_size=settings["batch_size"], steps=settings["steps"], eval_fraction=0.0,
    data=load_records(str(bundled_dataset()))[: settings["batch_size"] * settings["steps"]],
)
out = {"libraries": status("VmRSS")}
if mode == "lora_magic":
    import tempfile
    session().ensure_base(config)
    with tempfile.TemporaryDirectory() as runs:
        run = lm.train(config, runs_dir=runs).wait()
        assert run.status == "completed", run.error
        out["peak"] = max(e["peak_memory_mb"] for e in run.events if e["type"] == "log")
    print("RESULT " + json.dumps(out))
    sys.exit()
session().ensure_base(config)
model, tokenizer = session().model, session().tokenizer
out["weights"] = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
targets = resolve_targets(config, model)
session().add_training_adapter("memory", config, targets)
model = session().model
model.train()
prepared = prepare(config, tokenizer)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

def batch(index):
    rows = prepared.train[index * config.batch_size : (index + 1) * config.batch_size]
    longest = max(len(r["input_ids"]) for r in rows)
    pad = [longest - len(r["input_ids"]) for r in rows]
    return {
        "input_ids": torch.tensor([r["input_ids"] + [tokenizer.pad_token_id] * p for r, p in zip(rows, pad)]),
        "labels": torch.tensor([r["labels"] + [-100] * p for r, p in zip(rows, pad)]),
        "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * p for r, p in zip(rows, pad)]),
    }

out["adapter"] = status("VmRSS")
reset()
loss = model(**batch(0)).loss
loss.backward()
out["forward_backward_peak"] = status("VmHWM")
torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
optimizer.step()
state = [t for values in optimizer.state.values() for t in values.values() if torch.is_tensor(t)]
grads = [p.grad for p in model.parameters() if p.grad is not None]
out["optimizer"] = sum(t.numel() * t.element_size() for t in [*state, *grads]) / 2**20
optimizer.zero_grad(set_to_none=True)
for index in range(1, config.steps):
    model(**batch(index)).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
out["loop_peak"] = status("VmHWM")
print("RESULT " + json.dumps(out))
"""


def measure(settings: dict, mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(settings), mode], capture_output=True, text=True
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{settings} {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", default="none,8bit,4bit")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--targets", default="all-linear")
    parser.add_argument("--r", type=int, default=16)
    args = parser.parse_args()
    print(
        f"batch {args.batch_size}, {args.steps} steps, targets {args.targets}, r={args.r}; MB\n"
        "| base | libraries | weights | activations + logits | optimizer + gradients "
        "| loop peak | lora_magic peak | × loop |\n| --- | --- | --- | --- | --- | --- | --- | --- |",
        flush=True,
    )
    for base in args.bases.split(","):
        settings = {
            "base": base,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "targets": args.targets,
            "r": args.r,
        }
        loop, product = measure(settings, "loop"), measure(settings, "lora_magic")
        activations = loop["forward_backward_peak"] - loop["adapter"]
        print(
            f"| {base} | {loop['libraries']:.0f} | {loop['weights']:.0f} | {activations:.0f} "
            f"| {loop['optimizer']:.0f} | {loop['loop_peak']:.0f} | {product['peak']:.0f} "
            f"| {product['peak'] / loop['loop_peak']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
