"""Generation speed of the built-in model: base, unmerged adapter, merged model, 1 and 4 adapters.

    .venv/bin/python benchmarks/generation.py [--tokens 64] [--repeats 5]

Greedy decoding with the KV cache of exactly `--tokens` new tokens for the alpaca prompt of a
held-out product, float32 on the CPU. Four LoRA adapters (r=8, q/v, B set to small random values
so that they change the answer slightly but not its length) are saved first and loaded like any
saved adapter. Rows:

- plain transformers / PEFT, `model.generate`: the base; the base wrapped by PEFT with one
  unmerged adapter; the adapter merged (`merge_and_unload`);
- lora_magic's session, the way `%%compare` and `%lora eval` answer (`Session.answering_as`):
  the base with no adapter loaded; then with 1 and with 4 adapters loaded, the base (adapters
  disabled) and an adapter (merged into copies of the weights it adapts while it answers).

The rows are timed in turn, `--repeats` times, each time with the plain base beside them; × base
is the median of each repeat's ratio to that repeat's plain base. The memory column is what the
loaded adapters' weights take.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

PROMPT = "Create a detailed description for the following product: Polar Kettle, belonging to category: Kitchen Appliance"


def adapters_mb(model) -> float:
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n) / 2**20


def save_adapters(checkpoint: str, folder: Path, count: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    folders = []
    for index in range(count):
        torch.manual_seed(index)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 1e-3)
        folders.append(folder / f"adapter-{index}")
        model.save_pretrained(folders[-1])
    return folders


def plain_rate(model, tokenizer, text: str, tokens: int) -> float:
    import torch

    inputs = tokenizer(text, return_tensors="pt")
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
    return (out.shape[1] - inputs["input_ids"].shape[1]) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lora_magic as lm
    from lora_magic.core.catalogue import builtin_checkpoint
    from lora_magic.data.templates import alpaca_prompt

    checkpoint = builtin_checkpoint("smollm2-135m")
    text = alpaca_prompt(PROMPT)
    rows: dict[str, list[float]] = {}  # each repeat's ratio to the plain base
    rates: dict[str, list[float]] = {}
    memory: dict[str, float] = {}  # adapters loaded -> their weights' MB

    with tempfile.TemporaryDirectory() as temp:
        folders = save_adapters(checkpoint, Path(temp), 4)
        from peft import PeftModel

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        base = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        merged = PeftModel.from_pretrained(copy.deepcopy(base), str(folders[0])).merge_and_unload().eval()
        unmerged = PeftModel.from_pretrained(copy.deepcopy(base), str(folders[0])).eval()
        session = lm.session()
        session.ensure_base(lm.RunConfig(model=checkpoint))
        session.model.eval()

        def plain(model):
            return lambda: plain_rate(model, tokenizer, text, args.tokens)

        def answering(name: str):
            def rate() -> float:
                with session.answering_as(name):
                    return plain_rate(session.model, tokenizer, text, args.tokens)

            return rate

        def phase(contenders: dict) -> None:
            """Time the rows in turn, each repeat beside the plain base."""
            for work in contenders.values():
                work()  # warm-up
            for _ in range(args.repeats):
                reference = plain_rate(base, tokenizer, text, args.tokens)
                for label, work in contenders.items():
                    rate = work()
                    rates.setdefault(label, []).append(rate)
                    rows.setdefault(label, []).append(rate / reference)

        phase(
            {
                "plain: base": plain(base),
                "plain: base + unmerged adapter (PEFT)": plain(unmerged),
                "plain: merged model": plain(merged),
                "lora_magic: base, no adapter loaded": answering("base"),
            }
        )
        session.load_adapter(folders[0], name="a0")
        memory["1"] = adapters_mb(session.model)
        phase(
            {
                "lora_magic: base, 1 adapter loaded": answering("base"),
                "lora_magic: adapter, 1 adapter loaded": answering("a0"),
            }
        )
        for index, folder in enumerate(folders[1:], 1):
            session.load_adapter(folder, name=f"a{index}")
        memory["4"] = adapters_mb(session.model)
        phase(
            {
                "lora_magic: base, 4 adapters loaded": answering("base"),
                "lora_magic: adapter, 4 adapters loaded": answering("a0"),
                "lora_magic: another adapter, 4 adapters loaded": answering("a3"),
            }
        )

    print(f"{args.tokens} new tokens, greedy, median of {args.repeats}, {torch.get_num_threads()} threads")
    print("| model | generated tokens/s | × base | adapters MB |\n| --- | --- | --- | --- |")
    for label, ratios in rows.items():
        held = next((mb for count, mb in memory.items() if f" {count} adapter" in label), None)
        print(
            f"| {label} | {statistics.median(rates[label]):.1f} | {statistics.median(ratios):.2f} "
            f"| {'' if held is None else f'{held:.1f}'} |"
        )


if __name__ == "__main__":
    main()
