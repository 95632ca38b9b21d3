"""Regenerate tests/assets/golden_losses.json: the first 20 training losses of a seeded tiny fit.

    python tests/golden_losses.py        # from the repository root, after a deliberate change

Only do this when a change is *meant* to alter training numbers; say so in the commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ASSET = Path(__file__).resolve().parent / "assets" / "golden_losses.json"
STEPS = 20


def golden_run(tmp: Path) -> list[float]:
    import torch
    from conftest import tiny_config

    from data_prep.glyphs import build_glyphs
    from pixword_lit.fit.train import fit

    torch.set_num_threads(1)
    shards = tmp / "glyphs"
    build_glyphs(shards, num_train=96, num_val=16, seed=0)
    fit(tiny_config(shards, tmp, f"trainer.max_steps={STEPS}", "trainer.val_check_interval=20",
                    "run.seed=7", "run.pictures=0"))
    lines = (tmp / "run" / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        losses = golden_run(Path(d))
    ASSET.parent.mkdir(exist_ok=True)
    import torch

    made = {"steps": STEPS, "seed": 7, "torch": torch.__version__.split("+")[0], "losses": losses}
    ASSET.write_text(json.dumps(made, indent=1) + "\n")
    print(f"wrote {ASSET}: {losses}")
