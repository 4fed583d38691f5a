"""Each LoRA variant learns on the built-in SmolLM2-135M: its eval loss falls.

One short run per variant (q/v, max_length 128, 20 steps at lr 1e-3, batch 4 of the bundled
products), in one test: about 275 s for the four on a 2-core AMD EPYC, the suite running. Margin, seed 42: the eval loss went from 3.46 to 2.03 with DoRA (0.59 of
the start; criterion 0.7), 1.38 with rsLoRA, 1.22 with PiSSA and 1.09 with OLoRA.
"""

import pytest

import lora_magic as lm
from lora_magic.data.sources import bundled_dataset, load_records

pytestmark = pytest.mark.real_model

VARIANTS = {
    "dora": {"dora": True},
    "rslora": {"rslora": True},
    "pissa": {"init": "pissa"},
    "olora": {"init": "olora"},
}


def test_each_variants_eval_loss_falls(tmp_path):
    """One test for the four runs: as a module fixture shared by four tests, the suite's two-worker
    run trained them twice (setups of 281 s and 270 s)."""
    records = load_records(str(bundled_dataset()))
    fell = {}
    for variant, settings in VARIANTS.items():
        run = lm.train(
            model="smollm2-135m",
            data=records[:80],
            eval_data=records[120:128],
            steps=20,
            learning_rate=1e-3,
            max_length=128,
            eval_every=20,
            name=variant,
            runs_dir=tmp_path,
            **settings,
        ).wait()
        assert run.status == "completed", (variant, run.error)
        (_, first), (_, last) = run.eval_losses[0], run.eval_losses[-1]
        fell[variant] = (first, last)
    assert all(last < 0.7 * first for first, last in fell.values()), fell
