"""`lorahub-serve adapt` on the real SmolLM2-135M with 20 modules and 5 BIG-bench examples
(slow: needs the model in the cache; `pytest -m slow tests/test_smollm2_adapt.py`)."""

import json
import subprocess
import sys

import pytest
import torch

from lorahub_serve.models import ModelNotFoundError, resolve_model

pytestmark = [pytest.mark.slow, pytest.mark.model]


@pytest.fixture(scope="module")
def smollm2():
    try:
        return resolve_model("smollm2-135m")
    except ModelNotFoundError:
        pytest.skip("SmolLM2-135M is not in the cache (lorahub-serve model fetch smollm2-135m)")


def test_adapt_cli_on_smollm2_exports_a_peft_adapter_with_the_reported_loss(smollm2, tmp_path):
    from peft import PeftModel

    from lorahub_serve.data import tasks
    from lorahub_serve.data.examples import write_jsonl
    from lorahub_serve.models import load_base
    from lorahub_serve.testing import random_hub, reference_loss

    base, tok = load_base(smollm2)
    hub = random_hub(base, tmp_path / "hub", n=20, ranks=(8,), base_name="smollm2-135m", scale=0.25)
    shots, _ = tasks.split(tasks.load_task("navigate"), 5, 50, seed=1)
    write_jsonl(tmp_path / "ex.jsonl", shots)
    out = tmp_path / "store" / "navigate"
    subprocess.run([sys.executable, "-m", "lorahub_serve.cli", "adapt", "--model", "smollm2-135m",
                    "--hub", str(hub), "--examples", str(tmp_path / "ex.jsonl"), "--out", str(out),
                    "--modules", "20", "--budget", "24", "--seed", "1"], check=True)
    meta = json.loads((out / "lorahub.json").read_text())
    assert len(meta["modules"]) == 20 and len(meta["objective_history"]) == 24
    peft = PeftModel.from_pretrained(load_base(smollm2)[0], out).eval()
    records = [{"input": e.input, "output": e.output} for e in shots]
    with torch.inference_mode():
        assert reference_loss(peft, tok, records) == pytest.approx(meta["best_loss"], abs=1e-4)
