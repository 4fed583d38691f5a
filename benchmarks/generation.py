"""Generation speed of the built-in model: base, unmerged adapter, merged model, 1 and 4 adapters.

    .venv/bin/python benchmarks/generation.py [--tokens 64] [--repeats 3]

Greedy decoding with the KV cache of `--tokens` new tokens for the alpaca prompt of a held-out
product, float32 on the CPU. Four LoRA adapters (r=8, q/v, B set to small random values so that
they change the answer slightly but not its length) are saved first and loaded like any saved
adapter. Rows:

- plain transformers / PEFT, `model.generate(min_new_tokens=max_new_tokens)`: the base; the base
  wrapped by PEFT with one unmerged adapter; the adapter merged (`merge_and_unload`);
- through lora_magic's session (`lm.compare`, what `%%compare` runs): the base alone; then with 1
  and with 4 adapters loaded on the same base, the adapter's answer (merged into copies of the
  weights it adapts while it answers) and the base's (adapters disabled). The memory column is what
  the loaded adapters' weights take.

Each row is timed `--repeats` times, the rows alternating, and the median is reported.
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
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lora_magic as lm
    from lora_magic.data import alpaca_prompt
    from lora_magic.models import builtin_checkpoint

    checkpoint = builtin_checkpoint("smollm2-135m")
    text = alpaca_prompt(PROMPT)
    rows: dict[str, list[float]] = {}
    memory: dict[str, float] = {}

    def timed(label: str, work) -> None:
        rows.setdefault(label, []).append(work())

    with tempfile.TemporaryDirectory() as temp:
        folders = save_adapters(checkpoint, Path(temp), 4)

        # plain transformers and PEFT, without lora_magic
        from peft import PeftModel

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        base = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        merged = PeftModel.from_pretrained(copy.deepcopy(base), str(folders[0])).merge_and_unload().eval()
        unmerged = PeftModel.from_pretrained(copy.deepcopy(base), str(folders[0])).eval()
        plain = {
            "plain: base": base,
            "plain: base + unmerged adapter (PEFT)": unmerged,
            "plain: merged model": merged,
        }
        plain_rate(base, tokenizer, text, 8)  # warm-up
        for _ in range(args.repeats):
            for label, model in plain.items():
                timed(label, lambda model=model: plain_rate(model, tokenizer, text, args.tokens))
        del base, merged, unmerged, plain

        # through lora_magic's session, as %%compare answers
        session = lm.session()

        def answer(name: str) -> float:
            return (
                lm.compare(PROMPT, adapters=[name], max_new_tokens=args.tokens).answers[0].tokens_per_second
            )

        session.ensure_base(lm.RunConfig(model=checkpoint))
        memory["lora_magic: no adapter loaded"] = 0.0
        answer("base")  # warm-up
        for _ in range(args.repeats):
            timed("lora_magic: base, no adapter loaded", lambda: answer("base"))
        session.load_adapter(folders[0], name="a0")
        memory["lora_magic: 1 adapter loaded"] = adapters_mb(session.model)
        answer("a0")  # warm-up
        for _ in range(args.repeats):
            timed("lora_magic: base, 1 adapter loaded", lambda: answer("base"))
            timed("lora_magic: adapter, 1 adapter loaded", lambda: answer("a0"))
        for index, folder in enumerate(folders[1:], 1):
            session.load_adapter(folder, name=f"a{index}")
        memory["lora_magic: 4 adapters loaded"] = adapters_mb(session.model)
        for _ in range(args.repeats):
            timed("lora_magic: base, 4 adapters loaded", lambda: answer("base"))
            timed("lora_magic: adapter, 4 adapters loaded", lambda: answer("a0"))
            timed("lora_magic: another adapter, 4 adapters loaded", lambda: answer("a3"))

    base_rate = statistics.median(rows["plain: base"])
    print(f"{args.tokens} new tokens, greedy, median of {args.repeats}, {torch.get_num_threads()} threads")
    print("| model | generated tokens/s | × base | adapters MB |\n| --- | --- | --- | --- |")
    for label, rates in rows.items():
        rate = statistics.median(rates)
        held = next((mb for key, mb in memory.items() if label.endswith(key.split(": ")[1])), None)
        print(f"| {label} | {rate:.1f} | {rate / base_rate:.2f} | {'' if held is None else f'{held:.1f}'} |")


if __name__ == "__main__":
    main()
