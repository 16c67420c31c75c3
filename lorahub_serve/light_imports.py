"""Keep optional heavy imports out of the engine's process (a second of every `adapt`).

Two of our dependencies import packages they only use for features we never call:
- transformers' generation code imports scikit-learn (~1 s here) when it is installed, for the
  assistant-confidence tuning of assisted decoding;
- pycma imports matplotlib and its pyplot (~0.6 s) for its plotting helpers; nevergrad's optional
  Bayesian-optimisation wrapper (bayes_opt) imports scikit-learn;
- torch._dynamo, imported by transformers' masking code, imports Triton (~0.2 s), which only a
  CUDA machine can use (our kernels import it themselves when they run).

Each is imported here once with those packages hidden, so the optional parts see them as not
installed. Hiding is limited to that import: afterwards `import sklearn` and `import
matplotlib.pyplot` (and `import triton`) work as usual, and a package the process has already
imported is never hidden.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def hidden(*names: str) -> Iterator[None]:
    """While active, importing one of `names` (not yet imported) raises ModuleNotFoundError."""
    added = [n for n in names if n not in sys.modules]
    for n in added:
        sys.modules[n] = None  # the import system's "known to be missing"
    try:
        yield
    finally:
        for n in added:
            if n in sys.modules and sys.modules[n] is None:
                del sys.modules[n]


def load_transformers() -> None:
    """Import transformers' model and generation code without scikit-learn, and on a machine
    without CUDA without Triton (transformers' masking code imports torch._dynamo, which imports
    Triton when installed; without CUDA nothing runs compiled Triton code)."""
    if "transformers.models.auto.modeling_auto" in sys.modules:  # imports candidate_generator too
        return
    import torch

    names = ("sklearn",) if torch.cuda.is_available() else ("sklearn", "triton")
    with hidden(*names):  # candidate_generator checks for sklearn once, at its import
        import transformers.generation.candidate_generator
        import transformers.models.auto.modeling_auto  # noqa: F401  (masking_utils -> torch._dynamo)


def load_optimizers() -> None:
    """Import nevergrad and pycma (CMA-ES) without matplotlib and scikit-learn (pycma's one
    import-time use, `cma.s`, tries `from matplotlib import pyplot` and carries on without it)."""
    if "cma" in sys.modules and "nevergrad" in sys.modules:
        return
    with hidden("sklearn", "matplotlib"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pycma warns that it cannot plot
        import cma  # noqa: F401
        import nevergrad  # noqa: F401
