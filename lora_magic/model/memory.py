"""Will it fit? A run's parameters and the memory of a training step, from the model's
configuration alone.

`shapes(config)` reads the model's config.json (never its weights), builds the model on the meta
device, applies LoRA with PEFT as training does, and takes the parameter counts PEFT reports.
`estimate` adds memory up from those shapes: the frozen base as the quantization stores it, the
adapter, its gradients and AdamW state, and the activations of one step of batch_size × max_length
tokens (the worst case: real batches are padded only to their longest example).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

from ..core.catalogue import resolve_model
from ..core.config import RunConfig
from ..core.errors import ModelError
from ..core.hardware import GIB, Hardware, Machine
from ..core.recipe import LOGITS_LIMIT
from .targets import linear_layers, lora_config, resolve_targets

TIGHT = 0.9  # share of the memory a run may plan to use: the rest is for the allocator's fragmentation
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, float32, per trainable parameter
# TRL scores the vocabulary in tiles of at most this many tokens by this many entries, and never
# holds the whole (tokens × vocabulary) logits. With Triton (CUDA) a tile is worked on in place;
# TRL's torch fallback (on a CPU) holds about eight float32 temporaries of a tile's size at once.
HEAD_TILE = (4096, 32768)
CPU_TILE_COPIES = 8
# On a CPU the trainer (training/sft.py) computes the labelled positions' logits at once, up to
# LOGITS_LIMIT entries, and holds about three float32 copies of them: the logits, the
# log-probabilities the backward pass needs, and their gradient.
CPU_LOGITS_COPIES = 3
# On a CPU the process's peak resident memory during a step runs this far above the activations
# counted here: the C allocator keeps freed blocks, and the backward's temporaries come and go.
CPU_ACTIVATION_FACTOR = 1.45
# With gradient checkpointing on a CPU, the peak grows by about this share of a layer's activations
# for every layer recomputed in the backward pass: the C allocator keeps part of what each
# recomputation frees (fitted on 4 and 8 layers of SmolLM2-135M's shape and on the built-in model).
CPU_RECOMPUTED_KEPT = 0.28
# LoRA's dropout keeps a mask of its input for the backward pass: torch's is one byte an element; on
# a CPU the trainer's CPUDropout (training/sft.py) multiplies by a float32 mask, four bytes.
DROPOUT_MASK_BYTES = {"gpu": 1, "cpu": 4}
# DoRA scales the base's output and LoRA's by the magnitudes, and keeps both for the backward pass:
# with all linear layers of the built-in model adapted at 2 × 256 tokens, 0.72 GiB more than LoRA
# measured (benchmarks/plan_accuracy.py), 0.86 GiB counted.
DORA_OUTPUT_COPIES = 2
# Memory a training step takes besides the tensors counted here: on a GPU the CUDA context and
# library workspaces (outside torch's allocations); on a CPU the trainer's own.
RUNTIME_GIB = {"gpu": 0.6, "cpu": 0.03}
# The CPU constants are measured (benchmarks/plan_accuracy.py, docs/performance.md); the GPU ones
# are not yet: no GPU was at hand.


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
    adapted_outputs_per_layer: float  # their out_features, summed


def read_model_config(config: RunConfig) -> Any:
    """The transformers configuration of the run's model: a folder's config.json, the built-in
    model's, or a Hub id's (downloaded alone, or read from the cache)."""
    from transformers import AutoConfig

    resolved = resolve_model(config.model)
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

    model = meta_model(config)
    model_config = model.config
    kept_in_float = set(get_keys_to_not_convert(model))
    quantizable = [
        layer
        for name, layer in linear_layers(model).items()
        if not any(name == key or name.startswith(key + ".") for key in kept_in_float)
    ]
    quantizable_params = sum(layer.weight.numel() for layer in quantizable)
    base_params = sum(p.numel() for p in model.parameters())
    targets = resolve_targets(config, model)
    lora = lora_config(config, targets)
    lora.init_lora_weights = False  # nothing to initialise on the meta device; it is faster
    with warnings.catch_warnings():  # PEFT's advice on tied heads is for training, not for counting
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, lora)
    trainable, total = peft_model.get_nb_trainable_parameters()

    by_kind: dict[str, int] = {}
    adapted = inputs = outputs = 0
    for name, parameter in peft_model.named_parameters():
        if parameter.requires_grad:
            kind = name.split(".lora_")[0].rsplit(".", 1)[-1] if ".lora_" in name else name.rsplit(".", 1)[-1]
            by_kind[kind] = by_kind.get(kind, 0) + parameter.numel()
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "lm_head" not in name and module.lora_A:
            adapted, inputs, outputs = adapted + 1, inputs + module.in_features, outputs + module.out_features

    text = model_config.get_text_config()
    hidden, heads = text.hidden_size, text.num_attention_heads
    head_size, kv_heads, intermediate = _widths(text)
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
        adapted_outputs_per_layer=outputs / layers,
    )


def _widths(text_config: Any) -> tuple[int, int, int]:
    """A model's head size, key-value heads and MLP width, under the names its family gives them."""
    hidden, heads = text_config.hidden_size, text_config.num_attention_heads
    intermediate = next(
        (
            getattr(text_config, k)
            for k in ("intermediate_size", "n_inner", "ffn_dim")
            if getattr(text_config, k, None)
        ),
        4 * hidden,
    )
    return (
        getattr(text_config, "head_dim", None) or hidden // heads,
        getattr(text_config, "num_key_value_heads", None) or heads,
        intermediate,
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


def activation_bytes(shapes: Shapes, config: RunConfig, hardware: Hardware, on: Machine) -> float:
    """What autograd keeps for the backward pass, plus the largest temporaries, for one micro-batch.

    Per token and decoder layer it keeps the residual stream and the normalised inputs (float32 in
    the norms), the attention's query, key, value and output, the MLP's projections and activation,
    and for each adapted layer its dropped-out input, the dropout's mask and its rank-r projection
    (with DoRA also the base's and LoRA's outputs, which the magnitude's gradient needs).
    Flash / SDPA attention keeps no (length × length) scores. Checkpointing keeps each layer's input
    only and recomputes one layer at a time; on a CPU the process keeps part of what each
    recomputation frees (CPU_RECOMPUTED_KEPT).
    """
    tokens = config.batch_size * config.max_length
    act = BYTES[hardware.precision]
    norms = (2 * shapes.hidden + 2) * 4 + 2 * shapes.hidden * act
    attention = (2 * shapes.query_width + 2 * shapes.key_value_width) * act + shapes.heads * 4
    mlp = (3 if shapes.gated_mlp else 2) * shapes.intermediate * act
    inputs = shapes.adapted_inputs_per_layer
    mask = DROPOUT_MASK_BYTES["gpu" if on.gpu else "cpu"] if config.dropout > 0 else 0
    lora = inputs * (act + mask) + shapes.adapted_per_layer * config.r * act
    if config.dora:
        lora += DORA_OUTPUT_COPIES * shapes.adapted_outputs_per_layer * act
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
    if hardware.checkpointing:
        kept += CPU_RECOMPUTED_KEPT * shapes.layers * layer
    logits = tokens * shapes.vocab  # every position labelled: the most the loss can take
    head = CPU_LOGITS_COPIES * logits * 4 if logits <= LOGITS_LIMIT else CPU_TILE_COPIES * tile * 4
    return CPU_ACTIVATION_FACTOR * (kept + backward + final) + head


def estimate(shapes: Shapes, config: RunConfig, on: Machine) -> Memory:
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


def verdict(memory: Memory, on: Machine) -> str:
    return "fits" if memory.total <= TIGHT * on.memory_gib * GIB else "does not fit"


def record(config: RunConfig, on: Machine) -> dict[str, Any] | None:
    """The estimate as run.json keeps it (GiB), to set beside the run's measured peak; None when the
    model's architecture cannot be counted (training does not depend on it)."""
    import logging

    try:
        counted = shapes(config)
    except Exception:
        logging.getLogger(__name__).warning("no memory estimate for %s", config.model, exc_info=True)
        return None
    memory = estimate(counted, config, on)
    return {
        "machine": on.name,
        "machine_gib": round(on.memory_gib, 2),
        "verdict": verdict(memory, on),
        "memory_gib": {k: round(v / GIB, 3) for k, v in {**memory.parts(), "total": memory.total}.items()},
        "trainable_params": counted.trainable_params,
        "total_params": counted.total_params,
    }


def answering_bytes(text_config: Any, tokens: int, element_bytes: int) -> float:
    """Memory one prompt of `tokens` (prompt and answer) takes in a batch being answered: its KV
    cache, the prefill's widest activations (the MLP's, and the attention scores of every head) and
    the float32 logits of its last position."""
    head_size, kv_heads, intermediate = _widths(text_config)
    hidden, heads = text_config.hidden_size, text_config.num_attention_heads
    cache = 2 * text_config.num_hidden_layers * kv_heads * head_size * tokens * element_bytes
    prefill = tokens * (4 * hidden + 3 * intermediate) * element_bytes + heads * tokens**2 * 4
    return cache + prefill + 2 * text_config.vocab_size * 4
