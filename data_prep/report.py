"""What a build saw, wrote and skipped: report.json plus a short printed summary."""

from collections import Counter
from pathlib import Path

from .errors import BadInput
from .shards import write_json_atomic


class Report:
    """Collects skipped inputs; every skip has a path, a kind (for counting) and a reason."""

    def __init__(self):
        self.inputs_seen = 0
        self.skipped: list[dict] = []

    def skip(self, path: str, err: BadInput) -> None:
        self.skipped.append({"path": str(path), "kind": err.kind, "reason": err.reason})

    def finish(self, out: Path, samples_written: dict) -> dict:
        """Write OUT/report.json and return its content."""
        report = {
            "inputs_seen": self.inputs_seen,
            "samples_written": samples_written,
            "skipped": self.skipped,
            "skipped_counts": dict(sorted(Counter(s["kind"] for s in self.skipped).items())),
        }
        write_json_atomic(out / "report.json", report)
        return report


def summary(report: dict, out: Path) -> str:
    """Human-readable lines for the terminal."""
    written = report["samples_written"]
    lines = [
        f"inputs seen: {report['inputs_seen']}; "
        + f"samples written: {written['train']} train, {written['val']} val",
        f"shards: {out / 'train'} and {out / 'val'} (see index.json in each)",
    ]
    if (out / "tokenizer.json").exists():
        lines.append(f"tokenizer: {out / 'tokenizer.json'}")
    if report["skipped"]:
        counts = ", ".join(f"{k} {n}" for k, n in report["skipped_counts"].items())
        lines.append(f"skipped {len(report['skipped'])}: {counts} (details: {out / 'report.json'})")
    else:
        lines.append("skipped: none")
    return "\n".join(lines)
