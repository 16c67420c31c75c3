"""`lorahub-serve eval --suite bbh`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from lorahub_serve.choices import DTYPES, GENERATORS, SELECT_MODES, SUITES, TRAIN_DTYPES
from lorahub_serve.engine.arguments import add_contrast_argument


def _seeds(text: str) -> tuple[int, ...]:
    """`1-3` or `1,3`; argparse turns the ValueError into a usage error that names the value."""
    try:
        if "-" in text:
            lo, hi = text.split("-")
            seeds = tuple(range(int(lo), int(hi) + 1))
        else:
            seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected a range like 1-3 or a list like 1,3")
    return seeds


def _cmd_eval_headroom(a) -> int:
    import json

    from lorahub_serve.eval.headroom import (
        DEFAULT_METHODS,
        HeadroomConfig,
        read_suite,
        refresh_closeness,
        run_headroom_eval,
    )
    from lorahub_serve.eval.headroom_report import markdown, merge_rows, summarise, write_report

    cfg = HeadroomConfig(suite=Path(a.suite_file), tasks=tuple(a.tasks) if a.tasks else None,
                         seeds=a.seeds, shots=a.shots, limit=a.limit or 100, budget=a.budget,
                         modules=a.modules, select=a.select, ngopt=not a.no_ngopt, soup_k=a.soup_k,
                         contrast=a.contrast, dtype=a.dtype, refine_steps=a.refine_steps, methods=tuple(a.methods.split(",")) if a.methods else DEFAULT_METHODS)
    name = a.name or "headroom_smollm2"
    command = "lorahub-serve " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    prior = Path(a.out) / f"{name}.json"
    sources = ([prior] if a.resume and prior.exists() else []) + [Path(p) for p in a.merge or ()]
    done = merge_rows([json.loads(p.read_text())["rows"] for p in sources]) if sources else None
    if a.report_only:  # the kept rows as they are, near/far from the manifest; nothing runs
        if not done:
            raise SystemExit("--report-only needs rows: --resume with an existing report, or --merge")
        rows = refresh_closeness(done, read_suite(cfg.suite))
    else:
        rows = run_headroom_eval(a.model, a.hub, cfg, done=done,
                                 on_row=lambda rows: write_report(rows, Path(a.out), name, command))
    paths = write_report(rows, Path(a.out), name, command)
    print(markdown(rows, summarise(rows)))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


def _cmd_eval(a) -> int:
    if a.suite == "headroom":
        return _cmd_eval_headroom(a)
    from lorahub_serve.eval.report import markdown_table, summarise, write_report
    from lorahub_serve.eval.run import BBH_SUITE, EvalConfig, run_eval

    a.name = a.name or "bbh_smollm2"
    cfg = EvalConfig(tasks=tuple(a.tasks or BBH_SUITE), seeds=a.seeds, shots=a.shots,
                     limit=a.limit or 50, budget=a.budget, modules=a.modules, ngopt=not a.no_ngopt,
                     soup_k=a.soup_k, rc_limit=a.rc_limit, contrast=a.contrast,
                     select=a.select, metrics=a.metrics)
    command = "lorahub-serve " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    rows = run_eval(a.model, a.hub, cfg, generator=a.generator,
                    on_row=lambda rows: write_report(rows, Path(a.out), a.name, command))
    paths = write_report(rows, Path(a.out), a.name, command)
    print(markdown_table(summarise(rows)))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


def _cmd_suite_build(a) -> int:
    from lorahub_serve.eval.suite import RG_SUITE_CANDIDATES, build_suite
    from lorahub_serve.hub.train import TrainConfig

    cfg = TrainConfig(steps=a.steps, lr=a.lr, max_length=a.max_length, dtype=a.dtype)
    m = build_suite(a.model, Path(a.hub), Path(a.oracles), Path(a.out),
                    tuple(a.tasks or RG_SUITE_CANDIDATES), cfg, a.gate_n, a.min_gain)
    print(f"suite {a.out}: {len(m['tasks'])} of {len(m['candidates'])} candidates kept")
    return 0


def register(sub) -> None:
    suite = sub.add_parser("suite", help="the headroom suite").add_subparsers(dest="action", required=True)
    sb = suite.add_parser("build", help="train an oracle per candidate task and keep the tasks it "
                          "can learn (resumable)")
    sb.add_argument("--model", default="smollm2-135m")
    sb.add_argument("--hub", required=True, help="the hub the suite is held out from")
    sb.add_argument("--oracles", required=True, help="folder for the oracle modules (a hub of its own)")
    sb.add_argument("--out", required=True, help="the suite manifest (JSON)")
    sb.add_argument("--tasks", nargs="*", default=None, help="candidates, task names of any source (default: RG_SUITE_CANDIDATES)")
    sb.add_argument("--steps", type=int, default=24)
    sb.add_argument("--lr", type=float, default=2e-3)
    sb.add_argument("--max-length", type=int, default=128)
    sb.add_argument("--dtype", choices=TRAIN_DTYPES, default="bfloat16")
    sb.add_argument("--gate-n", type=int, default=100, help="evaluation examples the gate scores")
    sb.add_argument("--min-gain", type=float, default=20.0)
    sb.set_defaults(func=_cmd_suite_build)


    p = sub.add_parser("eval", help="compare zero-shot, ICL, LoraHub, single modules and a soup on BBH "
                       "(exact match and rank classification)")
    p.add_argument("--suite", choices=SUITES, default="bbh",
                   help="bbh: the held-out BBH tasks; headroom: the suite's tasks (suite build)")
    p.add_argument("--suite-file", default="suites/headroom-smollm2-135m.json",
                   help="the headroom suite's manifest")
    p.add_argument("--select", choices=SELECT_MODES, default="loss",
                   help="how lorahub picks its K modules (headroom: lorahub_random is always random)")
    p.add_argument("--resume", action="store_true", help="headroom: keep the rows of OUT/NAME.json")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="headroom: also keep the rows of these reports (shards run apart, e.g. one "
                   "seed per process); only the task-seeds none of them has are run")
    p.add_argument("--report-only", action="store_true",
                   help="headroom: write the report of the kept rows (--resume/--merge) and run nothing")
    p.add_argument("--methods", default=None,
                   help="headroom: comma list of the methods to score (default: zero_shot, icl, "
                        "lorahub, lorahub_random, lorahub_ngopt, best_single, soup, lorahub_icl, lora_ft, "
                        "oracle; opt-in: lorahub_icl_tuned, the composition searched on leave-one-out ICL "
                        "prompts; arrow, arrow_hub: PEFT's Arrow routing per token over lorahub's K "
                        "modules / the whole hub, an evaluation method, not an exported adapter; the "
                        "levers beyond the paper, each scored as the adapter adapt exports: "
                        "lorahub_export (lorahub's own, the levers' baseline), lorahub_refine_w, "
                        "lorahub_refine_f (--refine-steps on the weights / the factors), lorahub_g2, "
                        "lorahub_g4, lorahub_g4_x2 (per-layer-group weights, G = 4 at twice the budget)); "
                        "zero_shot, lorahub and oracle always run")
    p.add_argument("--refine-steps", type=int, default=20,
                   help="headroom: N for the lorahub_refine_* levers (the leave-one-out guard keeps n* <= N)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="headroom: the engine's dtype (auto: bf16 on CPUs with native bf16, else fp32)")
    p.add_argument("--hub", required=True)
    p.add_argument("--tasks", nargs="*", default=None, help="BBH tasks, bbh/<task> from the official files (default: all 27; `data list --source bbh`)")
    p.add_argument("--seeds", type=_seeds, default=(1, 2, 3), help="e.g. 1-5 or 1,3")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--limit", type=int, default=None,
                   help="evaluation examples per task (default: 50 for bbh, 100 for headroom)")
    p.add_argument("--budget", type=int, default=40)
    p.add_argument("--modules", type=int, default=None, help="K (default min(20, hub size))")
    p.add_argument("--no-ngopt", action="store_true", help="skip the NGOpt comparison")
    add_contrast_argument(p)
    p.add_argument("--rc-limit", type=int, default=None,
                   help="rank classification on the first N evaluation examples only (default: all)")
    p.add_argument("--metrics", choices=("both", "task"), default="both",
                   help="bbh: both EM and RC for every task, or only the task's own metric (RC where "
                   "every example has options, else EM): what the BBH table reads, at about half the cost")
    p.add_argument("--soup-k", type=int, default=3,
                   help="soup baseline: average (weight 1/k) of the k modules with the lowest few-shot loss")
    p.add_argument("--generator", choices=GENERATORS, default="auto",
                   help="greedy answers from vLLM (our server + OpenAI client) or the engine's batched "
                   "generate; auto = vLLM when installed and the model is decoder-only")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--name", default=None, help="report name (default bbh_smollm2 / headroom_smollm2)")
    p.set_defaults(func=_cmd_eval)
