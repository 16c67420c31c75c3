"""The main job (`make demo`): adapt SmolLM2-135M to a held-out reasoning-gym task of the headroom
suite (a generator config no hub module was trained on, on which this model can learn) from 5 examples, serve it with vLLM, ask it through the OpenAI
client, and compare zero-shot, 5-shot ICL and adapted accuracy (exact match, one answer extractor
for all) with their 95 % CIs and the input tokens each one needs.

    python -m lorahub_serve.demo [--task TASK] [--eval 100] [--budget 40]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from lorahub_serve import paths
from lorahub_serve.choices import SELECT_MODES

# Two-term sums and differences of 1-2 digit numbers: the hub holds the 1-digit config (config-shift);
# an oracle trained on the task reaches 63 % where zero-shot reaches 0 and the majority answer 5 %
# (../shared/notes/scan-reasoning-gym.md).
DEMO_TASK = "rg/basic_arithmetic@add-2d"


def _say(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hub", default=str(paths.repo_root() / "hubs" / "smollm2-135m"))
    ap.add_argument("--task", default=DEMO_TASK, help="a task of the headroom suite or its candidates (or a BBH task)")
    ap.add_argument("--suite", default=str(paths.repo_root() / "suites" / "headroom-rg-smollm2-135m.json"))
    ap.add_argument("--select", default="loss", choices=SELECT_MODES)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--eval", type=int, default=100, help="held-out examples to score")
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--store", default=None, help="adapter store (default: a temporary folder)")
    a = ap.parse_args(argv)
    t_start = time.time()

    import json

    from lorahub_serve.data import tasks
    from lorahub_serve.eval.suite import RG_SUITE_CANDIDATES
    from lorahub_serve.models import fetch_model

    suite = json.loads(Path(a.suite).read_text()) if Path(a.suite).exists() else {"tasks": []}
    if a.task not in (*suite["tasks"], *RG_SUITE_CANDIDATES) and not tasks.is_eval_only(a.task):
        print(f"--task {a.task!r} is neither a task of the suite {a.suite} (or its candidates) nor a "
              "held-out BBH task", file=sys.stderr)
        return 2
    _say(f"1/5 base model {a.model}")
    fetch_model(a.model)

    _say(f"2/5 data: {a.shots} few-shot examples of the held-out task {a.task!r}")
    examples = tasks.load_task(a.task)
    prov = tasks.provenance(a.task)
    print(f"  from {prov.pop('source')}: " + ", ".join(f"{k} {v}" for k, v in prov.items() if k != "params"))
    shots, evalset = tasks.split(examples, a.shots, a.eval, a.seed)
    for ex in shots[:3]:
        question = next((ln for ln in ex.input.splitlines() if ln.startswith("Q: ")), ex.input)
        print(f"  {question[:80]!r:85} -> {ex.output.strip()!r}")

    _say(f"3/5 LoraHub search over the hub {a.hub} (--select {a.select}, budget {a.budget}, batched CMA-ES)")
    from lorahub_serve.engine.adapt import Engine
    from lorahub_serve.engine.search import SearchConfig

    store = Path(a.store or tempfile.mkdtemp(prefix="lorahub-store-"))
    name = re.sub(r"[^A-Za-z0-9._-]", "-", a.task) + "-lorahub"  # an adapter name the server takes
    engine = Engine(a.model, a.hub)
    try:
        res = engine.adapt(shots, task=name, out=store / name,
                           config=SearchConfig(budget=a.budget, seed=a.seed, select=a.select))
    finally:
        engine.close()
    sel = res.extra.get("select_seconds", 0.0)
    print(f"  best few-shot loss {res.best_loss:.4f} ({res.evaluations} evaluations in "
          f"{res.seconds - sel:.1f} s, {res.optimizer}; choosing the modules (--select {a.select}) took {sel:.1f} s); "
          f"adapter -> {store / name}")
    top = sorted(zip(res.weights, res.modules), key=lambda t: -abs(t[0]))[:4]
    print("  largest weights: " + ", ".join(f"{m.name} {w:+.2f}" for w, m in top))

    _say("4/5 serving base model + adapter store with vLLM (OpenAI-compatible)")
    from openai import OpenAI

    from lorahub_serve.serving.process import ServeProcess, free_port

    port = free_port()
    log = store / "serve.log"
    with ServeProcess(["--model", a.model, "--store", str(store), "--port", str(port)], log) as srv:
        client = OpenAI(base_url=f"{srv.url}/v1", api_key="unused")
        print(f"  {srv.url}/v1 serves: {[m.id for m in client.models.list().data]}")
        q = evalset[0]
        r = client.completions.create(model=name, prompt=q.input, max_tokens=8, temperature=0.0)
        print(f"  asked {name!r}:\n    {q.input[-160:]!r}\n  answer {r.choices[0].text!r} (gold {q.output!r})")

        _say(f"5/5 accuracy on {len(evalset)} held-out examples (exact match), through the server")
        rows = compare(client, a.model, name, shots, evalset, a.task)
    from lorahub_serve.adapter_scoring import majority_rate
    from lorahub_serve.eval.headroom_report import binomial_ci

    chance = 100 * tasks.task_info(a.task).chance
    oracle = next((c.get("oracle") for c in suite.get("candidates", []) if c["task"] == a.task), None)
    print(f"\n  task {a.task} (chance {chance:.0f}%, majority answer {majority_rate(evalset):.0f}%"
          + (f", oracle LoRA trained on the task {oracle:.0f}% (suite manifest)" if oracle is not None else "")
          + f"), {len(evalset)} held-out examples (the same for every method):")
    native = any(n is not None for _, _, n in rows.values())
    print(f"  {'method':<22}{'accuracy':>10}{'95 % CI':>16}{'input tokens/example':>24}"
          + (f"{'score_answer':>14}" if native else ""))
    for method, (acc, tokens, own) in rows.items():
        lo, hi = binomial_ci(round(acc * len(evalset) / 100), len(evalset))
        print(f"  {method:<22}{acc:>9.0f}%{f'[{lo:.0f}, {hi:.0f}]':>16}{tokens:>24.0f}"
              + (f"{own:>13.0f}%" if own is not None else ""))
    if native:
        print("  (accuracy: exact match; score_answer: the reasoning-gym generator's own score of the same answers)")
    print(f"  done in {time.time() - t_start:.0f} s")
    return 0


def compare(client, base: str, adapter: str, shots, evalset, task: str = "") -> dict[str, tuple]:
    """method -> (exact-match accuracy, mean input tokens per example, the task source's own score
    or None): zero-shot and 5-shot ICL on the base model, and the adapter, all answered by the
    server from the same token ids."""
    from transformers import AutoTokenizer

    from lorahub_serve.data import tasks
    from lorahub_serve.eval.generation import complete
    from lorahub_serve.eval.run import icl_prompt
    from lorahub_serve.models import resolve_model
    from lorahub_serve.prompting import prompt_ids
    from lorahub_serve.scoring import accuracy

    tok = AutoTokenizer.from_pretrained(resolve_model(base))
    plain = [prompt_ids(tok, e.input) for e in evalset]
    icl = [prompt_ids(tok, icl_prompt(shots, e)) for e in evalset]
    max_tokens = max(len(tok(e.output)["input_ids"]) for e in shots) + 4
    out = {}
    for method, model, prompts in (("zero-shot", base, plain), (f"{len(shots)}-shot ICL", base, icl),
                                   ("LoraHub-adapted", adapter, plain)):
        answers = complete(client, model, prompts, max_tokens)
        out[method] = (accuracy(answers, evalset), sum(map(len, prompts)) / len(prompts),
                       tasks.native_percent(task, evalset, answers) if task else None)
    return out


if __name__ == "__main__":
    sys.exit(main())
