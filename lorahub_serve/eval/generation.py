"""Where the evaluation's greedy answers come from: the engine, or vLLM behind our server.

Both answer the same question: for named compositions of the hub (a weight vector over the
chosen modules, or `None` for the base model) and prompts per method, give the greedy
continuations. Prompts are sent as token ids (`prompting.prompt_ids`), so both back ends see
exactly the tokens the search scored.

- `EngineGenerator`: the engine's batched multi-composition `generate` (every composition in one
  batch; no export). Works for any base model the engine supports.
- `VllmGenerator`: exports each composition as a PEFT adapter into a private store, which a
  `lorahub-serve serve` child process hot-loads; answers come through the OpenAI client. This is
  the path users serve with.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lorahub_serve.engine.adapt import Engine
from lorahub_serve.engine.export import compose_factors, composed_rank, write_adapter
from lorahub_serve.engine.generate import generate
from lorahub_serve.prompting import prompt_ids
from lorahub_serve.scoring import STOP  # where answers end; eval.run imports it from here

# A method's request: (method name, composition name, prompts).
Job = tuple[str, str, Sequence[str]]


def cut_at_stop(text: str) -> str:
    return text.split(STOP, 1)[0]


def complete(client, model: str, prompts: Sequence[str] | Sequence[list[int]], max_tokens: int) -> list[str]:
    """Greedy answers for `prompts` (texts or token ids) in one completions request, in order."""
    r = client.completions.create(model=model, prompt=list(prompts), max_tokens=max_tokens, temperature=0.0,
                                  stop=[STOP])
    texts = [""] * len(prompts)
    for choice in r.choices:
        texts[choice.index] = cut_at_stop(choice.text)
    return texts


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken vLLM install is "not available", not a crash
        return False
    return True


def choose_generator(kind: str, engine: Engine, log_dir: Path | None = None):
    """`kind`: "auto" (vLLM when installed and the base model is decoder-only), "vllm", "engine"."""
    if kind not in ("auto", "vllm", "engine"):
        raise ValueError(f"generator must be auto, vllm or engine, got {kind!r}")
    causal = not engine.net.config.is_encoder_decoder
    if kind == "vllm" and not causal:
        raise ValueError("vLLM generation here serves decoder-only models; use --generator engine")
    if kind == "vllm" and not vllm_available():
        raise RuntimeError("--generator vllm, but vLLM cannot be imported here")
    if kind == "engine" or (kind == "auto" and not (causal and vllm_available())):
        return EngineGenerator(engine)
    return VllmGenerator(engine, log_dir=log_dir)


class EngineGenerator:
    name = "engine"
    startup_seconds = 0.0

    def __init__(self, engine: Engine):
        self.engine = engine

    def answers(self, tag: str, module_idx: Sequence[int], comps: Mapping[str, np.ndarray | None],
                jobs: Sequence[Job], max_new_tokens: int) -> dict[str, list[str]]:
        names = list(comps)
        k = len(module_idx)
        weights = np.stack([np.zeros(k) if comps[n] is None else np.asarray(comps[n]) for n in names])
        prompts, cands = [], []
        for _, comp, ps in jobs:
            prompts += list(ps)
            cands += [names.index(comp)] * len(ps)
        preds = generate(self.engine.evaluator, prompts, cands, np.tile(module_idx, (len(names), 1)),
                         weights.astype(np.float32), max_new_tokens=max_new_tokens)
        out, pos = {}, 0
        for method, _, ps in jobs:
            out[method] = [cut_at_stop(t) for t in preds[pos:pos + len(ps)]]
            pos += len(ps)
        return out

    def close(self) -> None:
        pass


def _served_rank(needed: int) -> int:
    from lorahub_serve.formats import LORA_RANKS

    for r in LORA_RANKS:
        if r >= needed:
            return r
    raise ValueError(f"a composed adapter of rank {needed} exceeds vLLM's largest LoRA rank {LORA_RANKS[-1]}")


class VllmGenerator:
    """Starts `lorahub-serve serve` on first use and keeps it for the whole evaluation."""

    name = "vllm"

    def __init__(self, engine: Engine, log_dir: Path | None = None, max_loras: int = 4):
        self.engine = engine
        self.store = Path(tempfile.mkdtemp(prefix="lorahub-eval-store-"))
        self.log = Path(log_dir) / "eval-serve.log" if log_dir else self.store / "eval-serve.log"
        self.max_loras = max_loras
        self.server = None
        self.served_rank = 0  # the running server's --max-lora-rank
        self.client = None
        self.startup_seconds = 0.0  # server start-up, reported apart from answering time

    def _start(self, rank: int) -> None:
        from openai import OpenAI

        from lorahub_serve.serving.process import ServeProcess, free_port

        t0 = time.perf_counter()
        opts = ["--model", self.engine.model_name, "--store", self.store, "--port", free_port(),
                "--max-loras", self.max_loras, "--max-lora-rank", rank]
        self.server = ServeProcess(opts, self.log).start()
        self.served_rank = rank
        self.client = OpenAI(base_url=f"{self.server.url}/v1", api_key="unused", timeout=3600)
        self.startup_seconds += time.perf_counter() - t0

    def max_lora_rank(self, k: int) -> int:
        """The server's `--max-lora-rank` for compositions of `k` modules: vLLM's rank at or
        above the `composed_rank` of the hub's k largest-rank modules, so that in a hub of mixed
        ranks every task-seed's choice of k modules fits one server."""
        ranks = sorted(m.rank for m in self.engine.hub_modules)[-k:]
        return _served_rank(composed_rank(ranks, self.engine.rule))

    def answers(self, tag: str, module_idx: Sequence[int], comps: Mapping[str, np.ndarray | None],
                jobs: Sequence[Job], max_new_tokens: int) -> dict[str, list[str]]:
        rank = self.max_lora_rank(len(module_idx))
        if self.server is not None and rank > self.served_rank:  # more modules than before
            self.server.stop()
            self.server = None
        if self.server is None:
            self._start(rank)
        served = {}
        for comp, w in comps.items():
            if w is None:
                served[comp] = self.engine.model_name
                continue
            name = f"{tag}-{comp}"[:64]
            factors = compose_factors(self.engine.stack, list(module_idx), w, self.engine.rule)
            write_adapter(self.store / name, factors, self.engine.model_name)
            served[comp] = name
        tok = self.engine.tokenizer
        return {method: complete(self.client, served[comp], [prompt_ids(tok, p) for p in ps], max_new_tokens)
                for method, comp, ps in jobs}

    def close(self) -> None:
        """Stop the server and remove the private store (its adapters can be re-made from the
        report's weights; a server that failed to start has put its log tail in the error)."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        shutil.rmtree(self.store, ignore_errors=True)
