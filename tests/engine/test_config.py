"""EngineConfig: one declaration of the engine's options, validated, with its CLI form."""

import argparse
from pathlib import Path

import pytest

from lorahub_serve.engine.config import EngineConfig, add_engine_arguments

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kw,needle", [({"rule": "sum"}, "rule must be one of lorahub, linear"),
                                       ({"backend": "cuda"}, "backend must be one of"),
                                       ({"dtype": "fp8"}, "dtype must be one of"),
                                       ({"token_budget": 0}, "token_budget must be a positive integer")])
def test_bad_values_are_named(kw, needle):
    with pytest.raises(ValueError, match=needle):
        EngineConfig(**kw)


def test_options_override_fields_and_unknown_names_are_refused():
    cfg = EngineConfig().with_options(rule="linear", token_budget=64)
    assert (cfg.rule, cfg.token_budget, cfg.dtype) == ("linear", 64, "auto")
    with pytest.raises(TypeError, match="unknown engine options"):
        EngineConfig().with_options(rules="linear")


def test_the_cli_form_round_trips():
    p = argparse.ArgumentParser()
    add_engine_arguments(p)
    a = p.parse_args(["--rule", "linear", "--dtype", "bfloat16", "--token-budget", "512", "--truncate"])
    assert EngineConfig.from_args(a) == EngineConfig("linear", "auto", "bfloat16", 512, True, False)
    assert EngineConfig.from_args(p.parse_args([])) == EngineConfig()


@pytest.mark.parametrize("flag", ['"--rule"', '"--backend"', '"--token-budget"', '"--allow-pickle"',
                                  '"--truncate"'])
def test_each_engine_option_is_declared_once(flag):
    sources = [*REPO.joinpath("lorahub_serve").rglob("*.py"), *REPO.joinpath("cluster").rglob("*.py")]
    where = [str(p.relative_to(REPO)) for p in sources if flag in p.read_text()]
    assert where == ["lorahub_serve/engine/config.py"], where
