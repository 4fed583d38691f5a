"""Where a training step's time goes: lora_magic's trainer against the floor's loop, by kind of work.

    .venv/bin/python benchmarks/step_profile.py [--steps 4]

Both train the built-in model (float32) on the same batches of 4 bundled examples with the same
LoRA as benchmarks/floor.py (r=8, alpha 16, dropout 0.05, q/v). `lora_magic` is the trainer every
run uses (sft.LabelledLogitsSFTTrainer, with the recipe's arguments for this machine); `floor` is
the hand-written loop's step (`model(**batch).loss`, backward, clipping, AdamW), on the same
batches of the first examples in order. After one warm-up step each, torch's profiler (whose own
overhead is in the times) records `--steps` steps and the table splits their wall time into the
operators' own CPU time by kind; "outside operators" is the rest (Python, numpy, the trainer's own
work). Its shares are of each contender's own wall time. The matrix multiplications' rate (their
floating-point operations over their time) is set beside a bare `torch.mm` of the steps' most
frequent large shape, repeated: what this machine's float32 GEMM does with nothing around it.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import floor

KINDS = {  # profiler operator names -> kind
    "matrix multiplications": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
    "vocabulary softmax": ("aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss"),
    "dropout masks": ("aten::bernoulli_",),
}


def profile(step, steps: int) -> tuple[float, dict[str, float], float]:
    """Seconds per step, seconds per step by kind and the matrix multiplications' GFLOP/s, over
    `steps` calls of `step(i)`. The operations are counted in a second pass over the same steps,
    because recording the shapes that counting needs slows the other operators down."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    def kind_of(event) -> str:
        kind = next((k for k, names in KINDS.items() if any(event.key.startswith(n) for n in names)), None)
        return kind or "other operators"

    step(0)
    with torch_profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        for i in range(1, steps + 1):
            step(i)
        wall = time.perf_counter() - started
    by_kind = dict.fromkeys([*KINDS, "other operators"], 0.0)
    for event in profiler.key_averages():
        by_kind[kind_of(event)] += event.self_cpu_time_total / 1e6
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as counter:
        for i in range(1, steps + 1):
            step(i)
    matmul_flops = sum(e.flops for e in counter.key_averages() if kind_of(e) == "matrix multiplications")
    matmul_rate = matmul_flops / by_kind["matrix multiplications"] / 1e9
    by_kind = {kind: seconds / steps for kind, seconds in by_kind.items()}
    by_kind["outside operators"] = wall / steps - sum(by_kind.values())
    return wall / steps, by_kind, matmul_rate


def bare_matmul_rate(rows: int, inner: int, columns: int, repeats: int = 50) -> float:
    """GFLOP/s of torch.mm on a [rows, inner] x [inner, columns] float32 product, alone."""
    import torch

    a, b = torch.randn(rows, inner), torch.randn(inner, columns)
    torch.mm(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * rows * inner * columns * repeats / (time.perf_counter() - started) / 1e9


def batch_of(step: int, batch_size: int, examples: int) -> list[int]:
    """The examples of a step: the same for both contenders."""
    return [(step * batch_size + j) % examples for j in range(batch_size)]


def floor_step(train, tokenizer, batch_size: int):
    import torch
    from peft import get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(floor.load_plain_base(), floor.lora_config()).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

    def step(i: int) -> None:
        batch = floor.padded([train[k] for k in batch_of(i, batch_size, len(train))], tokenizer.pad_token_id)
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def lora_magic_step(config, train, tokenizer, output_dir: str):
    import datasets
    import torch
    from peft import get_peft_model
    from trl import SFTConfig

    from lora_magic.core import recipe
    from lora_magic.core.hardware import detect
    from lora_magic.training.sft import LabelledLogitsSFTTrainer

    torch.manual_seed(0)
    model = get_peft_model(floor.load_plain_base(), floor.lora_config())
    arguments = recipe.trainer_arguments(
        config, detect(config), output_dir=output_dir, train_examples=len(train), eval_examples=0
    )
    trainer = LabelledLogitsSFTTrainer(
        model=model,
        args=SFTConfig(**{**arguments, "eval_strategy": "no", "eval_on_start": False}),
        train_dataset=datasets.Dataset.from_list(train),
        processing_class=tokenizer,
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=len(train))
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # what train() sets before each step

    def step(i: int) -> None:
        rows = [trainer.train_dataset[k] for k in batch_of(i, config.batch_size, len(train))]
        trainer.training_step(model, trainer.data_collator(rows))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        trainer.optimizer.step()
        model.zero_grad(set_to_none=True)

    return step


def main() -> None:
    from transformers import AutoConfig

    from lora_magic.core.catalogue import builtin_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    config, tokenizer, prepared = floor.examples(40, 42)
    rows = {}
    with tempfile.TemporaryDirectory() as output_dir:
        rows["lora_magic"] = profile(
            lora_magic_step(config, prepared.train, tokenizer, output_dir), args.steps
        )
    rows["floor"] = profile(floor_step(prepared.train, tokenizer, config.batch_size), args.steps)
    print(
        f"\n| seconds per step ({args.steps} steps, batch {config.batch_size}) | " + " | ".join(rows) + " |"
    )
    print("| --- |" + " --- |" * len(rows))
    print("| wall | " + " | ".join(f"{wall:.3f}" for wall, _, _ in rows.values()) + " |")
    for kind in rows["floor"][1]:
        cells = [f"{by_kind[kind]:.3f} ({by_kind[kind] / wall:.0%})" for wall, by_kind, _ in rows.values()]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print(
        "| matrix multiplications, GFLOP/s | "
        + " | ".join(f"{rate:.0f}" for *_, rate in rows.values())
        + " |"
    )
    # the MLP's projections: the steps' most frequent large product
    tokens = config.batch_size * max(len(e["input_ids"]) for e in prepared.train[: config.batch_size])
    model_config = AutoConfig.from_pretrained(builtin_checkpoint(floor.MODEL))
    shape = (tokens, model_config.hidden_size, model_config.intermediate_size)
    print(
        "\nbare torch.mm [{}, {}] x [{}, {}], float32: ".format(*shape[:2], *shape[1:])
        + f"{bare_matmul_rate(*shape):.0f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
