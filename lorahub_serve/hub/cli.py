"""`lorahub-serve hub build`, `hub centroids` and `hub heldout`."""

from __future__ import annotations

from pathlib import Path

from lorahub_serve.choices import TRAIN_DTYPES


def _cmd_hub_build(a) -> int:
    from lorahub_serve.hub.build import BROAD_HUB_TASKS, RG_HUB_TASKS, build_hub, examples_dir_tasks
    from lorahub_serve.hub.train import TrainConfig

    cfg = TrainConfig(rank=a.rank, alpha=2 * a.rank, steps=a.steps, lr=a.lr, max_length=a.max_length,
                      target_modules=tuple(a.target_modules.split(",")), dtype=a.dtype,
                      generic_share=a.generic_share)
    for wanted, listed in ((a.broad, BROAD_HUB_TASKS), (a.reasoning_gym, RG_HUB_TASKS)):
        if wanted:
            a.tasks = list(a.tasks or []) + [t for t in listed if t not in (a.tasks or [])]
    trainers = None  # --actors / --ray-address and their pool come from cluster/cli.py
    if getattr(a, "actors", 1) > 1 or getattr(a, "ray_address", None):
        trainers = a.trainer_pool(a)
    own = examples_dir_tasks(Path(a.examples_dir)) if a.examples_dir else None
    manifest = build_hub(a.model, Path(a.out), a.tasks, a.modules, cfg, trainers=trainers, own_examples=own)
    print(f"hub {a.out}: {len(manifest['modules'])} modules")
    return 0


def _cmd_hub_heldout(a) -> int:
    from lorahub_serve.hub.heldout import backfill_heldout

    r = backfill_heldout(a.model, Path(a.hub))
    print(f"hub {a.hub}: {len(r.measured)} measured, {len(r.mismatched)} whose split did not match "
          f"(not written), {len(r.skipped)} without a source task")
    return 1 if r.mismatched else 0


def _cmd_hub_centroids(a) -> int:
    from lorahub_serve.hub.build import examples_dir_tasks
    from lorahub_serve.hub.centroids import compute_centroids, task_inputs

    inputs_of = task_inputs
    if a.examples_dir:  # a hub built with --examples-dir: its modules' inputs are the user's files
        own = examples_dir_tasks(Path(a.examples_dir))

        def inputs_of(task: str, n: int) -> list[str]:
            if task not in own:
                raise ValueError(f"--examples-dir {a.examples_dir} has no {task}.jsonl for module {task!r}")
            return [e.input for e in own[task][:n]]
    n = compute_centroids(a.model, Path(a.hub), a.inputs, inputs_of=inputs_of)
    print(f"hub {a.hub}: {n} centroids computed")
    return 0


def register(sub) -> None:
    hub = sub.add_parser("hub", help="LoRA hubs").add_subparsers(dest="action", required=True)
    hb = hub.add_parser("build", help="train one LoRA per task (rg/..., bigbench/..., or --examples-dir; resumable)")
    hb.add_argument("--model", default="smollm2-135m")
    hb.add_argument("--out", required=True)
    hb.add_argument("--tasks", nargs="*", default=None, help="task names of any source (`data list`), e.g. rg/gcd@le20 (default: curated BIG-bench list)")
    hb.add_argument("--examples-dir", default=None, metavar="DIR",
                    help="your own tasks instead of BIG-bench: one module per DIR/NAME.jsonl (the examples "
                         "format of `adapt`), named NAME")
    hb.add_argument("--modules", type=int, default=32,
                    help="modules the hub should hold, from the curated task list (default 32)")
    hb.add_argument("--rank", type=int, default=8)
    hb.add_argument("--steps", type=int, default=60)
    hb.add_argument("--lr", type=float, default=1e-3)
    hb.add_argument("--target-modules", default="q_proj,v_proj")
    hb.add_argument("--max-length", type=int, default=256, help="skip training examples longer than this")
    hb.add_argument("--broad", action="store_true",
                    help="also train the broader hub's task list (hub.build.BROAD_HUB_TASKS)")
    hb.add_argument("--reasoning-gym", action="store_true",
                    help="also train the reasoning-gym modules of the default hub (hub.build.RG_HUB_TASKS)")
    hb.add_argument("--dtype", choices=TRAIN_DTYPES, default="float32",
                    help="training precision: bfloat16 autocast is ~1.5x faster on CPUs with AVX512-BF16")
    hb.add_argument("--format-robust", dest="generic_share", action="store_const", const=0.5, default=0.0,
                    help="format-robust modules: half the training examples in a generic `Q: ...\\nA:` "
                         "frame, half in the task's own (default: the task's own only)")
    hb.set_defaults(func=_cmd_hub_build)

    hh = hub.add_parser("heldout", help="measure held-out loss and accuracy of modules recorded without them")
    hh.add_argument("--model", default="smollm2-135m")
    hh.add_argument("--hub", required=True)
    hh.set_defaults(func=_cmd_hub_heldout)

    hc = hub.add_parser("centroids", help="each module's input centroid (for adapt --select retrieve)")
    hc.add_argument("--model", default="smollm2-135m")
    hc.add_argument("--hub", required=True)
    hc.add_argument("--inputs", type=int, default=32, help="training inputs per module")
    hc.add_argument("--examples-dir", default=None, metavar="DIR",
                    help="the folder a hub was built from with `hub build --examples-dir`")
    hc.set_defaults(func=_cmd_hub_centroids)
