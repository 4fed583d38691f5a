"""The trainer's CPU loss (sft.py) projects fewer positions onto the vocabulary and changes nothing
that is learnt: the same step losses, eval loss and adapter weights as TRL's own SFTTrainer. Its
CPU dropout draws other masks than torch's, from the same distribution: the comparisons give TRL's
trainer the same dropout, which is tested on its own.

Real objects throughout: the tiny Llama with SmolLM2's tokenizer, the bundled products encoded by
`lora_magic.data.prepare` (loss on the response only), the recipe's trainer arguments.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

TOLERANCE = 1e-5  # float32 sums in another order; differences seen are ~1e-7


@pytest.fixture(scope="module")
def prepared(tiny_model_dir):
    from lora_magic.core.config import RunConfig
    from lora_magic.data.prepare import prepare
    from lora_magic.data.sources import bundled_dataset, load_records
    from lora_magic.data.tokens import load_tokenizer

    config = RunConfig(
        model=tiny_model_dir,
        data=load_records(str(bundled_dataset()))[:44],
        steps=5,
        batch_size=4,
        grad_accum=2,
        learning_rate=1e-2,
        eval_every=5,
    )
    tokenizer = load_tokenizer(config)
    return config, tokenizer, prepare(config, tokenizer)


def build(trainer_class, prepared, tmp_path, **settings):
    """`trainer_class` on a fresh tiny model with the run config's adapter and trainer arguments."""
    import datasets
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    from lora_magic.core import recipe
    from lora_magic.core.hardware import Machine
    from lora_magic.model.targets import lora_config

    config, tokenizer, data = prepared
    config = config.replace(**settings)
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32)
    set_seed(config.seed)
    model = get_peft_model(model, lora_config(config, ["q_proj", "v_proj"]))
    arguments = recipe.trainer_arguments(
        config,
        Machine("CPU", 8.0, gpu=False),
        output_dir=str(tmp_path / trainer_class.__name__),
        train_examples=len(data.train),
        eval_examples=len(data.eval),
    )
    from trl import SFTConfig, SFTTrainer

    from lora_magic.training.sft import use_cpu_dropout

    if trainer_class is SFTTrainer:
        use_cpu_dropout(model)  # as the engine's trainer does on the CPU
    trainer = trainer_class(
        model=model,
        args=SFTConfig(**arguments),
        train_dataset=datasets.Dataset.from_list(data.train),
        eval_dataset=datasets.Dataset.from_list(data.eval),
        processing_class=tokenizer,
    )
    return trainer, model


def train(trainer_class, prepared, tmp_path, watch=None):
    """Five steps of `trainer_class` from the same initial adapter: (step losses, eval losses,
    the adapter's weights). `watch(model)` gives a forward hook for the output head."""
    from peft import get_peft_model_state_dict

    trainer, model = build(trainer_class, prepared, tmp_path)
    if watch:
        model.get_base_model().lm_head.register_forward_hook(watch(model))
    trainer.train()
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    return losses, eval_losses, get_peft_model_state_dict(model)


def test_the_cpu_loss_learns_exactly_what_trls_loss_learns(prepared, tmp_path):
    """With gradient accumulation (2 batches of 4 per step), an eval at the start and at the end."""
    from trl import SFTTrainer

    from lora_magic.training.sft import LabelledLogitsSFTTrainer

    ours = train(LabelledLogitsSFTTrainer, prepared, tmp_path)
    theirs = train(SFTTrainer, prepared, tmp_path)
    assert len(ours[0]) == 5 and len(ours[1]) == 2
    assert ours[0] == pytest.approx(theirs[0], abs=TOLERANCE)
    assert ours[1] == pytest.approx(theirs[1], abs=TOLERANCE)
    assert ours[0][-1] < ours[0][0]  # it learnt something to compare
    for key, weight in ours[2].items():
        assert torch.allclose(weight, theirs[2][key], atol=TOLERANCE), key


def test_the_cpu_loss_projects_only_the_positions_that_carry_loss(prepared, tmp_path):
    """Each batch projects the positions at which any of its examples has a label: on the bundled
    products under 60 % of its positions, against all of them for TRL's head on a CPU. The padded
    batches reach the model without their attention mask (the test above: same losses)."""
    from lora_magic.training.sft import LabelledLogitsSFTTrainer

    batches, projected, masks = [], [], []

    class Watched(LabelledLogitsSFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            labelled = inputs["labels"][:, 1:] != -100
            padded = bool((inputs["attention_mask"] == 0).any())
            batches.append((int(labelled.any(dim=0).sum()), labelled.shape[1] + 1, padded))
            return super().compute_loss(model, inputs, *args, **kwargs)

    def watch(model):
        model.get_base_model().model.register_forward_pre_hook(
            lambda module, args, kwargs: masks.append(kwargs.get("attention_mask")), with_kwargs=True
        )
        return lambda module, args, out: projected.append(out.shape[1])

    train(Watched, prepared, tmp_path, watch=watch)
    assert (
        len(projected) == len(batches) == 5 * 2 + 2
    )  # training batches, then an eval batch at start and end
    for positions, (scored, length, _) in zip(projected, batches):
        assert positions == scored < 0.6 * length
    assert sum(padded for _, _, padded in batches) >= 6 and masks == [None] * len(batches)


def test_a_batch_with_too_many_logits_goes_through_trls_tiled_head(prepared, tmp_path, monkeypatch):
    from trl import SFTTrainer

    from lora_magic.training import sft

    monkeypatch.setattr(sft, "LOGITS_LIMIT", 1000)
    projected = []
    capped = train(
        sft.LabelledLogitsSFTTrainer, prepared, tmp_path, watch=lambda model: lambda *_: projected.append(1)
    )
    assert not projected  # TRL's fused head multiplies by the head's weight, not through its module
    assert capped[0] == pytest.approx(train(SFTTrainer, prepared, tmp_path)[0], abs=TOLERANCE)


def test_cpu_dropout_keeps_each_element_with_probability_1_minus_p_and_scales_it():
    from lora_magic.training.sft import CPUDropout

    dropout = CPUDropout(0.05).train()
    x = torch.ones(1_000, 1_000, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.95) < 5 * (0.05 * 0.95 / x.numel()) ** 0.5  # five sigma
    assert torch.equal(y[kept], torch.full_like(y[kept], 1 / 0.95))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes where the element was kept, scaled
    assert kept.float().mean(dim=0).std() < 0.02 and kept.float().mean(dim=1).std() < 0.02  # no stripes
    torch.manual_seed(0)
    assert torch.equal(dropout(x) != 0, kept)  # torch's seed decides the mask
    assert not torch.equal(dropout(x) != 0, kept)  # and each call draws a new one
    assert dropout.eval()(x) is x


def test_on_the_cpu_the_lora_layers_train_with_cpu_dropout(prepared, tmp_path):
    from lora_magic.training.sft import CPUDropout, LabelledLogitsSFTTrainer

    _, model = build(LabelledLogitsSFTTrainer, prepared, tmp_path, dropout=0.05)
    dropouts = [d for m in model.modules() if hasattr(m, "lora_A") for d in m.lora_dropout.values()]
    assert dropouts and all(type(d) is CPUDropout and d.p == 0.05 for d in dropouts)
