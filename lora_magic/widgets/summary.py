"""Texts shared by the dashboard and the plain-text progress: sizes, progress, the final summary."""

from __future__ import annotations

from ..core.events import ACTIVE, FAILED, INTERRUPTED, STOPPED
from ..core.format import duration
from ..training.run import Run


def trainable(run: Run) -> str:
    """'1,234,567 trainable of 135M (0.91%)', or '' before the worker has counted them."""
    if not run.trainable_params:
        return ""
    share = 100 * run.trainable_params / max(run.total_params, 1)
    return f"{run.trainable_params:,} trainable of {run.total_params / 1e6:,.1f}M parameters ({share:.2f}%)"


def progress(event: dict, finished: bool = False) -> str:
    """One log event as 'step 5/20 · loss 2.3456 · elapsed 0:03 · ETA 0:07 · 1,234 tokens/s'.

    A finished run has no ETA, so `finished` leaves it out.
    """
    eta = "" if finished else f"ETA {duration(event.get('eta'))} · "
    return (
        f"step {event['step']}/{event['total_steps']} · loss {event['loss']:.4f} · "
        f"elapsed {duration(event.get('elapsed'))} · {eta}"
        f"{event.get('tokens_per_second') or 0:,.0f} tokens/s"
    )


def final(run: Run) -> list[str]:
    """What happened, where the adapter is and what to do next, as lines of text."""
    name = run.name
    if run.status in ACTIVE:  # the watching ended, not the run: it trains in another process
        return [
            f"Run {name} is still {run.status} in another process (step {run.step}/{run.total_steps}); "
            f"%lora watch {name} follows it again, %lora stop {name} stops it"
        ]
    if run.status == FAILED:
        return [f"Run {name} failed at step {run.step}: {run.error}"]
    if run.status == INTERRUPTED:
        return [f"Run {name} was interrupted at step {run.step}: {run.error}"] + (
            [f"Continue training with lora_magic.resume('{name}')"] if run.store.last_checkpoint(name) else []
        )
    metrics = run.metrics
    lines = [
        f"Run {name} {run.status} after {run.step}/{run.total_steps} steps"
        + (f"; train loss {metrics['train_loss']:.4f}" if "train_loss" in metrics else "")
        + (
            f"; eval loss {metrics['first_eval_loss']:.4f} → {metrics['eval_loss']:.4f}"
            if "first_eval_loss" in metrics and len(run.eval_losses) > 1
            else f"; eval loss {metrics['eval_loss']:.4f}"
            if "eval_loss" in metrics
            else ""
        )
        + "."
    ]
    if run.adapter_path:
        lines.append(f"Adapter saved to {run.adapter_path}")
    lines.append(
        f"Next: compare it with the base in a %%compare cell or lora_magic.compare('a prompt', "
        f"adapters=['base', '{name}'])"
    )
    if run.status == STOPPED and run.store.last_checkpoint(name):
        lines.append(f"Continue training with lora_magic.resume('{name}')")
    return lines
