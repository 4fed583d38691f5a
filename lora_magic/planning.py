"""Will it fit? A run's parameters and memory, from the model's configuration alone.

`plan(config)` reads the model's config.json (never its weights), builds the model on the meta
device, applies LoRA with PEFT as training does, and takes the parameter counts PEFT reports.
Memory is added up from those shapes: the frozen base as the quantization stores it, the adapter,
its gradients and AdamW state, and the activations of one step of batch_size × max_length tokens
(the worst case: real batches are padded only to their longest example). `measure=True` trains a
few real steps of that size on this machine and puts the measured peak beside the estimate.

Importing this module is cheap; torch, transformers and PEFT are imported on first use.
"""

from __future__ import annotations

import html
import math
import re
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

from . import recipe
from .config import RunConfig
from .errors import ConfigError, ModelError, did_you_mean
from .recipe import GIB, LOGITS_LIMIT, Hardware, Target, this_machine

# Total memory as torch reports it (GiB) and bfloat16 support, of GPUs people fine-tune on.
GPUS: dict[str, tuple[float, bool]] = {
    "T4": (14.7, False),
    "L4": (22.0, True),
    "A10": (22.0, True),
    "A100-40": (39.4, True),
    "A100-80": (79.2, True),
    "H100": (79.1, True),
}
TIGHT = 0.9  # share of the memory a run may plan to use: the rest is for the allocator's fragmentation
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, float32, per trainable parameter
# TRL scores the vocabulary in tiles of at most this many tokens by this many entries, and never
# holds the whole (tokens × vocabulary) logits. With Triton (CUDA) a tile is worked on in place;
# TRL's torch fallback (on a CPU) holds about eight float32 temporaries of a tile's size at once.
HEAD_TILE = (4096, 32768)
CPU_TILE_COPIES = 8
# On a CPU the trainer (sft.py) computes the labelled positions' logits at once, up to LOGITS_LIMIT
# entries, and holds about three float32 copies of them: the logits, the log-probabilities the
# backward pass needs, and their gradient.
CPU_LOGITS_COPIES = 3
# On a CPU the process's peak resident memory during a step runs this far above the activations
# counted here: the C allocator keeps freed blocks, and the backward's temporaries come and go.
CPU_ACTIVATION_FACTOR = 1.45
# Memory a training step takes besides the tensors counted here: on a GPU the CUDA context and
# library workspaces (outside torch's allocations); on a CPU the trainer's own.
RUNTIME_GIB = {"gpu": 0.6, "cpu": 0.03}
# The CPU constants are measured (benchmarks/plan_accuracy.py, docs/performance.md); the GPU ones
# are not yet: no GPU was at hand.


# -- what the plan is for -----------------------------------------------------------------------------
def target(gpu: str | float | None, config: RunConfig) -> Target:
    """A named GPU, a number of GiB, or (None) this machine: its GPU, else its RAM."""
    if gpu is None or gpu in ("", "auto"):
        return this_machine(config)
    if isinstance(gpu, int | float) or re.fullmatch(r"\d+(\.\d+)?", str(gpu).strip()):
        size = float(gpu)
        if size <= 0:
            raise ConfigError(f"gpu={gpu!r}: a GPU's memory must be more than 0 GiB")
        return Target(f"a {size:g} GiB GPU", size, gpu=True)
    key = str(gpu).strip().upper().removesuffix("GB")
    name = next((name for name in GPUS if name == key), None)
    if name is None:
        variants = [name for name in GPUS if name.startswith(key + "-")]  # A100 -> A100-40, A100-80
        hint = f" (did you mean {' or '.join(map(repr, variants))}?)" if variants else did_you_mean(key, GPUS)
        raise ConfigError(
            f"unknown GPU {gpu!r}{hint}; name one of {', '.join(GPUS)}, or give its memory in GiB (e.g. 16)"
        )
    memory, bf16 = GPUS[name]
    return Target(name, memory, gpu=True, bf16=bf16)


# -- the model's shapes, from its configuration --------------------------------------------------------
@dataclass(frozen=True)
class Shapes:
    """What the memory model needs to know of a model with its adapter, counted on the meta device."""

    total_params: int  # as PEFT counts them: base and adapter
    trainable_params: int
    trainable_by_kind: dict[str, int]  # e.g. {'q_proj': 1331200, 'v_proj': 1331200}
    targets: list[str]
    quantizable_params: int  # weights bitsandbytes stores in 8/4 bits (the linear layers bar the head)
    quantizable_rows: int  # their output features: int8 keeps one scale per row
    other_params: int  # embeddings, norms, the output head, biases: kept in float
    layers: int
    hidden: int
    intermediate: int
    gated_mlp: bool
    query_width: int  # attention heads × head size
    key_value_width: int
    heads: int
    vocab: int
    adapted_per_layer: float  # adapted layers per decoder layer
    adapted_inputs_per_layer: float  # their in_features, summed


def read_model_config(config: RunConfig) -> Any:
    """The transformers configuration of the run's model: a folder's config.json, the built-in
    model's, or a Hub id's (downloaded alone, or read from the cache)."""
    from transformers import AutoConfig

    from . import models

    resolved = models.resolve_model(config.model)
    try:
        return AutoConfig.from_pretrained(resolved, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())
        raise ModelError(
            f"cannot read the configuration of model {config.model!r} ({resolved}): {reason}; a plan "
            "needs only its config.json: give a folder holding it, or connect to the Hub once"
        ) from None


def meta_model(config: RunConfig) -> Any:
    """The config's model built on the meta device: its layers and shapes, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    model_config = read_model_config(config)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config, trust_remote_code=config.trust_remote_code)


def shapes(config: RunConfig) -> Shapes:
    """Build the model on the meta device, apply the run's LoRA settings with PEFT, and count."""
    from peft import get_peft_model
    from transformers.quantizers.base import get_keys_to_not_convert

    from . import models

    model = meta_model(config)
    model_config = model.config
    kept_in_float = set(get_keys_to_not_convert(model))
    quantizable = [
        layer
        for name, layer in models.linear_layers(model).items()
        if not any(name == key or name.startswith(key + ".") for key in kept_in_float)
    ]
    quantizable_params = sum(layer.weight.numel() for layer in quantizable)
    base_params = sum(p.numel() for p in model.parameters())
    targets = models.resolve_targets(config, model)
    lora = models.lora_config(config, targets)
    lora.init_lora_weights = False  # nothing to initialise on the meta device; it is faster
    with warnings.catch_warnings():  # PEFT's advice on tied heads is for training, not for counting
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, lora)
    trainable, total = peft_model.get_nb_trainable_parameters()

    by_kind: dict[str, int] = {}
    adapted = inputs = 0
    for name, parameter in peft_model.named_parameters():
        if parameter.requires_grad:
            kind = name.split(".lora_")[0].rsplit(".", 1)[-1] if ".lora_" in name else name.rsplit(".", 1)[-1]
            by_kind[kind] = by_kind.get(kind, 0) + parameter.numel()
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "lm_head" not in name and module.lora_A:
            adapted, inputs = adapted + 1, inputs + module.in_features

    text = model_config.get_text_config()
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_size = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    intermediate = next(
        (
            getattr(text, key)
            for key in ("intermediate_size", "n_inner", "ffn_dim")
            if getattr(text, key, None)
        ),
        4 * hidden,
    )
    layers = text.num_hidden_layers
    mlp_layers = sum(1 for layer in quantizable if intermediate in (layer.in_features, layer.out_features))
    return Shapes(
        total_params=total,
        trainable_params=trainable,
        trainable_by_kind=dict(sorted(by_kind.items())),
        targets=targets,
        quantizable_params=quantizable_params,
        quantizable_rows=sum(layer.out_features for layer in quantizable),
        other_params=base_params - quantizable_params,
        layers=layers,
        hidden=hidden,
        intermediate=intermediate,
        gated_mlp=mlp_layers >= 3 * layers,
        query_width=heads * head_size,
        key_value_width=kv_heads * head_size,
        heads=heads,
        vocab=text.vocab_size,
        adapted_per_layer=adapted / layers,
        adapted_inputs_per_layer=inputs / layers,
    )


# -- the memory model -------------------------------------------------------------------------------------
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class Memory:
    """Bytes a training step needs, by what holds them."""

    base: float
    adapter: float
    gradients: float
    optimizer: float
    activations: float
    runtime: float

    @property
    def total(self) -> float:
        return self.base + self.adapter + self.gradients + self.optimizer + self.activations + self.runtime

    def parts(self) -> dict[str, float]:
        return asdict(self)


def base_bytes(shapes: Shapes, quantization: str, dtype: str) -> float:
    """The frozen base as stored. Quantizing keeps the other weights in float32 (PEFT's preparation
    for k-bit training upcasts them)."""
    if quantization == "none":
        return (shapes.quantizable_params + shapes.other_params) * BYTES[dtype]
    if quantization == "8bit":
        packed = shapes.quantizable_params + 4 * shapes.quantizable_rows  # int8 and a float scale per row
    else:  # NF4: half a byte per weight, and per block of 64 one 8-bit scale (double quantization)
        packed = shapes.quantizable_params * (0.5 + 1 / 64 + 4 / (64 * 256))
    return packed + shapes.other_params * 4


def activation_bytes(shapes: Shapes, config: RunConfig, hardware: Hardware, on: Target) -> float:
    """What autograd keeps for the backward pass, plus the largest temporaries, for one micro-batch.

    Per token and decoder layer it keeps the residual stream and the normalised inputs (float32 in
    the norms), the attention's query, key, value and output, the MLP's projections and activation,
    and for each adapted layer its dropped-out input, the dropout's mask and its rank-r projection.
    Flash / SDPA attention keeps no (length × length) scores. Checkpointing keeps a layer's input only and
    recomputes one layer at a time.
    """
    tokens = config.batch_size * config.max_length
    act = BYTES[hardware.precision]
    norms = (2 * shapes.hidden + 2) * 4 + 2 * shapes.hidden * act
    attention = (2 * shapes.query_width + 2 * shapes.key_value_width) * act + shapes.heads * 4
    mlp = (3 if shapes.gated_mlp else 2) * shapes.intermediate * act
    inputs = shapes.adapted_inputs_per_layer
    lora = inputs * (act + 1) + shapes.adapted_per_layer * config.r * act
    layer = tokens * (norms + attention + mlp + lora)
    kept = (
        shapes.layers * tokens * shapes.hidden * act + layer
        if hardware.checkpointing
        else shapes.layers * layer
    )
    backward = 2 * tokens * (shapes.intermediate + shapes.hidden) * act
    final = tokens * shapes.hidden * (act + 4)  # the last hidden states, and their float32 gradient
    tile = min(tokens, HEAD_TILE[0]) * min(shapes.vocab, HEAD_TILE[1])
    if on.gpu:
        return kept + backward + final + tile * act
    logits = tokens * shapes.vocab  # every position labelled: the most the loss can take
    head = CPU_LOGITS_COPIES * logits * 4 if logits <= LOGITS_LIMIT else CPU_TILE_COPIES * tile * 4
    return CPU_ACTIVATION_FACTOR * (kept + backward + final) + head


def estimate(shapes: Shapes, config: RunConfig, on: Target) -> Memory:
    hardware = Hardware.of(config, on)
    adapter = shapes.trainable_params * 4  # PEFT keeps adapter weights in float32
    return Memory(
        base=base_bytes(shapes, config.quantization, hardware.dtype),
        adapter=adapter,
        gradients=adapter,
        optimizer=ADAMW_STATES * adapter,
        activations=activation_bytes(shapes, config, hardware, on),
        runtime=RUNTIME_GIB["gpu" if on.gpu else "cpu"] * GIB,
    )


def verdict(memory: Memory, on: Target) -> str:
    return "fits" if memory.total <= TIGHT * on.memory_gib * GIB else "does not fit"


# -- changes that make it fit --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    """Settings that make a plan fit, with the memory they need."""

    settings: dict[str, Any]
    memory: Memory

    @property
    def flags(self) -> str:
        return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in self.settings.items())


def changes_that_fit(shapes: Shapes, config: RunConfig, on: Target) -> list[Change]:
    """The cheapest changes that make the run fit, each on its own, mildest first: a 4-bit base
    (the same quality in the source experiment), a smaller batch with gradient accumulation (the
    same effective batch, slower), checkpointing (about a third slower), a shorter max_length
    (truncates what is trained). If no single change is enough, they are combined."""

    def fits(settings: dict[str, Any]) -> Memory | None:
        memory = estimate(shapes, config.replace(**settings), on)
        return memory if verdict(memory, on) == "fits" else None

    def smaller_batch(batch: int) -> dict[str, Any]:
        return {"batch_size": batch, "grad_accum": math.ceil(config.grad_accum * config.batch_size / batch)}

    options: list[list[dict[str, Any]]] = []
    if config.quantization != "4bit":
        options.append([{"quantization": "4bit"}])
    options.append([smaller_batch(b) for b in _halvings(config.batch_size, 1)])
    if not Hardware.of(config, on).checkpointing:
        options.append([{"gradient_checkpointing": "on"}])
    options.append([{"max_length": n} for n in _halvings(config.max_length, 64)])
    options = [choices for choices in options if choices]

    found = [_first_fit(choices, fits) for choices in options]
    if any(found):
        return [change for change in found if change]
    # combine, in the same order: each step keeps the previous ones
    combined: dict[str, Any] = {}
    for choices in options:
        change = _first_fit([{**combined, **c} for c in choices], fits)
        if change:
            return [change]
        combined.update(choices[-1])
    return []


def _halvings(value: int, floor: int) -> list[int]:
    out = []
    while value // 2 >= floor:
        value //= 2
        out.append(value)
    return out


def _first_fit(choices: list[dict[str, Any]], fits) -> Change | None:
    for settings in choices:
        memory = fits(settings)
        if memory:
            return Change(settings, memory)
    return None


# -- the plan -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """Real training steps of batch_size × max_length tokens on this machine."""

    peak_bytes: float  # on a GPU torch's peak allocation; on a CPU the weights + the steps' peak RSS rise
    seconds_per_step: float | None  # per optimizer step (grad_accum micro-batches); None if they failed
    device: str
    error: str | None = None


@dataclass
class Plan:
    """What a run will cost before its weights are loaded: parameters, memory, and a verdict."""

    config: RunConfig
    target: Target
    hardware: Hardware
    shapes: Shapes
    memory: Memory
    verdict: str
    changes: list[Change]
    base_by_quantization: dict[str, float]
    total_steps: int | None = None
    measured: Measurement | None = None

    @property
    def trainable_params(self) -> int:
        return self.shapes.trainable_params

    @property
    def total_params(self) -> int:
        return self.shapes.total_params

    @property
    def comparable_bytes(self) -> float:
        """The estimate of what a measurement sees: torch's allocations leave the CUDA context out."""
        return self.memory.total - (self.memory.runtime if self.target.gpu else 0)

    def record(self) -> dict[str, Any]:
        """The estimate as run.json keeps it (GiB)."""
        return {
            "target": self.target.name,
            "target_gib": round(self.target.memory_gib, 2),
            "verdict": self.verdict,
            "memory_gib": {
                k: round(v / GIB, 3) for k, v in {**self.memory.parts(), "total": self.memory.total}.items()
            },
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
        }

    # -- text ----------------------------------------------------------------------------------------
    def _rows(self) -> list[tuple[str, float]]:
        config, hardware, memory = self.config, self.hardware, self.memory
        checkpointing = "checkpointing" if hardware.checkpointing else "no checkpointing"
        return [
            (
                f"base weights ({config.quantization}, {hardware.dtype if config.quantization == 'none' else 'packed'})",
                memory.base,
            ),
            ("adapter (float32)", memory.adapter),
            ("gradients", memory.gradients),
            ("optimizer state (AdamW)", memory.optimizer),
            (
                f"activations ({config.batch_size} × {config.max_length} tokens, {hardware.precision}, {checkpointing})",
                memory.activations,
            ),
            ("CUDA context and workspaces" if self.target.gpu else "training loop overhead", memory.runtime),
        ]

    def headline(self) -> str:
        share = self.memory.total / (self.target.memory_gib * GIB)
        return (
            f"{self.config.model} on {self.target.label}: {self.verdict}, "
            f"{_gib(self.memory.total)} estimated ({share:.0%})"
        )

    def measured_line(self) -> str:
        if not self.measured:
            return ""
        m = self.measured
        off = self.comparable_bytes / m.peak_bytes - 1
        what = "allocated by torch" if m.device == "cuda" else "RSS"
        line = f"measured peak {_gib(m.peak_bytes)} ({what}), estimate {_gib(self.comparable_bytes)} ({off:+.0%})"
        if m.error:
            return f"{line}; the steps failed: {m.error}"
        line += f" · {m.seconds_per_step:.2f} s per step"
        if self.total_steps:
            line += f" · {self.total_steps} steps ≈ {_duration(m.seconds_per_step * self.total_steps)}"
        return line + " (steps at full max_length: an upper bound)"

    def __repr__(self) -> str:
        s = self.shapes
        share = s.trainable_params / s.total_params
        kinds = " · ".join(f"{kind} {n:,}" for kind, n in s.trainable_by_kind.items())
        width = max(len(label) for label, _ in self._rows())
        lines = [
            f"Plan: {self.headline()}",
            f"  parameters  {s.total_params:,} in total; {s.trainable_params:,} trainable ({share:.2%}), "
            f"r={self.config.r} on {', '.join(s.targets)}",
            f"              {kinds}",
            "  memory",
            *(f"    {label:<{width}}  {_gib(value):>10}" for label, value in self._rows()),
            f"    {'total':<{width}}  {_gib(self.memory.total):>10}",
            "  base weights by quantization: "
            + " · ".join(f"{q} {_gib(b)}" for q, b in self.base_by_quantization.items()),
        ]
        if self.measured:
            lines.append("  " + self.measured_line())
        lines += self._change_lines()
        return "\n".join(lines)

    def _change_lines(self) -> list[str]:
        if self.verdict == "fits":
            return []
        if not self.changes:
            return [
                "  Nothing here makes it fit (4-bit, batch 1, checkpointing and a short max_length "
                "together): use a bigger GPU or a smaller model."
            ]
        lines = [f"  Changes that make it fit (within {TIGHT:.0%} of the memory), cheapest first:"]
        width = max(len(change.flags) for change in self.changes)
        lines += [f"    {c.flags:<{width}}  {_gib(c.memory.total)}" for c in self.changes]
        return lines

    def _repr_html_(self) -> str:
        colour = "#1b7f3b" if self.verdict == "fits" else "#b00020"
        s = self.shapes
        rows = "".join(
            f"<tr><td>{html.escape(label)}</td><td style='text-align:right'>{_gib(value)}</td></tr>"
            for label, value in self._rows()
        )
        kinds = ", ".join(f"{html.escape(k)} {n:,}" for k, n in s.trainable_by_kind.items())
        parts = [
            f"<div class='lora-magic-plan'><p><b style='color:{colour}'>{html.escape(self.verdict)}</b> · "
            f"{html.escape(self.headline())}</p>",
            f"<p>{s.total_params:,} parameters; <b>{s.trainable_params:,} trainable</b> "
            f"(r={self.config.r}: {kinds})</p>",
            f"<table>{rows}<tr><th style='text-align:left'>total</th>"
            f"<th style='text-align:right'>{_gib(self.memory.total)}</th></tr></table>",
            "<p>base weights by quantization: "
            + html.escape(" · ".join(f"{q} {_gib(b)}" for q, b in self.base_by_quantization.items()))
            + "</p>",
        ]
        if self.measured:
            parts.append(f"<p>{html.escape(self.measured_line())}</p>")
        advice = self._change_lines()
        if advice:
            items = "".join(
                f"<li><code>{html.escape(c.flags)}</code>: {_gib(c.memory.total)}</li>" for c in self.changes
            )
            parts.append(f"<p>{html.escape(advice[0].strip())}</p><ul>{items}</ul>")
        return "".join(parts) + "</div>"


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def plan(
    config: RunConfig | None = None,
    /,
    *,
    gpu: str | float | None = None,
    measure: bool = False,
    **settings: Any,
) -> Plan:
    """Parameters and memory of a run, from the model's configuration alone (no weights are read).

    `gpu` plans for a named GPU (T4, L4, A10, A100-40, A100-80, H100) or a number of GiB; by
    default for this machine's GPU, else its RAM. `measure=True` also trains a few real steps here
    at batch_size × max_length and reports their peak memory and time per step.
    """
    config = config.replace(**settings) if config else RunConfig(**settings)
    on = target(gpu, config)
    counted = shapes(config)
    memory = estimate(counted, config, on)
    hardware = Hardware.of(config, on)
    fits = verdict(memory, on)
    result = Plan(
        config=config,
        target=on,
        hardware=hardware,
        shapes=counted,
        memory=memory,
        verdict=fits,
        changes=[] if fits == "fits" else changes_that_fit(counted, config, on),
        base_by_quantization={q: base_bytes(counted, q, hardware.dtype) for q in ("none", "8bit", "4bit")},
    )
    if measure:
        from .preflight import measure as run_steps

        result = replace(result, measured=run_steps(config), total_steps=total_steps(config))
    return result


def total_steps(config: RunConfig) -> int | None:
    """Optimizer steps of the run, when its settings say: steps, or data × epochs."""
    if config.steps:
        return config.steps
    if config.data is None:
        return None
    from .data import split_records

    train, _ = split_records(config)
    return recipe.total_steps(config, len(train))


def describe_estimate(record: dict[str, Any] | None) -> str:
    """'estimated peak 1.64 GiB (fits in CPU's 18.6 GiB)' for a run.json estimate; '' without one."""
    if not record:
        return ""
    return (
        f"estimated peak {record['memory_gib']['total']:.2f} GiB "
        f"({record['verdict']} in {record['target']}'s {record['target_gib']:.1f} GiB)"
    )


def record(config: RunConfig) -> dict[str, Any] | None:
    """The estimate for run.json; None when the model's architecture cannot be planned (training
    does not depend on it)."""
    import logging

    try:
        return plan(config).record()
    except Exception:
        logging.getLogger(__name__).warning("no memory estimate for %s", config.model, exc_info=True)
        return None
