"""Shared fixtures: tiny random models and hubs built offline in seconds.

Without CUDA, Triton kernels can only run through its interpreter, which must be switched on
before triton is first imported: that happens here, before any test module loads.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# `--dtype auto` is bf16 on CPUs with native bf16 and fp32 on others: pin fp32 (subprocesses and
# Ray actors inherit it) so the suite's equivalence tolerances hold on any CPU. The choice itself
# is tested with explicit /proc/cpuinfo texts (tests/engine/test_dtype_warmup.py).
os.environ.setdefault("LORAHUB_SERVE_CPU_BF16", "0")

from pathlib import Path

import pytest

from lorahub_serve.data import bbh_official, bigbench

# Task data: reasoning-gym generates its tasks offline; the official BBH files are read from the
# copy beside the project (../shared/data/bbh; never committed), unless LORAHUB_BBH names another.
# Subprocesses, vLLM workers and Ray actors inherit the variable. BIG-bench left PyPI: its loader's
# tests read small fixtures (tests/fixtures/bigbench); LORAHUB_TEST_REAL_BIGBENCH=1 with
# LORAHUB_BIGBENCH=<copy> runs the `realdata` tests on the real files as well.
SHARED_BBH = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbh"
if SHARED_BBH.is_dir():
    os.environ.setdefault(bbh_official.SOURCE_ENV, str(SHARED_BBH))
REAL_BIGBENCH = os.environ.get("LORAHUB_TEST_REAL_BIGBENCH") == "1"

from lorahub_serve import testing


def pytest_collection_modifyitems(config, items):
    """`realdata` tests check facts of the real BIG-bench files: they run only when given them."""
    if REAL_BIGBENCH and os.environ.get(bigbench.SOURCE_ENV):
        return
    why = ("needs the real BIG-bench data: LORAHUB_TEST_REAL_BIGBENCH=1 and LORAHUB_BIGBENCH="
           "<sdist or task folder>")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=why))


BIGBENCH_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bigbench"


@pytest.fixture
def bigbench_fixtures(monkeypatch):
    """BIG-bench read from the schema fixtures (or, in `realdata` runs, from the caller's copy)."""
    if not REAL_BIGBENCH:
        monkeypatch.setenv(bigbench.SOURCE_ENV, str(BIGBENCH_FIXTURES))
    bigbench.clear_caches()
    yield BIGBENCH_FIXTURES
    bigbench.clear_caches()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama")
    testing.tiny_llama(d)
    return d


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_gemma3")
    testing.tiny_gemma3(d)
    return d


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_t5")
    testing.tiny_t5(d)
    return d


def _load(folder):
    from lorahub_serve.models import load_base

    return load_base(folder)


@pytest.fixture(scope="session")
def tiny_llama_hub(tiny_llama_dir, tmp_path_factory):
    """4 random modules with mixed ranks (2 and 4) on q_proj, v_proj."""
    model, _ = _load(tiny_llama_dir)
    return testing.random_hub(model, tmp_path_factory.mktemp("llama_hub"), n=4, ranks=(2, 4), scale=3.0)


@pytest.fixture(scope="session")
def tiny_gemma3_hub(tiny_gemma3_dir, tmp_path_factory):
    """3 random modules with mixed ranks (4 and 2) on q_proj, v_proj."""
    model, _ = _load(tiny_gemma3_dir)
    return testing.random_hub(model, tmp_path_factory.mktemp("gemma3_hub"), n=3, ranks=(4, 2), scale=3.0)


@pytest.fixture(scope="session")
def tiny_t5_hub(tiny_t5_dir, tmp_path_factory):
    model, _ = _load(tiny_t5_dir)
    return testing.random_hub(model, tmp_path_factory.mktemp("t5_hub"), n=3, ranks=(4, 2),
                              target_modules=("q", "v"), scale=3.0)




@pytest.fixture
def few_shot():
    return list(testing.FEW_SHOT)
