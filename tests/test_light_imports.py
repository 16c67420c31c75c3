"""The engine's process skips scikit-learn and matplotlib, and both still import afterwards."""

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_engine_imports_skip_sklearn_and_pyplot_and_leave_them_importable():
    out = _run("""
        import sys
        import lorahub_serve.engine.adapt  # noqa: F401  (the CPU engine: no Triton either)
        assert "triton" not in sys.modules
        import numpy as np
        from lorahub_serve.light_imports import load_optimizers, load_transformers
        load_transformers()
        load_optimizers()
        from transformers import AutoModelForCausalLM  # noqa: F401
        print("loaded", "sklearn" in sys.modules, "matplotlib" in sys.modules)
        import torch
        print("triton kept out", torch.cuda.is_available() or "triton" not in sys.modules)
        import nevergrad as ng
        param = ng.p.Array(init=np.zeros(3)).set_mutation(sigma=0.3)
        param.random_state = np.random.RandomState(0)  # seeded: the test must not be flaky
        opt = ng.families.ParametrizedCMA(popsize=4)(param, budget=80)
        for _ in range(80):
            c = opt.ask()
            opt.tell(c, float(((c.value - 1.0) ** 2).sum()))
        print("cma", float(np.abs(opt.provide_recommendation().value - 1.0).max()) < 0.5)
        import matplotlib.pyplot  # noqa: F401
        import sklearn  # noqa: F401
        import triton  # noqa: F401
        print("after", "sklearn" in sys.modules, "matplotlib.pyplot" in sys.modules, "triton" in sys.modules)
    """)
    assert "loaded False False" in out
    assert "cma True" in out  # pycma still optimises without its plotting
    assert "triton kept out True" in out
    assert "after True True True" in out


def test_a_package_already_imported_is_not_hidden():
    out = _run("""
        import sys
        import sklearn  # noqa: F401
        from lorahub_serve.light_imports import hidden
        with hidden("sklearn"):
            import sklearn.base  # noqa: F401
        print("kept", sys.modules["sklearn"] is not None)
    """)
    assert "kept True" in out


def test_the_command_exits_with_mains_code_after_writing_everything(tiny_llama_dir, tiny_llama_hub, tmp_path):
    """`lorahub-serve` (cli.run) skips the last garbage collection: the adapter is still whole,
    and a failure still exits non-zero with its message."""
    import json

    from lorahub_serve import testing

    examples = tmp_path / "ex.jsonl"
    examples.write_text("".join(json.dumps(e) + "\n" for e in testing.FEW_SHOT))
    out = tmp_path / "store" / "task"
    cmd = [sys.executable, "-m", "lorahub_serve.cli", "adapt", "--model", str(tiny_llama_dir),
           "--hub", str(tiny_llama_hub), "--examples", str(examples), "--budget", "6", "--out", str(out)]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "leaked" not in ok.stderr  # no binding complains about objects the frozen exit kept
    meta = json.loads((out / "lorahub.json").read_text())
    assert meta["evaluations"] == 6 and (out / "adapter_model.safetensors").stat().st_size > 0
    bad = subprocess.run(cmd[:-2] + ["--budget", "0"], capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode != 0 and "budget" in bad.stderr
