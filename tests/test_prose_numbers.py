"""Every marked figure in the READMEs equals what its committed table says (tests/prose_numbers.py),
and a drift on either side is caught: shown on copies with one number or one table changed."""

from __future__ import annotations

import csv
import shutil

from prose_numbers import REPO, check, documents, spans


def test_every_quoted_number_matches_its_table():
    assert not check(), "\n".join(check())


def test_the_documents_quote_their_numbers_through_spans():
    names = {p.relative_to(REPO).as_posix() for p in documents()}
    assert {"README.md", "results/README.md", "pixword_lit/README.md",
            "experiments/README.md", "data_prep/README.md"} <= names
    assert spans() >= 100  # the studies, speed and quickstart figures are all marked


def _copy(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "results", root / "results", ignore=shutil.ignore_patterns("*.png"))
    shutil.copy(REPO / "README.md", root / "README.md")
    return root


def test_a_changed_number_in_the_prose_fails(tmp_path):
    root = _copy(tmp_path)
    doc = root / "results" / "README.md"
    text = doc.read_text()
    span = "{fold/summary:folding-uniform-factor32:val/pix_loss_mean}-->"
    at = text.index(span) + len(span)
    end = text.index("<!--/n-->", at)
    quoted = text[at:end]
    last = quoted[-1]
    wrong = quoted[:-1] + ("1" if last != "1" else "2")  # one digit off, as the issue found
    doc.write_text(text[:at] + wrong + text[end:])
    problems = check(root, [doc])
    assert len(problems) == 1 and "results/README.md:" in problems[0]
    assert f"'{wrong}'" in problems[0] and f"'{quoted}'" in problems[0]
    assert not check(root, [doc], write=True) and not check(root, [doc])  # --write repairs it
    assert quoted in doc.read_text()[at - 5:end + 5]


def test_a_changed_table_fails_and_write_follows_it(tmp_path):
    root = _copy(tmp_path)
    doc, table = root / "results" / "README.md", root / "results" / "bench" / "decoding.csv"
    assert not check(root, [doc])
    table.write_text(table.read_text().replace("902.6", "950.1"))
    problems = check(root, [doc])
    assert problems and all("'902.6'" in p and "'950.1'" in p for p in problems)
    check(root, [doc], write=True)
    assert not check(root, [doc]) and "-->950.1<!--/n-->" in doc.read_text()


def test_a_bad_reference_is_one_line_naming_it(tmp_path):
    root = _copy(tmp_path)
    doc = root / "doc.md"
    doc.write_text("a <!--n:.4f {fold/summary:no-such-cell:val/loss_mean}-->1<!--/n-->\n"
                   "b <!--n:.4f {fold/summary:folding-palette512:no_col}-->1<!--/n-->\n"
                   "c <!--n:.4f {nothing:x:y}-->1<!--/n-->\n"
                   "d <!--n:.4f __import__('os')-->1<!--/n-->\n"
                   "e <!--n:.4f {fold/summary:folding-palette512:val/loss_mean}-->1\n"
                   "<!--n:.2f {fold/summary.md:folding-uniform-factor64:val/fold_psnr}-->22.69<!--/n-->\n\n"
                   "g `<!--n:.7s {bench/utilization:@:commit}-->40b09f1<!--/n-->`\n")
    problems = check(root, [doc])
    assert len(problems) == 7, problems
    assert "doc.md:1" in problems[0] and "0 rows match 'no-such-cell'" in problems[0]
    assert "no column 'no_col'" in problems[1]
    assert "no table results/nothing.csv" in problems[2]
    assert "not allowed" in problems[3]
    assert "doc.md:8: a span inside a code span" in problems[4]
    assert "doc.md:6: a span starts the line" in problems[5]
    assert "7 spans opened" in problems[6] and "6 well formed" in problems[6]


def test_expressions_sums_and_headers(tmp_path):
    root = _copy(tmp_path)
    doc = root / "doc.md"
    rows = "{attention/summary:*:wall_s}*{attention/summary:*:runs}"
    with open(root / "results" / "attention" / "summary.csv") as f:  # the sum, computed here
        total = sum(float(r["wall_s"]) * int(r["runs"]) for r in csv.DictReader(f)) / 60
    doc.write_text(f"t <!--n:.1f sum({rows})/60-->{total:.1f}<!--/n--> "
                   "<!--n:.7s {bench/utilization:@:commit}-->`40b09f1`<!--/n--> "
                   "<!--n:.2f {bench/utilization:@:load}-->1.10<!--/n--> "
                   "<!--n:.1f {bench/utilization:model=dim256,dtype=bf16:utilization_pct}-->53.2<!--/n-->")
    assert not check(root, [doc]), check(root, [doc])


def test_the_completion_samples_window_rows_are_what_the_readme_says():
    """results/attention/samples/README.md: validation glyphs 0-3 at 24 px in 4 px windows."""
    import math

    from data_prep.glyphs import make_sample
    from pixword_lit.data.elements import resize_longer_side

    rows = []
    for i in range(4):
        _, img = make_sample(0, "val", i)
        img = resize_longer_side(img, 24, "upscale", "bilinear_antialias")
        rows.append(math.ceil(img.size[1] / 4))
    assert rows == [2, 3, 3, 3]
    text = (REPO / "results" / "attention" / "samples" / "README.md").read_text()
    assert '"NEXT" has 2 window rows, the other three images 3' in text


def test_the_paper_configs_parameter_counts_in_experiments_readme():
    """experiments/README.md quotes the paper configs' sizes; counted here on the meta device."""
    import torch

    from pixword_lit.model.pixword import PixWordModel
    from pixword_lit.model.tokens import N_SPECIAL, Vocab
    from pixword_lit.system.build import folding_from_state
    from pixword_lit.system.config import load_config

    text = (REPO / "experiments" / "README.md").read_text()
    for name in ("paper_image_only", "paper_mixed"):
        m = load_config(REPO / "experiments" / f"{name}.yaml").model
        folding = folding_from_state({"name": "uniform", "factor": m.folding.factor})
        with torch.device("meta"):
            model = PixWordModel(m, Vocab(m.vocab_size or N_SPECIAL, folding.n_pix), folding)
        n = sum(p.numel() for p in model.parameters())
        assert f"about {n / 1e6:.1f}M parameters" in text, (name, n)


def test_shorthand_becomes_a_span_on_write(tmp_path):
    root = _copy(tmp_path)
    doc = root / "doc.md"
    doc.write_text("decoding ran at [[n:.1f {bench/decoding:cached:tokens_per_s}]] tokens/s\n")
    assert "is not a span yet" in check(root, [doc])[0]
    assert not check(root, [doc], write=True)
    assert doc.read_text() == ("decoding ran at <!--n:.1f {bench/decoding:cached:tokens_per_s}-->"
                               "902.6<!--/n--> tokens/s\n")
    assert not check(root, [doc])


def _reproduced(log: str) -> dict:
    """grid -> (metrics same, metrics compared, the printout) from a `--reproduce` log."""
    out, grid, lines = {}, None, []
    for line in (REPO / "results" / "reproduce" / log).read_text().splitlines():
        if " vs now at " in line and "[results/" in line:
            grid, lines = line.split("[results/")[1].split("/")[0], []
        lines.append(line)
        if grid and " reproduce to the printed digit" in line:
            same, _, total = line.split(" reproduce")[0].partition(" of ")
            out[grid] = (int(same), int(total), "\n".join(lines))
    return out


def test_the_reproduce_counts_in_results_readme_are_the_logs():
    """results/README.md's "Do the tables still come out of HEAD?" quotes counts from the
    `--reproduce` printouts (logs, not tables): checked against them here."""
    text = (REPO / "results" / "README.md").read_text()
    at = _reproduced("497991a.log")
    full = [at[g] for g in ("scaling_lr", "scaling", "reading_small")]
    assert all(same == total for same, total, _ in full)
    assert f"({full[0][0]}, {full[1][0]} and {full[2][0]} of them)" in text
    assert at["window"][:2] == (8, 10) and "moved" not in at["window"][2].split("metric ")[-1]
    fold = [ln for ln in at["fold"][2].splitlines() if " moved" in ln and not ln[0].isdigit()]
    assert len(fold) == 1 and fold[0].startswith("val/word_loss")
    assert "+4e-06 from the nearer seed" in fold[0]
    assert "fold the same except `val/word_loss`, 4e-06 from the nearer seed" in text
    head = _reproduced("8a73714.log")
    assert head["attention"][:2] == head["embedding"][:2] == (10, 10)
    assert "(10 of 10 each:" in text


def test_what_the_readme_says_of_the_suite_time_is_what_was_measured():
    """README's verdict on the 7 minutes follows the recorded fresh-clone times, not a hand."""
    rows = {r["key"]: float(r["value"]) for r in csv.DictReader(open(REPO / "results" / "measured.csv"))}
    text = " ".join((REPO / "README.md").read_text().split())
    limit = 7 * 60
    warm, cold = rows["make_test_s"] <= limit, rows["make_test_cold_s"] <= limit
    assert ("install included, is within the 7 minutes" in text) == warm
    assert ("with both caches warm and with both empty" in text) == (warm and cold)
    assert ("with both caches warm; with both empty it is not" in text) == (warm and not cold)
    assert ("install included, is not within the 7 minutes" in text) == (not warm)
