"""`make mutation`'s summary: reads `mutmut results --all true` on stdin and prints, per module,
how many of the mutants that were run the tests killed (or timed out on). Not a test (pytest
does not collect it)."""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict


def main() -> int:
    counts: dict[str, Counter] = defaultdict(Counter)
    for line in sys.stdin:
        m = re.match(r"\s*(\S+)__mutmut_\d+: (.+)$", line.rstrip())
        if not m:
            continue
        name, status = m.groups()
        module = re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]
        function = name[len(module) + 2 :].lstrip("_").split("ǁ")[-1]
        if module.endswith(".model") and function != "loss_terms":
            continue  # of model.py only loss_terms is in scope
        if status != "not checked":
            counts[module + (".loss_terms" if module.endswith(".model") else "")][status] += 1
    for module, c in sorted(counts.items()):
        total = sum(c.values())
        detail = ", ".join(f"{n} {s}" for s, n in sorted(c.items()))
        detected = c["killed"] + c["timeout"]  # a mutant that makes the tests hang is caught too
        print(f"{module:40s} {detected / total:6.1%} killed of {total} ({detail})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
