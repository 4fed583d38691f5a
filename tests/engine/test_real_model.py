"""Behaviour on the built-in SmolLM2-135M: LoRA and QLoRA learn the trained format; exports agree.

Each quantisation is trained once per module (a few CPU minutes) and the tests share the runs.

Margin, checked with benchmarks/quantization.py (the same runs) on a 2-core AMD EPYC with AVX2
only. At lr 1e-3, seeds 42 and 1: eval loss 3.46 -> 0.56 and 0.52 in float32, 3.65 -> 0.54 and
0.51 in 4-bit (criterion: below 0.6 of the start, i.e. about 2.1), the 4-bit run within 2-3 % of
float32's (criterion 10 %), 3/3 held-out answers ending with '### End' for both bases. At the
default lr 2e-4, seed 42: float32 3.46 -> 1.73, 4-bit 3.65 -> 1.81 (4.7 % apart; criteria: below
0.7 of the start, within 10 %). Earlier, with torch's dropout instead of sft.CPUDropout (the same
losses to within 0.002), also on a 2-core AMD EPYC with AVX512-BF16: seed 1 at lr 2e-4, float32
1.71 and 4-bit 1.78; on the 8 eval rows at lr 1e-3, seed 1, token-F1 0.25 -> 0.73, ROUGE-L
0.23 -> 0.72 and terminated 0 -> 100 %; at lr 1.5e-3 (seed 42), float32 3.46 -> 0.33 and 4-bit
3.65 -> 0.34, 3/3 terminated each.
"""

import time

import pytest

import lora_magic as lm
from lora_magic.core.config import Sampling
from lora_magic.data.sources import bundled_dataset, load_records
from lora_magic.data.templates import alpaca_prompt
from lora_magic.model.answering import Question, answer_all
from lora_magic.model.scoring import examples_for

pytestmark = pytest.mark.real_model

HELD_OUT = [  # products and categories the bundled training rows do not contain
    "Create a detailed description for the following product: Zenith Desk Lamp, belonging to category: Lighting",
    "Create a detailed description for the following product: Polar Kettle, belonging to category: Kitchen Appliance",
    "Create a detailed description for the following product: Orbit Backpack, belonging to category: Travel",
]
STEPS, LEARNING_RATE = 40, 1e-3


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """`tuned(quantization, learning_rate)`: a finished run on the bundled products (40 steps,
    all-linear, batch 4, eval on 8 rows it does not train on), trained on first use."""
    runs_dir, finished = tmp_path_factory.mktemp("runs"), {}
    records = load_records(str(bundled_dataset()))

    def tuned(quantization: str, learning_rate: float = LEARNING_RATE):
        key = (quantization, learning_rate)
        if key not in finished:
            finished[key] = lm.train(
                model="smollm2-135m",
                quantization=quantization,
                data=records[:120],
                eval_data=records[120:128],
                steps=STEPS,
                learning_rate=learning_rate,
                targets="all-linear",
                eval_every=STEPS,
                name=f"products-{quantization}-lr{learning_rate:g}".replace(".", "_"),
                runs_dir=runs_dir,
            ).wait()
        run = finished[key]
        if run.name not in lm.session().adapters:  # the session is freed after each test
            lm.session().load_adapter(run.name, runs_dir=runs_dir)
        return run

    return tuned


def assert_eval_loss_fell(run):
    assert run.status == "completed", run.error
    first, last = run.eval_losses[0][1], run.eval_losses[-1][1]
    assert last < 0.6 * first, (first, last)


def ends_with_terminator(answer: str) -> bool:
    return answer.rstrip().endswith("### End")


def test_lora_learns_the_format_the_base_does_not_follow(tuned):
    run = tuned("none")
    assert_eval_loss_fell(run)
    answers = lm.compare(HELD_OUT, adapters=["base", run.name], max_new_tokens=60)
    assert not any("### End" in a["base"] for a in answers), answers
    assert all(ends_with_terminator(a[run.name]) for a in answers), answers


def test_qlora_4bit_learns_the_format_as_fast_as_float32(tuned):
    """On a 2-core AMD EPYC with AVX512-BF16 the eval loss went 3.65 -> 0.54 in 4-bit against
    3.46 -> 0.55 in float32; before 4-bit layers were kept trainable (model/loading.py) it diverged to 5.0."""
    full_precision = tuned("none").eval_losses[-1][1]
    run = tuned("4bit")
    assert_eval_loss_fell(run)
    assert abs(run.eval_losses[-1][1] - full_precision) <= 0.1 * full_precision, run.eval_losses
    # The base's answers are checked in full precision above: on a CPU every 4-bit token costs a
    # dequantisation of all the weights, and the base never stops early.
    answers = lm.compare(HELD_OUT, adapters=[run.name], max_new_tokens=60)
    assert all(ends_with_terminator(a[run.name]) for a in answers), answers


@pytest.mark.xdist_group("real-model-default-learning-rate")  # its runs are its own: another worker's
def test_with_the_default_learning_rate_4bit_learns_as_fast_as_float32(tuned):
    """The defaults (lr 2e-4, no warm-up): on a 2-core AMD EPYC the eval loss went 3.46 -> 1.73 in
    float32 and 3.65 -> 1.81 in 4-bit (8-bit: 3.47 -> 1.75)."""
    full_precision, quantized = tuned("none", 2e-4), tuned("4bit", 2e-4)
    for run in (full_precision, quantized):
        assert run.status == "completed", run.error
        assert run.eval_losses[-1][1] < 0.7 * run.eval_losses[0][1], run.eval_losses
    final = full_precision.eval_losses[-1][1]
    assert abs(quantized.eval_losses[-1][1] - final) <= 0.1 * final, (quantized.eval_losses, final)


def test_evaluation_scores_the_tuned_model_above_the_base_on_held_out_products(tuned):
    """%lora eval on the 8 held-out rows: the tuned model's answers overlap the references more
    than the base's and end with the template's terminator, which the base never writes."""
    run = tuned("none")
    evaluation = lm.evaluate(run.name, runs_dir=run.store.root)
    base, adapter = evaluation.metrics["base"], evaluation.metrics[run.name]
    assert len(evaluation.samples) == 8, evaluation
    assert adapter["token_f1"] > base["token_f1"] and adapter["rouge_l"] > base["rouge_l"], evaluation
    assert adapter["terminated"] >= 0.9 and base["terminated"] == 0, evaluation
    assert adapter["eval_loss"] < base["eval_loss"], evaluation
    # The evaluation answered the base and the adapter in one mixed batch; one prompt and one model
    # at a time (the adapter folded into the weights) gives the same answers, but at a near-tie.
    examples = examples_for(
        load_records(str(run.store.path(run.name) / "data" / "eval.jsonl")),
        run.config,
        lm.session().tokenizer,
        4,
    )
    questions = [Question(name, e.prompt) for name in ("base", run.name) for e in examples]
    alone = answer_all(questions, Sampling(max_new_tokens=evaluation.max_new_tokens), batch_size=1)
    for question, sample, answer in zip(questions, evaluation.samples[:4] * 2, alone):
        batched = sample["answers"][question.model]
        if batched != answer.text:
            gap = near_tie(question, answer.text, batched)
            assert gap < 0.01, (question.model, sample["prompt"], answer.text, batched, gap)


def near_tie(question, alone: str, batched: str) -> float:
    """Where two greedy answers part, the gap between the two tokens' logits as the model saw it
    answering alone: float32 rounding that depends on the batch flips only a near-tie."""
    import torch

    shared = lm.session()
    eos = shared.tokenizer.eos_token_id
    first, second = (
        [*shared.tokenizer(text, add_special_tokens=False)["input_ids"], eos] for text in (alone, batched)
    )
    at = next(k for k, (a, b) in enumerate(zip(first, second)) if a != b)
    ids = shared.tokenizer(question.text, return_tensors="pt")["input_ids"]
    ids = torch.cat([ids, torch.tensor([first[:at]], dtype=ids.dtype)], dim=1)
    with shared.answering_as(question.model), torch.no_grad():
        logits = shared.model(input_ids=ids).logits[0, -1]
    return abs(float(logits[first[at]] - logits[second[at]]))


def test_stop_ends_a_long_batched_answering_within_a_second(tuned):
    run = tuned("none")
    questions = [Question(name, alpaca_prompt(p)) for p in HELD_OUT for name in ("base", run.name)]
    decoding, stopped = [], []  # when the first text came (the prompts are read), when Stop came

    def stop() -> bool:
        if decoding and not stopped and time.perf_counter() - decoding[0] > 1:
            stopped.append(time.perf_counter())
        return bool(stopped)

    def heard(i: int, piece: str) -> None:
        decoding or decoding.append(time.perf_counter())

    answers = answer_all(questions, Sampling(max_new_tokens=4096), stop=stop, on_text=heard)
    assert time.perf_counter() - stopped[0] < 1.0
    assert 0 < max(a.tokens for a in answers) < 200, answers  # a few seconds' tokens, not 4096


def test_merged_export_gives_the_same_greedy_answer(tuned, tmp_path):
    run = tuned("none")
    answer = lm.compare(HELD_OUT[0], adapters=[run.name], max_new_tokens=40)[run.name]
    merged = lm.merge(run.name, tmp_path / "merged")
    assert (merged.path / "model.safetensors").is_file() and (merged.path / "tokenizer.json").is_file()
    lm.free()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged.path)
    tokenizer = AutoTokenizer.from_pretrained(merged.path)
    inputs = tokenizer(alpaca_prompt(HELD_OUT[0]), return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=40, do_sample=False, top_k=None)
    assert tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True) == answer
