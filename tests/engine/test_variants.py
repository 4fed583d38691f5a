"""LoRA variants on the tiny model: DoRA, rsLoRA and the gaussian, PiSSA and OLoRA initialisations
each train; the adapter each saves gives the trained model's logits on the untouched base, in a
fresh process with plain PEFT; the session gets its base back from PiSSA and OLoRA; the plan
counts DoRA's magnitudes; every variant merges and DoRA exports; and what PEFT cannot do is
refused before anything loads."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import lora_magic as lm
from lora_magic.core.config import RunConfig
from lora_magic.core.errors import ConfigError, RunError
from lora_magic.core.store import RunStore
from lora_magic.model.loading import load_base
from lora_magic.model.session import Session, session

VARIANTS = {
    "dora": {"dora": True},
    "rslora": {"rslora": True},
    "gaussian": {"init": "gaussian"},
    "pissa": {"init": "pissa"},
    "olora": {"init": "olora"},
}
PROMPT = "Describe product 3, the amber bottle."
FRESH_PROCESS = """
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, ids, out, *folders = sys.argv[1:]
ids = torch.tensor(json.loads(ids))
logits = {}
for folder in folders:
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder).eval()
    with torch.no_grad():
        logits[folder] = model(ids).logits
torch.save(logits, out)
"""


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        model.train(was_training)


def train(tiny_model_dir, records, runs_dir, name, **settings):
    return lm.train(
        model=tiny_model_dir,
        data=records,
        steps=4,
        learning_rate=1e-2,
        eval_fraction=0.25,
        name=name,
        runs_dir=runs_dir,
        **settings,
    ).wait()


@pytest.fixture(scope="module")
def ids(tiny_model_dir) -> torch.Tensor:
    return AutoTokenizer.from_pretrained(tiny_model_dir)(PROMPT, return_tensors="pt")["input_ids"]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, records, ids, tmp_path_factory):
    """Every variant trained for 4 steps, one after another on the session's one base. Returns the
    runs, their store, the logits each trained model gave as its run ended (before the session
    settled it), and, once all had trained, the logits each adapter and the base give in the session."""
    runs_dir = tmp_path_factory.mktemp("runs")
    at_the_end, settle = {}, Session.settle

    def settle_seen(self, name):
        at_the_end[name] = logits(self.model, ids)
        settle(self, name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Session, "settle", settle_seen)
        runs = {
            variant: train(tiny_model_dir, records, runs_dir, variant, **settings)
            for variant, settings in VARIANTS.items()
        }
    shared = session()
    afterwards = {}
    for variant in VARIANTS:
        with shared.answering_as(variant):
            afterwards[variant] = logits(shared.model, ids)
    with shared.model.disable_adapter():
        afterwards["base"] = logits(shared.model, ids)
    lm.free()
    return runs, runs_dir, at_the_end, afterwards


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_with_a_finite_falling_loss(trained, variant):
    run = trained[0][variant]
    assert run.status == "completed", run.error
    losses = [loss for _, loss in run.losses]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]


def test_each_saved_adapter_gives_the_trained_models_logits_on_the_untouched_base_in_a_fresh_process(
    trained, tiny_model_dir, ids, tmp_path
):
    runs, _, at_the_end, afterwards = trained
    folders = [str(run.path / "adapter") for run in runs.values()]
    out = tmp_path / "logits.pt"
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, tiny_model_dir, json.dumps(ids.tolist()), str(out), *folders],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = torch.load(out)
    for variant, run in runs.items():
        fresh = loaded[str(run.path / "adapter")]
        assert torch.allclose(fresh, at_the_end[variant], atol=1e-5), variant
        assert (fresh - afterwards["base"]).abs().max() > 1e-2, f"{variant} learnt nothing"


def test_pissa_and_olora_are_saved_as_a_plain_lora_of_twice_the_rank_and_dora_with_its_magnitudes(trained):
    runs = trained[0]
    for variant in ("pissa", "olora"):
        saved = json.loads((runs[variant].path / "adapter" / "adapter_config.json").read_text())
        assert (saved["r"], saved["lora_alpha"], saved["init_lora_weights"]) == (16, 32, True), variant
        weights = load_file(runs[variant].path / "adapter" / "adapter_model.safetensors")
        assert {w.shape[0] for k, w in weights.items() if "lora_A" in k} == {16}
        card = (runs[variant].path / "adapter" / "README.md").read_text()
        assert f"initialised with {variant}, saved as a plain LoRA of rank 16" in card
    dora = load_file(runs["dora"].path / "adapter" / "adapter_model.safetensors")
    assert any(key.endswith("lora_magnitude_vector") for key in dora)
    assert "q_proj, v_proj, DoRA\n" in (runs["dora"].path / "adapter" / "README.md").read_text()


def test_the_session_gets_its_base_back_and_every_adapter_answers_as_it_trained(trained, tiny_model_dir, ids):
    _, _, at_the_end, afterwards = trained
    untouched = logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir), ids)
    assert torch.allclose(afterwards["base"], untouched, atol=1e-5)
    for variant in VARIANTS:
        assert torch.allclose(afterwards[variant], at_the_end[variant], atol=1e-5), variant


def test_deleting_a_pissa_adapter_that_never_trained_gives_the_base_back(tiny_model_dir, ids):
    config = RunConfig(model=tiny_model_dir, init="pissa")
    shared = session()
    shared.ensure_base(config)
    before = logits(shared.model, ids)
    shared.add_training_adapter("never-trained", config, ["q_proj", "v_proj"])
    shared.delete_adapter("never-trained")
    assert torch.allclose(logits(shared.model, ids), before, atol=1e-5)


def test_a_resumed_pissa_run_ends_where_an_uninterrupted_one_does(tiny_model_dir, records, runs_dir, ids):
    straight = train(tiny_model_dir, records, runs_dir, "straight", init="pissa", save_every=2)
    train(tiny_model_dir, records, runs_dir, "interrupted", init="pissa", save_every=2)
    # as a kernel that died after the checkpoint of step 2 leaves the run's folder
    store = RunStore(runs_dir)
    store.update("interrupted", status="interrupted")
    shutil.rmtree(store.path("interrupted") / "checkpoints" / "checkpoint-4")
    lm.free()
    resumed = lm.resume("interrupted").wait()  # initialised again from the untouched base
    assert resumed.status == "completed" and resumed.step == 4, resumed.error
    session().load_adapter(str(straight.path / "adapter"), name="loaded-straight")
    with session().answering_as("interrupted"):
        again = logits(session().model, ids)
    with session().answering_as("loaded-straight"):
        expected = logits(session().model, ids)
    # to the rounding of the base each started from (the interrupted run first started after
    # "straight" had given the session's base back)
    assert torch.allclose(again, expected, atol=1e-4)


def test_rolling_back_a_pissa_run_after_it_ended_is_refused_with_the_way_that_works(trained):
    with pytest.raises(
        RunError, match=r"trained with init='pissa' on a changed base.*roll back while it trains"
    ):
        trained[0]["pissa"].rollback()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"init": "pissa", "quantization": "4bit"},
            r"init='pissa' needs a full-precision base, but quantization='4bit'.*use quantization='none'",
        ),
        ({"init": "olora", "quantization": "8bit"}, r"init='olora' needs a full-precision base"),
        (
            {"init": "pissa", "dora": True},
            r"init='pissa' cannot go with dora=True.*init 'kaiming' or 'gaussian'",
        ),
        ({"dora": True, "quantization": "8bit"}, r"dora=True cannot train on an 8bit base.*'4bit' or 'none'"),
        ({"init": "loftq"}, r"init='loftq' is not valid; choose one of: kaiming, gaussian, pissa, olora"),
        ({"init": "eva"}, r"init='eva' is not valid"),
        ({"dora": "yes"}, r"dora='yes' is not valid; it must be true or false"),
    ],
)
def test_what_peft_cannot_do_here_is_refused_before_anything_loads(settings, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**settings)


def test_dora_trains_on_a_4bit_base_and_its_adapter_loads_on_a_fresh_one(
    tiny_model_dir, records, runs_dir, ids
):
    run = train(tiny_model_dir, records, runs_dir, "dora-4bit", dora=True, quantization="4bit")
    assert run.status == "completed" and all(math.isfinite(loss) for _, loss in run.losses), run.error
    with session().answering_as("dora-4bit"):
        trained = logits(session().model, ids)
    fresh = load_base(RunConfig(model=tiny_model_dir, quantization="4bit"))[0]
    loaded = PeftModel.from_pretrained(fresh, str(run.path / "adapter"))
    # a 4-bit base loaded afresh answers within bitsandbytes' rounding of the session's (6e-4 apart
    # with a plain LoRA adapter, 1.6e-3 with DoRA's; the adapter moves the logits by about 0.5)
    assert torch.allclose(logits(loaded, ids), trained, atol=5e-3)


def test_the_plan_counts_doras_magnitude_vectors_and_the_outputs_it_keeps(tiny_model_dir):
    plain, dora = lm.plan(model=tiny_model_dir), lm.plan(model=tiny_model_dir, dora=True)
    config = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    head_size = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    # one magnitude per output feature of each adapted layer: q_proj and v_proj of every decoder layer
    outputs = config["hidden_size"] + config["num_key_value_heads"] * head_size
    magnitudes = config["num_hidden_layers"] * outputs
    assert dora.trainable_params == plain.trainable_params + magnitudes
    assert dora.total_params == plain.total_params + magnitudes
    assert dora.memory.activations > plain.memory.activations  # the outputs DoRA keeps for its backward


def test_a_pissa_plan_that_does_not_fit_suggests_only_what_pissa_can_do(openllama_3b_dir):
    plan = lm.plan(model=openllama_3b_dir, gpu="T4", init="pissa", batch_size=16, max_length=2048)
    assert plan.verdict == "does not fit" and plan.changes
    assert all("quantization" not in change.settings for change in plan.changes)  # PiSSA needs a float base


@pytest.mark.parametrize("variant", VARIANTS)
def test_merging_gives_the_trained_models_logits(trained, variant, ids, tmp_path):
    _, runs_dir, at_the_end, _ = trained
    merged = lm.merge(variant, tmp_path / "merged", runs_dir=runs_dir)
    assert torch.allclose(
        logits(AutoModelForCausalLM.from_pretrained(merged.path), ids), at_the_end[variant], atol=1e-4
    )


def test_a_dora_run_exports_to_gguf_as_it_trained(trained, ids, tmp_path):
    _, runs_dir, at_the_end, _ = trained
    exported = lm.export("dora", tmp_path / "gguf", runs_dir=runs_dir)
    model = AutoModelForCausalLM.from_pretrained(
        exported.path, gguf_file=exported.gguf.name, dtype=torch.float32
    )
    expected = at_the_end["dora"]
    assert (logits(model, ids) - expected).abs().max() < 1e-2 * expected.abs().max()
