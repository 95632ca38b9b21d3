"""What a build saw, wrote and skipped: report.json plus a short printed summary."""

from collections import Counter
from pathlib import Path


def build_report(inputs_seen: int, samples_written: dict, skipped: list[dict], stats: dict) -> dict:
    """report.json's content. `stats` holds each split's image statistics (shards.py)."""
    images = {}
    for split, s in stats.items():
        n = s["num_images"]
        images[split] = {
            "num_images": n,
            "bytes": s["image_bytes"],
            "bytes_per_image": round(s["image_bytes"] / n, 1) if n else None,
            "stored_original": s["stored_original"],
            "stored_png": n - s["stored_original"],
        }
    return {
        "inputs_seen": inputs_seen,
        "samples_written": samples_written,
        "images": images,
        "skipped": skipped,
        "skipped_counts": dict(sorted(Counter(s["kind"] for s in skipped).items())),
    }


def summary(report: dict, out: Path) -> str:
    """Human-readable lines for the terminal."""
    written = report["samples_written"]
    lines = [
        f"inputs seen: {report['inputs_seen']}; "
        + f"samples written: {written['train']} train, {written['val']} val",
        f"shards: {out / 'train'} and {out / 'val'} (see index.json in each)",
    ]
    images = report.get("images", {})
    n = sum(s["num_images"] for s in images.values())
    if n:
        size = sum(s["bytes"] for s in images.values())
        kept = sum(s["stored_original"] for s in images.values())
        lines.append(
            f"images: {n}, {size / n / 1024:.1f} KiB each on average "
            + f"({kept} original JPEG bytes, {n - kept} PNG)"
        )
    if (out / "tokenizer.json").exists():
        lines.append(f"tokenizer: {out / 'tokenizer.json'}")
    if report["skipped"]:
        counts = ", ".join(f"{k} {n}" for k, n in report["skipped_counts"].items())
        lines.append(f"skipped {len(report['skipped'])}: {counts} (details: {out / 'report.json'})")
    else:
        lines.append("skipped: none")
    if written["val"] == 0 and written["train"] >= 2:
        lines.append("warning: the validation split is empty, and `pixword fit` needs one: pass a "
                     "larger --val-fraction (or set data.val to other shards)")
    return "\n".join(lines)
