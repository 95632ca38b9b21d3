"""tests/mutation_score.py, `make mutation`'s verdict, on made-up `mutmut results` text."""

from __future__ import annotations

import csv
import io
import math

import mutation_score as ms

# what `mutmut results --all true` prints: 4 spaces, NAME__mutmut_N: STATUS
RESULTS = """\
    pixword_lit.data.elements.x_resize_longer_side__mutmut_1: killed
    pixword_lit.data.elements.x_resize_longer_side__mutmut_2: killed
    pixword_lit.data.elements.x_build_sample__mutmut_1: timeout
    pixword_lit.data.elements.x_build_sample__mutmut_2: survived
    pixword_lit.model.tokens.xǁVocabǁpix_class__mutmut_1: killed
    pixword_lit.model.tokens.xǁVocabǁ__init____mutmut_1: segfault
    pixword_lit.model.components.folding.x_folding_from_state__mutmut_1: killed
    pixword_lit.model.components.folding.xǁUniformFoldingǁfold__mutmut_1: killed
    pixword_lit.model.components.folding.xǁUniformFoldingǁfold__mutmut_2: killed
    pixword_lit.model.components.folding.x_psnr__mutmut_3: no tests
    pixword_lit.model.components.folding.x_psnr__mutmut_4: suspicious
    pixword_lit.model.pixword.x_loss_terms__mutmut_1: killed
    pixword_lit.model.pixword.x_loss_terms__mutmut_2: survived
    pixword_lit.model.pixword.x_mean_loss__mutmut_1: not checked
    pixword_lit.model.pixword.xǁPixWordModelǁforward__mutmut_1: not checked
    pixword_lit.model.batch.x_make_batch__mutmut_1: survived
"""


def test_scores_per_module_by_hand():
    counts = ms.parse(io.StringIO(RESULTS))
    # model.pixword: loss_terms alone is in scope; model.batch is not in scope at all
    assert sorted(counts) == ["pixword_lit.data.elements", "pixword_lit.model.components.folding",
                              "pixword_lit.model.pixword.loss_terms", "pixword_lit.model.tokens"]
    scores = {m: ms.score(c) for m, c in counts.items()}
    assert scores == {"pixword_lit.data.elements": 3 / 4,  # killed 2 + timeout 1 of 4
                      "pixword_lit.model.tokens": 2 / 2,  # a segfault is a detection
                      "pixword_lit.model.components.folding": 3 / 5,  # no tests, suspicious: not
                      "pixword_lit.model.pixword.loss_terms": 1 / 2}
    rows = {r["module"]: r for r in ms.rows(counts)}
    assert rows["pixword_lit.model.components.folding"] == {
        "module": "pixword_lit.model.components.folding", "killed": 3, "timeout": 0, "segfault": 0,
        "survived": 0, "no_tests": 1, "other": 1, "total": 5, "score": 0.6}


def _run(text, capsys, *args):
    code = ms.main(list(args), io.StringIO(text))
    return code, capsys.readouterr().out


def _module(detected: int, total: int, module="pixword_lit.model.tokens.x_f") -> str:
    return "".join(f"    {module}__mutmut_{i}: {'killed' if i < detected else 'survived'}\n"
                   for i in range(total))


def test_fails_below_the_threshold_and_passes_at_or_above(capsys):
    assert 0.5 < ms.THRESHOLD < 1
    at = math.ceil(ms.THRESHOLD * 1000 - 1e-9)  # the least number of 1000 mutants that passes
    assert at / 1000 >= ms.THRESHOLD > (at - 1) / 1000
    ok = _module(1000, 1000, "pixword_lit.data.elements.x_g")
    code, out = _run(ok + _module(at, 1000), capsys)
    assert code == 0 and "every module at or above the threshold" in out
    code, out = _run(ok + _module(at - 1, 1000), capsys)
    assert code == 1
    assert f"mutation: FAIL pixword_lit.model.tokens: {(at - 1) / 1000:.1%} detected, below" in out
    assert "pixword_lit.data.elements" in out and "FAIL pixword_lit.data.elements" not in out
    code, out = _run(RESULTS, capsys)  # 50 % to 100 %: loss_terms and folding fail
    assert code == 1 and out.count("mutation: FAIL") == 3


def test_an_incomplete_or_empty_run_fails(capsys):
    code, out = _run(_module(10, 10) + "    pixword_lit.model.tokens.x_h__mutmut_1: not checked\n", capsys)
    assert code == 1 and "1 mutants not checked (incomplete run)" in out
    code, out = _run("", capsys)
    assert code == 1 and "no mutants in scope" in out
    # mutants outside scope alone: nothing in scope was run
    code, out = _run("    pixword_lit.model.pixword.x_mean_loss__mutmut_1: killed\n", capsys)
    assert code == 1 and "no mutants in scope" in out


def test_csv_records_the_run(tmp_path, capsys):
    path = tmp_path / "mutation.csv"
    code, _ = _run(_module(9, 10), capsys, "--csv", str(path), "--commit", "abc1234",
                   "--command", "make mutation JOBS=1", "--machine", "2 cores", "--wall-s", "61.4")
    (row,) = list(csv.DictReader(path.open()))
    assert code == (0 if 0.9 >= ms.THRESHOLD else 1)
    assert row == {"module": "pixword_lit.model.tokens", "killed": "9", "timeout": "0",
                   "segfault": "0", "survived": "1", "no_tests": "0", "other": "0", "total": "10",
                   "score": "0.9", "threshold": str(ms.THRESHOLD), "commit": "abc1234",
                   "command": "make mutation JOBS=1", "machine": "2 cores", "wall_s": "61"}
