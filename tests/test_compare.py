"""compare with intervals (issue 25): Student-t quantiles against published table values,
per-cell 95% intervals, paired (same seed) differences to a reference cell, runs.csv that
re-analyses to the same tables without the run folders, and the bar chart's metrics."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from pixword_lit.cli import main
from pixword_lit.grid.compare import collect, write_results
from pixword_lit.grid.plots import bar_metrics
from pixword_lit.grid.stats import interval, paired, t_cdf, t_quantile

# t(0.975, df) from the standard printed table (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042, 100: 1.984}


@pytest.mark.parametrize("df,t", sorted(T975.items()))
def test_t_quantile_matches_the_printed_table(df, t):
    assert t_quantile(0.975, df) == pytest.approx(t, abs=6e-4)
    assert t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-9)
    assert t_quantile(0.025, df) == pytest.approx(-t, abs=6e-4)


def test_t_quantile_tends_to_the_normal_and_other_levels():
    assert t_quantile(0.975, 1e7) == pytest.approx(1.95996, abs=1e-4)
    assert t_quantile(0.995, 1) == pytest.approx(63.657, abs=1e-2)  # 99% two-sided, df 1
    assert t_quantile(0.95, 2) == pytest.approx(2.920, abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_interval_and_paired_by_hand():
    i = interval([1.0, 2.0, 3.0, float("nan")])  # a NaN seed does not count
    assert (i.n, i.mean, i.std) == (3, pytest.approx(2.0), pytest.approx(1.0))
    assert i.half == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert interval([5.0]).covers_zero is None and math.isnan(interval([5.0]).half)
    # pairs match on the seed: seed 2 has no partner and is left out
    d = paired({0: 1.0, 1: 2.0, 2: 9.0}, {0: 0.5, 1: 1.7})
    assert d.n == 2 and d.mean == pytest.approx(0.4)
    assert d.half == pytest.approx(12.706 * np.std([0.5, 0.3], ddof=1) / math.sqrt(2), rel=1e-3)
    assert d.covers_zero  # 0.4 ± 1.27


SEED_EFFECT = [0.00, 0.30, -0.20]  # what a seed shares across cells (data order, init)


def make_runs(root, cells: dict) -> None:
    """cell -> offset from cell `a`: run folders with summary.json and metrics.jsonl. Every
    cell shares the seed effect, so paired differences are tight while per-cell intervals
    are wide; `val/fold_psnr` is the same in every cell."""
    for cell, (offset, jitter) in cells.items():
        for seed, effect in enumerate(SEED_EFFECT):
            d = root / f"{cell}_s{seed}"
            d.mkdir(parents=True)
            loss = 3.0 + effect + offset + jitter[seed]
            (d / "summary.json").write_text(json.dumps({
                "status": "finished", "seed": seed, "params": 1000, "val/loss": loss,
                "val/pix_loss": loss + 1.0, "val/fold_psnr": 28.8, "val/bpd_8bit": loss / 2,
                "git_commit": "abc", "wall_s": 2.0, "machine": "test"}))
            (d / "metrics.jsonl").write_text(json.dumps({"step": 5, "val/pix_loss": loss + 1}) + "\n")


CELLS = {"a": (0.0, [0, 0, 0]), "b": (0.5, [0.01, -0.01, 0.0]), "c": (0.0, [0.02, -0.03, 0.01])}


def test_compare_intervals_paired_differences_and_reanalysis(tmp_path, capsys):
    make_runs(tmp_path / "runs", CELLS)
    out = tmp_path / "res"
    assert main(["compare", str(tmp_path / "runs"), "--out", str(out)]) == 0
    rows = {r["cell"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    a_loss = [3.0 + e for e in SEED_EFFECT]
    assert float(rows["a"]["val/loss_mean"]) == pytest.approx(np.mean(a_loss), rel=1e-5)
    assert float(rows["a"]["val/loss_ci95"]) == pytest.approx(
        4.303 * np.std(a_loss, ddof=1) / math.sqrt(3), rel=1e-3)
    # b - a: 0.5 on every seed, up to the jitter: the interval is far from 0
    pairs = {(p["cell"], p["metric"]): p for p in csv.DictReader(open(out / "paired.csv"))}
    b = pairs[("b", "val/loss")]
    assert b["ref"] == "a" and b["pairs"] == "3" and b["verdict"] == "differs"
    assert float(b["diff_mean"]) == pytest.approx(0.5, abs=1e-6)
    assert float(b["diff_low"]) > 0.4
    # c - a: jitter only; the cells' own intervals are 10x wider than the difference
    c = pairs[("c", "val/loss")]
    assert c["verdict"] == "within noise" and float(c["diff_low"]) < 0 < float(c["diff_high"])
    # a metric every cell shares says nothing about the cells: no paired row, no bar panel
    assert ("b", "val/fold_psnr") not in pairs
    md = (out / "summary.md").read_text()
    assert "Student-t" in md and "## Paired differences to `a`" in md
    paired_md = md.split("## Paired differences")[1]
    assert "*(noise)*" in paired_md.split("| c | 3 |")[1].splitlines()[0]
    assert "*(noise)*" not in paired_md.split("| b | 3 |")[1].splitlines()[0]
    assert (out / "paired_differences.png").stat().st_size > 0 and "paired_differences.png" in md
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["cell"], r["seed"]) for r in runs][:2] == [("a", "0"), ("a", "1")] and len(runs) == 9

    # the committed tables alone redo the analysis: the same summary and paired tables
    again = tmp_path / "again"
    again.mkdir()
    (again / "runs.csv").write_text((out / "runs.csv").read_text())
    assert main(["compare", str(again / "runs.csv")]) == 0
    assert (again / "summary.csv").read_text() == (out / "summary.csv").read_text()
    assert (again / "paired.csv").read_text() == (out / "paired.csv").read_text()
    assert (again / "runs.csv").read_text() == (out / "runs.csv").read_text()  # left as it was
    assert "as recorded in runs.csv" in (again / "summary.md").read_text()

    # --ref: another reference cell; an unknown one is one line naming the cells
    assert main(["compare", str(again / "runs.csv"), "--ref", "b"]) == 0
    pairs = {(p["cell"], p["metric"]): p for p in csv.DictReader(open(again / "paired.csv"))}
    assert pairs[("a", "val/loss")]["ref"] == "b"
    assert float(pairs[("a", "val/loss")]["diff_mean"]) == pytest.approx(-0.5, abs=1e-6)
    capsys.readouterr()
    assert main(["compare", str(again / "runs.csv"), "--ref", "zz"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'zz'" in err and "a, b, c" in err


def test_bar_chart_plots_the_metrics_that_vary(tmp_path):
    make_runs(tmp_path / "runs", CELLS)
    res = write_results(collect([str(tmp_path / "runs")]), tmp_path / "res")
    shown = bar_metrics(res["rows"])
    assert "val/fold_psnr" not in shown  # the same in every cell
    assert shown[:3] == ["val/loss", "val/pix_loss", "val/bpd_8bit"]  # bits/dim where present
    assert (tmp_path / "res" / "final_metrics.png").stat().st_size > 0


def test_a_runs_csv_that_is_not_one_is_one_line(tmp_path, capsys):
    bad = tmp_path / "runs.csv"
    bad.write_text("cell,x\na,1\n")
    assert main(["compare", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a runs.csv" in err and str(bad) in err


def test_reading_by_height_intervals_over_seeds_and_paired_by_hand(tmp_path):
    """reading_by_height.csv from the runs' eval/captions.json records: per (cell, height,
    seen/unseen) the share read exactly and the CER in each run, then the Student-t interval
    over seeds and the paired difference to the reference cell, checked by hand."""
    from pixword_lit.grid.reading import reading_rows

    # (cell, seed) -> records: height bucket "0.5" and "2"; "12" seen, "34" unseen
    def recs(small_right: list[bool], tall_right: bool) -> list[dict]:
        out = []
        for ok, seen in zip(small_right, (True, False)):
            ans = "12" if seen else "34"
            out.append({"bucket": "0.5", "seen": seen, "answer": ans, "exact": ok,
                        "prediction": ans if ok else ans[0] + "x"})
        out.append({"bucket": "2", "seen": True, "answer": "12", "exact": tall_right,
                    "prediction": "12" if tall_right else "99"})
        return out

    runs_of = {("pix", 0): recs([True, False], True), ("pix", 1): recs([False, False], True),
               ("pix", 2): recs([True, True], True), ("patch", 0): recs([False, False], True),
               ("patch", 1): recs([False, False], False), ("patch", 2): recs([False, True], True)}
    for (cell, seed), records in runs_of.items():
        d = tmp_path / "g" / f"{cell}_s{seed}"
        (d / "eval").mkdir(parents=True)
        (d / "eval" / "captions.json").write_text(json.dumps({"records": records}))
        (d / "summary.json").write_text(json.dumps({"status": "finished", "seed": seed, "val/loss": 1.0}))
    col = collect([str(tmp_path / "g" / f"{c}_s{s}") for c, s in runs_of])
    rows = {(r["cell"], r["height_windows"], r["answers"]): r for r in reading_rows(col.runs, "pix")}
    small = rows[("pix", "0.5", "all")]
    assert small["seeds"] == 3 and small["docs_per_seed"] == 2
    ref = interval([0.5, 0.0, 1.0])  # pix read 1, 0 and 2 of its 2 small documents
    assert small["exact_match_mean"] == pytest.approx(0.5)
    assert small["exact_match_low95"] == pytest.approx(ref.low)
    assert small["cer_mean"] == pytest.approx((1 / 4 + 2 / 4 + 0) / 3)  # one of 2 chars wrong per miss
    assert rows[("pix", "0.5", "unseen")]["exact_match_mean"] == pytest.approx(1 / 3)
    assert rows[("pix", "2", "all")]["exact_match_low95"] == 1.0  # the same in every seed: no width
    assert ("pix", "2", "unseen") not in rows  # no unseen document at that height
    diff = rows[("patch", "0.5", "all")]  # patch minus pix, seed by seed: -0.5, 0, -0.5
    d = paired({0: 0.0, 1: 0.0, 2: 0.5}, {0: 0.5, 1: 0.0, 2: 1.0})
    assert diff["exact_match_diff"] == pytest.approx(-1 / 3) == pytest.approx(d.mean)
    assert diff["exact_match_diff_high95"] == pytest.approx(d.high)
    assert diff["exact_match_verdict"] == "within noise"
    assert "exact_match_diff" not in small  # the reference has no difference to itself
    assert rows[("patch", "all", "all")]["exact_match_mean"] == pytest.approx((1 / 3 + 0 + 2 / 3) / 3)
    out = tmp_path / "out"
    write_results(col, out)
    assert (out / "reading_by_height.png").exists()
    md = (out / "summary.md").read_text()
    assert "## Reading by glyph height" in md and "| 0.5 | 50.0 [" in md


def test_the_committed_reading_table_is_what_its_kept_records_give(tmp_path):
    """results/reading_small/reading_by_height.csv (issue 23's study) comes out again, row for
    row, from the records kept in results/reading_small/runs (keep_runs.py)."""
    from pixword_lit.grid.reading import reading_rows
    from pixword_lit.grid.tables import write_csv
    from pixword_lit.system.config import REPO_ROOT

    study = REPO_ROOT / "results" / "reading_small"
    runs = sorted(p for p in (study / "runs").glob("*") if p.is_dir())
    assert len(runs) == 15  # 5 cells x 3 seeds
    write_csv(reading_rows(collect([str(p) for p in runs]).runs, "arm-patch_linear"), tmp_path / "t.csv")

    def rows(path):
        return sorted(tuple(r.items()) for r in csv.DictReader(open(path)))

    assert rows(tmp_path / "t.csv") == rows(study / "reading_by_height.csv")
