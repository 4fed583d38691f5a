"""`%lora plan` and `%%finetune --plan` in a real IPython shell; the estimate kept with a run."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from lora_magic.core.hardware import GIB
from lora_magic.core.store import RunStore
from lora_magic.experiments.plan import Plan
from lora_magic.widgets import Dashboard


def test_lora_plan_prints_the_plan_for_a_named_gpu(ip, capsys, openllama_3b_dir):
    result = ip.run_cell(f"%lora plan {openllama_3b_dir} --gpu T4 --r 16 --batch-size 32 --max-length 1024")
    result.raise_error()
    out = capsys.readouterr().out
    assert isinstance(result.result, Plan)
    assert f"{openllama_3b_dir} on T4 (14.7 GiB): does not fit" in out
    assert "5,324,800 trainable" in out and "q_proj 2,662,400 · v_proj 2,662,400" in out
    assert "activations (32 × 1024 tokens, fp16, checkpointing)" in out  # a T4: fp16, checkpointing
    assert "Changes that make it fit" in out and "--batch-size 16 --grad-accum 2" in out


def test_a_bad_gpu_name_is_one_line_listing_the_valid_names(ip):
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("lora", "plan --gpu A100")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("unknown GPU 'A100' (did you mean 'A100-40' or 'A100-80'?)")
    assert "T4, L4, A10, A100-40, A100-80, H100" in message and "GiB" in message


def test_finetune_plan_plans_the_cell_instead_of_training(ip, openllama_3b_dir, runs_dir):
    plan = ip.run_cell_magic(
        "finetune",
        "--plan A100-40",
        f"""
        model: {openllama_3b_dir}
        data: df
        r: 8
        targets: all-linear
        include_lm_head: true
        """,
    )
    assert plan.trainable_params == 12_994_560 and plan.verdict == "fits"
    assert plan.machine.name == "A100-40"
    assert not RunStore(runs_dir).names()  # nothing trained


def test_a_run_keeps_its_estimate_and_plan_reads_the_last_settings(ip, runs_dir):
    run = ip.run_line_magic(
        "finetune", "--data df --steps 2 --eval-fraction 0 --r 4 --targets all-linear --name planned"
    )
    assert run.status == "completed"
    estimate = RunStore(runs_dir).read("planned")["plan"]
    assert estimate["trainable_params"] == run.trainable_params
    assert estimate["total_params"] == run.total_params
    assert estimate["memory_gib"]["total"] == pytest.approx(
        sum(v for k, v in estimate["memory_gib"].items() if k != "total"), abs=0.01
    )
    assert estimate["machine"] == "CPU" and estimate["verdict"] == "fits"
    assert "estimated peak" in Dashboard(run).header.value

    plan = ip.run_line_magic("lora", "plan")  # the settings of the last %%finetune
    assert plan.config.r == 4 and plan.trainable_params == run.trainable_params
    assert plan.memory.total / GIB == pytest.approx(estimate["memory_gib"]["total"], abs=0.01)


def test_measure_trains_real_steps_and_leaves_no_trace(ip, capsys, runs_dir):
    from lora_magic.model.session import session

    result = ip.run_cell("%lora plan --measure --batch-size 2 --max-length 64 --device cpu")
    result.raise_error()
    out = capsys.readouterr().out
    assert "measured peak" in out and "s per step" in out
    assert result.result.measured.seconds_per_step > 0
    assert not RunStore(runs_dir).names() and not session().adapters  # the model stays loaded
