"""A run that diverges says so in its events, run.json and dashboard, and can roll back to its best."""

import pytest
import torch
from safetensors.torch import load_file

import lora_magic as lm
from lora_magic.core.store import RunStore
from lora_magic.data.templates import alpaca_prompt
from lora_magic.widgets.dashboard import Dashboard

DIVERGING = {
    "steps": 4,
    "eval_every": 1,
    "learning_rate": 0.5,
    "targets": "all-linear",
    "scheduler": "constant",
}


@pytest.fixture(scope="module")
def taught_model(tiny_model_dir, records, tmp_path_factory):
    """The tiny Llama fully fine-tuned on the test records first: its eval loss is about 2.3, where a
    random model's is 7.0 (the log of its 1,100 tokens) and can hardly get worse. A LoRA run at
    learning rate 0.5 then drives it far above that (seen: 2.9x within four steps)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [alpaca_prompt(r["instruction"]) + r["response"] for r in records]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(30):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("taught")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def saved_adapter(run):
    return load_file(run.path / "adapter" / "adapter_model.safetensors")


def same_weights(saved, state):
    return saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)


def test_a_diverging_run_warns_everywhere_and_rolls_back_when_asked(taught_model, records, runs_dir):
    run = lm.train(model=taught_model, data=records, name="too-hot", **DIVERGING).wait()
    assert run.status == "completed", run.error
    warning = next(e for e in run.events if e["type"] == "warning")
    best = run.best
    assert warning["kind"] == "diverging" and warning["step"] > best.step
    assert f"above its best ({best.eval_loss:.4f} at step {best.step})" in warning["message"]
    assert "lower learning_rate (now 0.5" in warning["message"] and "run.rollback()" in warning["message"]
    record = RunStore(runs_dir).read("too-hot")
    assert record["warning"] == warning["message"] == run.warning
    assert (
        record["metrics"]["best_step"] == best.step and record["metrics"]["best_eval_loss"] == best.eval_loss
    )

    dashboard = Dashboard(run)
    for event in run.events:
        dashboard.handle(event)
    assert "diverging: eval loss" in dashboard.warning.value
    assert dashboard.rollback_button.layout.display != "none"

    assert not same_weights(saved_adapter(run), best.state)
    dashboard.rollback_button.click()
    assert same_weights(saved_adapter(run), best.state)
    assert run.metrics["rolled_back_to_step"] == best.step and run.metrics["eval_loss"] == best.eval_loss
    assert RunStore(runs_dir).read("too-hot")["metrics"]["rolled_back_to_step"] == best.step
    assert "rolled back to the weights of step" in dashboard.warning.value


def test_rolling_back_a_training_run_stops_it_and_saves_the_best_weights(taught_model, records, runs_dir):
    run = lm.train(model=taught_model, data=records, name="stop-and-roll", **DIVERGING)
    run.subscribe(lambda event: event["type"] == "warning" and run.rollback())
    run.wait()
    assert run.status == "stopped" and run.step < DIVERGING["steps"]
    assert run.metrics["rolled_back_to_step"] == run.best.step
    assert same_weights(saved_adapter(run), run.best.state)


def test_rollback_needs_an_evaluation(tiny_model_dir, records, runs_dir):
    run = lm.train(model=tiny_model_dir, data=records, steps=2, eval_fraction=0.0).wait()
    with pytest.raises(lm.RunError, match="no evaluation yet"):
        run.rollback()


def test_with_default_settings_a_climbing_training_loss_warns_in_every_view(taught_model, records, runs_dir):
    """The defaults evaluate a short run at its end only, so no eval loss can show it diverging:
    the smoothed training loss does (the learning rate is the one setting changed)."""
    import io

    from lora_magic.widgets.text_progress import TextProgress

    run = lm.train(
        model=taught_model,
        data=records,
        eval_data=records,
        name="defaults-too-hot",
        learning_rate=0.5,
        steps=12,
    ).wait()
    assert run.status == "completed", run.error
    assert [step for step, _ in run.eval_losses] == [12]  # the default schedule: at the end only
    warning = next(e for e in run.events if e["type"] == "warning")
    assert warning["kind"] == "diverging" and "the training loss (smoothed) is" in warning["message"]
    assert "lower learning_rate (now 0.5" in warning["message"]
    assert RunStore(runs_dir).read("defaults-too-hot")["warning"] == warning["message"]
    shown = io.StringIO()
    text = TextProgress(run, out=shown)
    for event in run.events:
        text.handle(event)
    assert f"warning at step {warning['step']}: diverging: the training loss" in shown.getvalue()


def test_a_loss_that_is_not_a_number_warns_that_training_broke_down(
    tiny_model_dir, records, runs_dir, tmp_path
):
    import shutil

    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    name = next(key for key in weights if key.endswith("norm.weight"))
    weights[name][:] = float("nan")  # a damaged checkpoint: every forward pass gives NaN
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    run = lm.train(model=str(broken), data=records, steps=2, eval_fraction=0, name="nan").wait()
    warning = next(e for e in run.events if e["type"] == "warning")
    assert (
        warning["kind"] == "not-finite"
        and "training broke down at step 1: the loss is nan" in warning["message"]
    )
    assert str(RunStore(runs_dir).read("nan")["loss"]) == "nan"  # shown as it is, not hidden by an average
    dashboard = Dashboard(run)
    for event in run.events:
        dashboard.handle(event)
    assert "training broke down" in dashboard.warning.value
