"""The headroom report's statistics on synthetic rows with known answers."""

import numpy as np
import pytest

from lorahub_serve.eval import headroom_report as hr


def _rows(diff, n=40, noise=5.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        base = rng.uniform(10, 60)  # per-task difficulty, shared by the methods of a row
        rows.append({"task": f"t{i // 3}", "seed": i % 3, "metric": "em", "closeness": "far", "chance": 0.0,
                     "majority": 1.0, "zero_shot": 0.0, "icl": base + rng.normal(0, noise),
                     "lorahub": base + diff + rng.normal(0, noise), "oracle": 100.0})
    return rows


def test_bootstrap_ci_holds_the_mean_and_narrows_with_n():
    small = hr.bootstrap_ci(np.random.default_rng(1).normal(50, 10, 20))
    big = hr.bootstrap_ci(np.random.default_rng(1).normal(50, 10, 2000))
    assert small[1] < small[0] < small[2] and big[1] < big[0] < big[2]
    assert (big[2] - big[1]) < (small[2] - small[1]) / 5
    assert 49 < big[0] < 51
    with pytest.raises(ValueError):
        hr.bootstrap_ci([])


def test_paired_difference_sees_a_shift_that_unpaired_cells_hide():
    s = hr.summarise(_rows(diff=4.0))
    icl, lorahub = s["cells"]["icl"], s["cells"]["lorahub"]
    assert lorahub[1] < icl[2]  # the unpaired CIs overlap ...
    mean, lo, _hi = s["paired"]["lorahub - icl"]
    assert lo > 0 and 2.0 < mean < 6.0  # ... the paired one does not


def test_no_shift_reads_as_no_difference():
    md = hr.markdown(_rows(diff=0.0), hr.summarise(_rows(diff=0.0)))
    assert "| lorahub - icl |" in md and "no difference" in md.split("| lorahub - icl |")[1].split("\n")[0]
    assert "fixed across seeds" in md


def test_gap_closed_is_the_share_of_zero_shot_to_oracle():
    rows = [{"task": "a", "seed": 1, "zero_shot": 20.0, "oracle": 60.0, "lorahub": 30.0, "icl": 60.0}]
    g = hr.summarise(rows)["gap_closed"]
    assert g["lorahub"] == pytest.approx(0.25) and g["icl"] == pytest.approx(1.0)


def test_binomial_ci_matches_the_wilson_interval():
    lo, hi = hr.binomial_ci(50, 100)
    assert lo == pytest.approx(40.4, abs=0.1) and hi == pytest.approx(59.6, abs=0.1)
    assert hr.binomial_ci(0, 20)[0] == 0.0 and hr.binomial_ci(20, 20)[1] == 100.0


def test_merged_shards_keep_each_task_seed_once_and_refuse_disagreement():
    from lorahub_serve.eval.headroom_report import merge_rows

    a = [{"task": "t", "seed": 1, "zero_shot": 0.0, "icl": 50.0, "oracle": 90.0, "n_eval": 100, "lorahub": 10.0}]
    b = [dict(a[0], lorahub=12.0), {"task": "t", "seed": 2, "zero_shot": 0.0, "icl": 40.0, "oracle": 90.0,
                                    "n_eval": 100, "lorahub": 20.0}]
    merged = merge_rows([a, b])
    assert [(r["task"], r["seed"], r["lorahub"]) for r in merged] == [("t", 1, 10.0), ("t", 2, 20.0)]
    with pytest.raises(ValueError, match="disagree on icl"):
        merge_rows([a, [dict(a[0], icl=51.0)]])


def test_report_only_merges_shards_without_running(tmp_path, capsys):
    """`eval --suite headroom --merge A B --report-only`: one report of both shards' rows, near/far
    taken from the manifest as it is now; no model is loaded (the hub does not even exist)."""
    import json

    from lorahub_serve.cli import main

    rows = _rows(0.0, n=6)
    for r in rows:
        r["closeness"] = "far"
    suite = {"tasks": ["t0", "t1"], "candidates": [{"task": "t0", "closeness": "near"},
                                                   {"task": "t1", "closeness": "far"}]}
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    for name, part in (("a", rows[:4]), ("b", rows[3:])):  # row 3 is in both shards
        (tmp_path / f"{name}.json").write_text(json.dumps({"rows": part}))
    assert main(["eval", "--suite", "headroom", "--suite-file", str(tmp_path / "suite.json"),
                 "--hub", str(tmp_path / "no-hub"), "--out", str(tmp_path), "--name", "merged",
                 "--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--report-only"]) == 0
    merged = json.loads((tmp_path / "merged.json").read_text())["rows"]
    assert len(merged) == 6
    assert {r["task"]: r["closeness"] for r in merged} == {"t0": "near", "t1": "far"}
    assert "2 tasks, 6 task-seeds" in capsys.readouterr().out


def test_every_figure_is_also_reported_per_distance_label():
    rows = _rows(diff=0.0, n=12)
    for i, r in enumerate(rows):
        r["closeness"] = ("config-shift", "near")[(i // 3) % 2]  # a label per task
        r["lorahub"] = r["icl"] + (10.0 if r["closeness"] == "near" else -10.0)
        r["input_tokens"], r["input_tokens_icl"] = 20.0, 120.0
    s = hr.summarise(rows)
    assert set(s["by_label"]) == {"config-shift", "near"}  # no far row: no far section
    near, shift = s["by_label"]["near"], s["by_label"]["config-shift"]
    assert near["paired"]["lorahub - icl"][0] == pytest.approx(10.0)
    assert shift["paired"]["lorahub - icl"][0] == pytest.approx(-10.0)
    assert s["paired"]["lorahub - icl"][0] == pytest.approx(0.0)
    assert s["tokens"]["lorahub"] == 20.0 and s["tokens"]["icl"] == 120.0
    md = hr.markdown(rows, s)
    assert "**near** (2 tasks, 6 task-seeds)" in md and "**config-shift**" in md and "**far**" not in md
