"""Numbers in prose come from the committed tables: check them, or rewrite them.

    python tests/prose_numbers.py            # check every span; exit 1 naming each mismatch
    python tests/prose_numbers.py --write    # rewrite every span's text from the tables

A measured figure in the READMEs is written as a marked span (HTML comments: not rendered)

    <!--n:FMT EXPR-->TEXT<!--/n-->

EXPR is arithmetic (+ - * / // % **, parentheses, sum/min/max/abs/mean/len) over references
{TABLE:ROW:COL}: TABLE is a CSV under results/ without `.csv` (`fold/summary`,
`bench/decoding`, `measured`), or a Markdown file with its `.md` (its first table: quote a
grid's means and spreads from `fold/summary.md`, COL `val/pix_loss` or `val/pix_loss ±`, at
the precision it prints them; summary.csv keeps 6 significant digits, and re-rounding
1.46065 gives 1.4607 where the run's value, and summary.md, give 1.4606); ROW is the value
of the table's first column (a cell name), or KEY=VALUE[,KEY=VALUE...] on any columns, or `*`
(every row, as an array); COL is a column (a cell `a / b / c`, as `pixword bench ab` writes
its pairs, is an array too).
ROW `@` reads TABLE.md: COL `commit`, `load` (load average at the start) or `seconds` (the
section's time) from the first line, where `pixword bench` states how it ran; `r2` from a
power-law fit line of `pixword compare`.
FMT is a Python format spec (`.4f`, `,.0f`, `.1f`); `s` (or `.7s`) takes text as it is.
TEXT must equal format(EXPR, FMT), or be that in backticks (a commit:
<!--n:.7s EXPR-->`abc1234`<!--/n-->, since a comment inside a code span would be shown); a span
may not start a line (Markdown would read an HTML block). A change to a table, or to a quoted
number, fails `make test` (tests/test_prose_numbers.py) until `--write` or a hand edit makes
them agree. To add a figure, write `[[n:FMT EXPR]]` where it goes and run `make prose`: it
becomes a span with its text filled in.

Kept under tests/ (like golden_losses.py): it checks the repository's documents, not
anything a pixword user runs, and so leaves the package and its CLI alone.
"""

from __future__ import annotations

import ast
import csv
import os
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SKIP = {"runs", "data", "mutants", "node_modules"}  # at the top: outputs, not documents
SHORTHAND = re.compile(r"\[\[n:(\S+) ([^\]\n]+?)\]\]")
SPAN = re.compile(r"<!--n:(?P<fmt>\S+) (?P<expr>[^\n]+?)-->(?P<text>[^<\n]*)<!--/n-->")
REF = re.compile(r"\{([^{}:]+):([^{}]+):([^{}:]+)\}")  # ROW may hold ":" (aten::mm)
def _flat(*args) -> np.ndarray:
    return np.concatenate([np.atleast_1d(np.asarray(a, dtype=float)) for a in args])


FUNCS = {"sum": lambda *a: _flat(*a).sum(), "min": lambda *a: _flat(*a).min(),
         "max": lambda *a: _flat(*a).max(), "mean": lambda *a: _flat(*a).mean(),
         "abs": np.abs, "len": lambda *a: _flat(*a).size}
OPS = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv,
       ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Constant, ast.Name, ast.Load, ast.Call)


def documents(root: Path = REPO) -> list[Path]:
    """The files whose figures are checked: every README.md of the repository, and results/
    (data, runs and hidden folders are not walked: they can be large)."""
    found = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__" and
                   not (rel == Path(".") and d in SKIP)]
        found += [Path(folder) / f for f in files if f == "README.md" or
                  (f.endswith(".md") and rel.parts[:1] == ("results",))]
    return sorted(found)


class Tables:
    def __init__(self, root: Path):
        self.results = root / "results"
        self._rows: dict[str, list[dict[str, str]]] = {}
        self._headers: dict[str, dict[str, str]] = {}

    def rows(self, table: str) -> list[dict[str, str]]:
        if table not in self._rows:
            self._rows[table] = self._read(table)
        return self._rows[table]

    def _read(self, table: str) -> list[dict[str, str]]:
        path = self.results / (table if table.endswith(".md") else f"{table}.csv")
        if not path.is_file():
            raise LookupError(f"no table results/{path.relative_to(self.results)}")
        if path.suffix == ".md":
            return _markdown_rows(path.read_text())
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def header(self, table: str) -> dict[str, str]:
        if table not in self._headers:
            self._headers[table] = self._read_header(table)
        return self._headers[table]

    def _read_header(self, table: str) -> dict[str, str]:
        path = self.results / f"{table}.md"
        if not path.is_file():
            raise LookupError(f"no results/{table}.md for row @")
        text = path.read_text()
        line = text.splitlines()[0]
        found = {"commit": re.search(r"at commit (\w+)", line),
                 "load": re.search(r"load average ([\d.]+)", line),
                 "seconds": re.search(r": (\d+) s\s*$", line),
                 "r2": re.search(r"R² = ([\d.]+)", text)}
        return {k: m.group(1) for k, m in found.items() if m}

    def value(self, table: str, row: str, col: str):
        if row == "@":
            meta = self.header(table)
            if col not in meta:
                raise LookupError(f"results/{table}.md: its first line states no {col!r}")
            return _number(meta[col])
        rows = self.rows(table)
        if rows and col not in rows[0]:
            raise LookupError(f"{_name(table)} has no column {col!r}")
        if row == "*":
            return np.array([_number(r[col]) for r in rows])
        first = next(iter(rows[0])) if rows else ""
        want = dict(kv.split("=", 1) for kv in row.split(",")) if "=" in row else {first: row}
        hits = [r for r in rows if all(r.get(k) == v for k, v in want.items())]
        if len(hits) != 1:
            raise LookupError(f"{_name(table)}: {len(hits)} rows match {row!r}, not 1")
        return _number(hits[0][col])


def _name(table: str) -> str:
    return f"results/{table}" if table.endswith(".md") else f"results/{table}.csv"


def _markdown_rows(text: str) -> list[dict[str, str]]:
    """The first Markdown table of a document; a cell `4.8622 ± 0.0410` is two columns,
    `COL` (the mean) and `COL ±` (the spread), as `pixword compare` prints them."""
    lines = [ln.strip().strip("|") for ln in text.splitlines() if ln.startswith("|")]
    if len(lines) < 2:
        return []
    head = [c.strip() for c in lines[0].split("|")]
    rows = []
    for line in lines[2:]:
        row = {}
        for key, cell in zip(head, (c.strip() for c in line.split("|"))):
            m = re.match(r"(-?[\d,]*\.?\d+)(?:\s*±\s*(-?\d*\.?\d+))?", cell)
            row[key] = m.group(1).replace(",", "") if m else cell
            row[f"{key} ±"] = (m.group(2) or "") if m else ""
        rows.append(row)
    return rows


def _number(text: str):
    try:
        if " / " in text:  # `pixword bench ab` keeps every pair's time: "0.1622 / 0.1699 / 0.1838"
            return np.array([float(t) for t in text.split(" / ")])
        return float(text)
    except ValueError:
        return text


def evaluate(expr: str, tables: Tables):
    names: dict[str, object] = dict(FUNCS)

    def ref(m: re.Match) -> str:
        name = f"_r{len(names)}"
        names[name] = tables.value(*(g.strip() for g in m.groups()))
        return name

    code = REF.sub(ref, expr)
    tree = ast.parse(code.strip(), mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, OPS) or (isinstance(node, ast.Name) and node.id not in names):
            raise LookupError(f"not allowed in a span: {ast.unparse(node)!r}")
    return eval(compile(tree, "<span>", "eval"), {"__builtins__": {}}, names)  # nodes checked above


def render(expr: str, fmt: str, tables: Tables) -> str:
    value = evaluate(expr, tables)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if fmt.endswith("s"):
        return format(str(value), fmt)
    return format(float(value), fmt)


def check(root: Path = REPO, docs: list[Path] | None = None, write: bool = False) -> list[str]:
    """One line per span whose text is not what its tables say (or that cannot be read);
    with `write`, such spans are rewritten instead and only unreadable ones are reported."""
    tables, problems = Tables(root), []
    for doc in docs if docs is not None else documents(root):
        problems += _check_doc(doc, doc.relative_to(root), tables, write)
    return problems


def _check_doc(doc: Path, name: Path, tables: Tables, write: bool) -> list[str]:
    text, problems, out, last = doc.read_text(), [], [], 0
    if write:  # the shorthand an author writes: [[n:FMT EXPR]] -> a span (its text filled below)
        text = SHORTHAND.sub(lambda m: f"<!--n:{m[1]} {m[2]}-->?<!--/n-->", text)
    for m in SHORTHAND.finditer(text):
        problems.append(f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m[0]} is not a span "
                        "yet: run `make prose` (python tests/prose_numbers.py --write)")
    for m in SPAN.finditer(text):
        where = f"{name}:{text.count(chr(10), 0, m.start()) + 1}"
        out.append(text[last:m.start()])
        last = m.end()
        try:
            want = render(m["expr"], m["fmt"], tables)
        except (LookupError, SyntaxError, ValueError, TypeError, ZeroDivisionError) as e:
            problems.append(f"{where}: {m['expr'].strip()}: {e}")
            out.append(m.group(0))
            continue
        tick = "`" if len(m["text"]) > 1 and m["text"][0] == m["text"][-1] == "`" else ""
        said = m["text"][len(tick):len(m["text"]) - len(tick)]
        if said != want and not write:
            problems.append(f"{where}: says {said!r}, its tables say {want!r} "
                            f"({m['expr'].strip()})")
        out.append(f"<!--n:{m['fmt']} {m['expr']}-->{tick}{want}{tick}<!--/n-->")
    out.append(text[last:])
    for m in SPAN.finditer(text):
        para = text.rfind("\n\n", 0, m.start()) + 1
        if text.count("`", para, m.start()) % 2:
            problems.append(f"{name}:{text.count(chr(10), 0, m.start()) + 1}: a span inside a code "
                            "span is shown as it is: put the backticks inside the span")
    for m in re.finditer(r"^[ \t]*<!--n:", text, flags=re.M):
        problems.append(f"{name}:{text.count(chr(10), 0, m.start()) + 1}: a span starts the line, "
                        "where Markdown reads it as an HTML block: move a word before it")
    opened, formed = text.count("<!--n:"), len(SPAN.findall(text))
    if opened != formed:
        problems.append(f"{name}: {opened} spans opened (<!--n:), {formed} well formed "
                        "(<!--n:FMT EXPR-->TEXT<!--/n-->)")
    if write and "".join(out) != doc.read_text():
        doc.write_text("".join(out))
    return problems


def spans(root: Path = REPO) -> int:
    return sum(len(SPAN.findall(d.read_text())) for d in documents(root))


def main(argv: list[str]) -> int:
    write = "--write" in argv
    problems = check(write=write)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{spans()} numbers in {len(documents())} documents; "
          f"{len(problems)} {'unreadable' if write else 'wrong or unreadable'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
