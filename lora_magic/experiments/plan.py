"""Will it fit? `lm.plan` / `%lora plan`: a run's parameters and memory from the model's
configuration alone (model/memory.py), a verdict for a GPU or this machine, the cheapest changes
that make it fit, and with `measure=True` a few real steps here (preflight.py) beside the estimate.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..core import recipe
from ..core.config import RunConfig
from ..core.format import duration, gib
from ..core.hardware import GIB, Hardware, Machine, detect, named
from ..data.sources import split_records
from ..model.memory import TIGHT, Memory, Shapes, base_bytes, estimate, shapes, verdict

if TYPE_CHECKING:
    from .preflight import Measurement


# -- changes that make it fit --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    """Settings that make a plan fit, with the memory they need."""

    settings: dict[str, Any]
    memory: Memory

    @property
    def flags(self) -> str:
        return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in self.settings.items())


def changes_that_fit(shapes: Shapes, config: RunConfig, on: Machine) -> list[Change]:
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
    if config.quantization != "4bit" and not config.changes_base:  # they need a float base
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
@dataclass
class Plan:
    """What a run will cost before its weights are loaded: parameters, memory, and a verdict."""

    config: RunConfig
    machine: Machine
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
        return self.memory.total - (self.memory.runtime if self.machine.gpu else 0)

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
            ("CUDA context and workspaces" if self.machine.gpu else "training loop overhead", memory.runtime),
        ]

    def headline(self) -> str:
        share = self.memory.total / (self.machine.memory_gib * GIB)
        return (
            f"{self.config.model} on {self.machine.label}: {self.verdict}, "
            f"{gib(self.memory.total)} estimated ({share:.0%})"
        )

    def measured_line(self) -> str:
        if not self.measured:
            return ""
        m = self.measured
        off = self.comparable_bytes / m.peak_bytes - 1
        what = "allocated by torch" if m.device == "cuda" else "RSS"
        line = (
            f"measured peak {gib(m.peak_bytes)} ({what}), estimate {gib(self.comparable_bytes)} ({off:+.0%})"
        )
        if m.error:
            return f"{line}; the steps failed: {m.error}"
        line += f" · {m.seconds_per_step:.2f} s per step"
        if self.total_steps:
            line += f" · {self.total_steps} steps ≈ {duration(m.seconds_per_step * self.total_steps)}"
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
            *(f"    {label:<{width}}  {gib(value):>10}" for label, value in self._rows()),
            f"    {'total':<{width}}  {gib(self.memory.total):>10}",
            "  base weights by quantization: "
            + " · ".join(f"{q} {gib(b)}" for q, b in self.base_by_quantization.items()),
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
        lines += [f"    {c.flags:<{width}}  {gib(c.memory.total)}" for c in self.changes]
        return lines

    def _repr_html_(self) -> str:
        colour = "#1b7f3b" if self.verdict == "fits" else "#b00020"
        s = self.shapes
        rows = "".join(
            f"<tr><td>{html.escape(label)}</td><td style='text-align:right'>{gib(value)}</td></tr>"
            for label, value in self._rows()
        )
        kinds = ", ".join(f"{html.escape(k)} {n:,}" for k, n in s.trainable_by_kind.items())
        parts = [
            f"<div class='lora-magic-plan'><p><b style='color:{colour}'>{html.escape(self.verdict)}</b> · "
            f"{html.escape(self.headline())}</p>",
            f"<p>{s.total_params:,} parameters; <b>{s.trainable_params:,} trainable</b> "
            f"(r={self.config.r}: {kinds})</p>",
            f"<table>{rows}<tr><th style='text-align:left'>total</th>"
            f"<th style='text-align:right'>{gib(self.memory.total)}</th></tr></table>",
            "<p>base weights by quantization: "
            + html.escape(" · ".join(f"{q} {gib(b)}" for q, b in self.base_by_quantization.items()))
            + "</p>",
        ]
        if self.measured:
            parts.append(f"<p>{html.escape(self.measured_line())}</p>")
        advice = self._change_lines()
        if advice:
            items = "".join(
                f"<li><code>{html.escape(c.flags)}</code>: {gib(c.memory.total)}</li>" for c in self.changes
            )
            parts.append(f"<p>{html.escape(advice[0].strip())}</p><ul>{items}</ul>")
        return "".join(parts) + "</div>"


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
    on = detect(config) if gpu is None or gpu in ("", "auto") else named(gpu)
    counted = shapes(config)
    memory = estimate(counted, config, on)
    hardware = Hardware.of(config, on)
    fits = verdict(memory, on)
    result = Plan(
        config=config,
        machine=on,
        hardware=hardware,
        shapes=counted,
        memory=memory,
        verdict=fits,
        changes=[] if fits == "fits" else changes_that_fit(counted, config, on),
        base_by_quantization={q: base_bytes(counted, q, hardware.dtype) for q in ("none", "8bit", "4bit")},
    )
    if measure:
        from .preflight import measure as run_steps  # trains: the training floor loads only here

        result = replace(result, measured=run_steps(config), total_steps=total_steps(config))
    return result


def total_steps(config: RunConfig) -> int | None:
    """Optimizer steps of the run, when its settings say: steps, or data × epochs."""
    if config.steps:
        return config.steps
    if config.data is None:
        return None
    train, _ = split_records(config)
    return recipe.total_steps(config, len(train))
