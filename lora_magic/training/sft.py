"""The SFT method (supervised fine-tuning): TRL's SFTTrainer on the run's tokenized examples, with
a cheaper loss and a cheaper LoRA dropout on the CPU, and an evaluation after the last step.

`lm.script` (`%lora show --code`) prints these classes into its script, so the script trains as
the engine does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import PrinterCallback, TrainerCallback
from trl import SFTTrainer

from ..core import recipe
from ..core.hardware import Machine
from ..core.recipe import LOGITS_LIMIT
from ..data.prepare import Prepared
from .run import Run


def build_trainer(
    run: Run, model: Any, tokenizer: Any, prepared: Prepared, machine: Machine, callbacks: list
) -> SFTTrainer:
    """The trainer of `run` on `machine`, with the run's callbacks."""
    import datasets
    from trl import SFTConfig

    datasets.disable_progress_bars()
    args = recipe.trainer_arguments(
        run.config,
        machine,
        output_dir=str(run.path / "checkpoints"),
        train_examples=len(prepared.train),
        eval_examples=len(prepared.eval),
    )
    sample = recipe.eval_sample(run.config, len(prepared.eval))
    scored = prepared.eval if sample is None else [prepared.eval[i] for i in sample]
    trainer = LabelledLogitsSFTTrainer(
        model=model,
        args=SFTConfig(**args),
        train_dataset=datasets.Dataset.from_list(prepared.train),
        eval_dataset=datasets.Dataset.from_list(scored) if scored else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through run events, not stdout
    return trainer


class LabelledLogitsSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer that, on the CPU, projects onto the vocabulary only the positions whose
    next token carries loss.

    Where there is no Triton (the CPU), TRL's fused LM head projects every position, prompt and
    padding included, and projects them again in the backward pass. The vocabulary projection is a
    large share of a small model's work (SmolLM2-135M: 28 M of its 135 M weights), and with the
    loss on the response only, about half of the positions need it. The loss is the same: the
    labelled tokens' summed cross-entropy over their count. A batch whose logits would exceed
    LOGITS_LIMIT entries goes through TRL's head, which never holds more than a tile of them.

    A right-padded batch (TRL's collator pads on the right) also goes without its attention mask:
    under causal attention no real token can see the padding after it, so the mask changes nothing
    that is scored, and without it attention takes its causal fast path.

    The LoRA layers' dropout becomes CPUDropout, and without bf16 the adapter of a quantized base
    stays in float32 (keep_adapter_in_float32).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.args.bf16:
            keep_adapter_in_float32(self.model)
        if self.args.device.type == "cpu":
            use_cpu_dropout(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.device.type != "cpu":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"][:, 1:]  # position p predicts token p + 1
        scored = (labels != -100).any(dim=0).nonzero().squeeze(-1)  # the positions any example learns at
        vocabulary = self.model.get_output_embeddings().weight.shape[0]
        if labels.shape[0] * len(scored) * vocabulary > LOGITS_LIMIT:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        features = {key: value for key, value in inputs.items() if key != "labels"}
        mask = features.get("attention_mask")
        if mask is not None and bool((mask[:, 1:] <= mask[:, :-1]).all()):  # padding only at the end
            del features["attention_mask"]
        outputs = model(**features, use_cache=False, logits_to_keep=scored)
        targets = labels[:, scored]
        loss = torch.nn.functional.cross_entropy(
            outputs.logits.flatten(0, 1).float(), targets.flatten(), reduction="sum"
        )
        count = (targets != -100).sum() if num_items_in_batch is None else num_items_in_batch
        loss = loss / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # the processes' gradients are averaged
        return (loss, outputs) if return_outputs else loss


class CPUDropout(torch.nn.Module):
    """torch's dropout (each element kept with probability 1 - p, scaled by 1 / (1 - p)) with its
    mask drawn from numpy's SFC64 generator: on the CPU torch draws the mask one float at a time,
    which made LoRA's dropout 5 % of a training step (benchmarks/step_profile.py).
    Each call seeds the generator from torch's, so torch.manual_seed still decides every mask."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        words = np.random.SFC64(seed).random_raw((x.numel() + 1) // 2).view(np.uint32)[: x.numel()]
        keep = np.multiply(words >= round(self.p * 2**32), 1 / (1 - self.p), dtype=np.float32)
        return x * torch.from_numpy(keep).view(x.shape).to(x.device, x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_cpu_dropout(model: torch.nn.Module) -> None:
    """Replace the LoRA layers' torch dropout in `model` by CPUDropout with the same p."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, dropout in dropouts.items():
                if type(dropout) is torch.nn.Dropout and 0 < dropout.p < 1:
                    dropouts[name] = CPUDropout(dropout.p)


def keep_adapter_in_float32(model: torch.nn.Module) -> None:
    """Undo TRL's cast of a quantized base's trainable weights to bfloat16, which suits bf16 mixed
    precision (QLoRA's recipe) only: a CPU multiplies bfloat16 matrices several times slower than
    float32 ones (a 4-bit step of the built-in model took 2.3 times a float32 one), and fp16 mixed
    precision keeps float32 weights."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype == torch.bfloat16:
            parameter.data = parameter.data.float()


class EvaluateAtTheEnd(TrainerCallback):
    """Evaluates after the last step too, whatever eval_steps: a run's final eval loss is its own."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == state.max_steps and args.eval_strategy != "no":
            control.should_evaluate = True
