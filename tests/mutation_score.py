"""`make mutation`'s verdict: reads `mutmut results --all true` on stdin, prints per module the
share of its mutants that the selected tests detected, and exits 1 when any module scores below
THRESHOLD, or when the run is incomplete (a mutant in scope not checked, or none at all).

A mutant counts as detected when the tests failed on it (`killed`), hung on it (`timeout`) or
crashed on it (`segfault`); every other outcome of a checked mutant counts against the score:
`survived`, `no tests` (no selected test reaches the mutated function), `suspicious`, `skipped`.
The modules in scope are SCOPE's (of model/pixword.py only loss_terms). Not a test (pytest does
not collect it); tests/test_mutation_score.py tests it.

    mutmut results --all true | python tests/mutation_score.py          # the verdict
    ... | python tests/mutation_score.py --csv results/mutation.csv --commit ABC1234 \\
          --command "make mutation JOBS=1" --machine "..." --wall-s 2400   # and record it
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter

# The lowest share of detected mutants a module may have; `make mutation` fails below it.
# Set from the recorded run (results/mutation.csv): a little below its lowest module score.
THRESHOLD = 0.88

SCOPE = {  # module -> the functions in scope (None: all of them)
    "pixword_lit.data.elements": None,
    "pixword_lit.model.tokens": None,
    "pixword_lit.model.components.folding": None,
    "pixword_lit.model.pixword": {"loss_terms"},
}
DETECTED = ("killed", "timeout", "segfault")
UNDETECTED = ("survived", "no tests")  # and any other status: counted under `other`
INCOMPLETE = ("not checked", "check was interrupted by user")
LINE = re.compile(r"\s*(\S+)__mutmut_\d+: (.+)$")


def parse(lines) -> dict[str, Counter]:
    """Status counts per module in scope (`pixword_lit.model.pixword.loss_terms` for loss_terms),
    from the lines of `mutmut results --all true`."""
    counts: dict[str, Counter] = {}
    for line in lines:
        m = LINE.match(line.rstrip())
        if not m:
            continue
        name, status = m.groups()
        module = re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]  # x_func or xǁClassǁmethod
        function = name[len(module) + 2 :].lstrip("_").split("ǁ")[-1]
        if module not in SCOPE or (SCOPE[module] is not None and function not in SCOPE[module]):
            continue
        key = module if SCOPE[module] is None else f"{module}.{function}"
        counts.setdefault(key, Counter())[status.strip()] += 1
    return counts


def score(c: Counter) -> float:
    """Detected / checked mutants of one module."""
    checked = sum(n for s, n in c.items() if s not in INCOMPLETE)
    return sum(c[s] for s in DETECTED) / checked if checked else 0.0


def problems(counts: dict[str, Counter], threshold: float = THRESHOLD) -> list[str]:
    """Why the run fails (empty: it passes)."""
    if not counts:
        return ["no mutants in scope: did `mutmut run` run?"]
    out = []
    for module, c in sorted(counts.items()):
        if any(c[s] for s in INCOMPLETE):
            out.append(f"{module}: {sum(c[s] for s in INCOMPLETE)} mutants not checked (incomplete run)")
        elif score(c) < threshold:
            out.append(f"{module}: {score(c):.1%} detected, below the threshold {threshold:.0%}")
    return out


def rows(counts: dict[str, Counter]) -> list[dict]:
    out = []
    for module, c in sorted(counts.items()):
        other = sum(n for s, n in c.items() if s not in DETECTED + UNDETECTED + INCOMPLETE)
        total = sum(n for s, n in c.items() if s not in INCOMPLETE)
        out.append({"module": module, "killed": c["killed"], "timeout": c["timeout"],
                    "segfault": c["segfault"], "survived": c["survived"], "no_tests": c["no tests"],
                    "other": other, "total": total, "score": round(score(c), 4)})
    return out


def main(argv: list[str] | None = None, stdin=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", help="also write the per-module table here")
    p.add_argument("--commit", help="the commit the run measured (with --csv)")
    p.add_argument("--command", default="make mutation", help="how it ran (with --csv)")
    p.add_argument("--machine", default="", help="where it ran (with --csv)")
    p.add_argument("--wall-s", type=float, help="the run's wall time in seconds (with --csv)")
    a = p.parse_args(argv)
    if a.csv and not a.commit:
        p.error("--csv needs --commit")
    counts = parse(stdin if stdin is not None else sys.stdin)
    table = rows(counts)
    for r in table:
        print(f"{r['module']:40s} {r['score']:6.1%} detected of {r['total']} (killed {r['killed']}, "
              f"timeout {r['timeout']}, segfault {r['segfault']}, survived {r['survived']}, "
              f"no tests {r['no_tests']}, other {r['other']})")
    if a.csv and table:
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, [*table[0], "threshold", "commit", "command", "machine", "wall_s"])
            w.writeheader()
            for r in table:
                w.writerow({**r, "threshold": THRESHOLD, "commit": a.commit, "command": a.command,
                            "machine": a.machine, "wall_s": "" if a.wall_s is None else round(a.wall_s)})
    bad = problems(counts)
    for line in bad:
        print(f"mutation: FAIL {line}")
    if not bad:
        print(f"mutation: every module at or above the threshold {THRESHOLD:.0%}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
