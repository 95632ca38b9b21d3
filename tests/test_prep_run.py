"""data_prep: how builds run: worker-count independence, resume after a kill, refusing
changed arguments, the progress bar on a terminal, and compact storage (--store)."""

import io
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data_prep import images as images_mod
from data_prep.cli import main
from data_prep.glyphs import build_glyphs
from data_prep.imageio import load_rgb, shard_image
from data_prep.images import build_images
from data_prep.mixed import build_mixed

ROOT = Path(__file__).resolve().parents[1]


def photo(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x * y) % 97 + 60], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """24 photo-like JPEGs, some larger than --max-side 48, plus a broken one."""
    d = tmp_path_factory.mktemp("jpegs")
    for i in range(24):
        photo(40 + 3 * i, 36, i).save(d / f"p{i:02d}.jpg", quality=85)
    (d / "zz_broken.jpg").write_bytes(b"\xff\xd8 broken")
    return d


def tree(folder: Path) -> dict:
    """Every file's bytes (index.json without --out, which it records)."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "index.json":
                index = json.loads(data)
                index["args"].pop("out")
                data = json.dumps(index).encode()
            files[p.relative_to(folder).as_posix()] = data
    return files


def test_output_does_not_depend_on_workers(jpegs, tmp_path):
    kw = {"val_fraction": 0.3, "shard_size": 4, "max_side": 48}
    build_images(jpegs, tmp_path / "w1", workers=1, **kw)
    build_images(jpegs, tmp_path / "w2", workers=2, **kw)
    one, two = tree(tmp_path / "w1"), tree(tmp_path / "w2")
    assert sum(name.endswith(".tar") for name in one) >= 5
    assert one == two


def test_mixed_output_does_not_depend_on_workers(jpegs, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for d in range(6):
        names = " ".join(f"text {d}.{k} <|image|>p{(d * 3 + k) % 24:02d}.jpg<|/image|>" for k in range(3))
        (docs / f"d{d}.txt").write_text(f"document {d} {names} missing <|image|>gone.jpg<|/image|>")
    kw = {"image_size": 16, "window_size": 8, "max_seq_len": 24, "vocab_size": 300,
          "val_fraction": 0.3, "shard_size": 3}  # fmt: skip
    build_mixed(docs, jpegs, tmp_path / "w1", workers=1, **kw)
    build_mixed(docs, jpegs, tmp_path / "w2", workers=2, **kw)
    one, two = tree(tmp_path / "w1"), tree(tmp_path / "w2")
    assert sum(name.endswith(".tar") for name in one) >= 4
    assert one == two
    report = json.loads(one["report.json"])
    assert report["skipped_counts"] == {"missing_image": 6}


def test_glyphs_output_does_not_depend_on_workers(tmp_path):
    build_glyphs(tmp_path / "w1", num_train=30, num_val=5, workers=1)
    build_glyphs(tmp_path / "w2", num_train=30, num_val=5, workers=2)
    assert tree(tmp_path / "w1") == tree(tmp_path / "w2")


# A child process that builds slowly (a sleep per image) so the test can kill it after
# a few shards: the kill lands mid-build, like a user's Ctrl-C or a lost machine.
def finished_shards(out: Path) -> list:
    """Train shards the progress state (replaced atomically) lists as finished."""
    try:
        return json.loads((out / "progress.json").read_text())["splits"]["train"]["shards"]
    except (FileNotFoundError, KeyError):
        return []


SLOW_CHILD = """
import sys, time
from data_prep import images
from data_prep.cli import main
real = images.shard_image
def slow(*a, **k):
    time.sleep(0.1)
    return real(*a, **k)
images.shard_image = slow
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_kill_continues_and_matches_an_uninterrupted_build(jpegs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["images", str(jpegs), "--out", str(out), "--shard-size", "2", "--max-side", "48",
            "--val-fraction", "0.25", "--workers", "1"]  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", SLOW_CHILD, *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while len(finished_shards(out)) < 4:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    state = json.loads((out / "progress.json").read_text())
    assert not state["complete"] and not (out / "report.json").exists()
    assert 4 <= len(state["splits"]["train"]["shards"]) < 9  # killed mid-way (of about 9)
    finished = {
        json.loads(s["json"])["source"]
        for split in ("train", "val")
        for s in wds.WebDataset(
            [str(out / split / sh["name"]) for sh in state["splits"][split]["shards"]],
            shardshuffle=False,
        )
    }

    calls = []

    def counting(*a, **k):
        calls.append(a[0])
        return shard_image(*a, **k)

    monkeypatch.setattr(images_mod, "shard_image", counting)
    assert main(args) == 0
    read_again = {Path(c).name for c in calls}
    assert read_again and not read_again & finished  # finished shards' inputs are not read
    assert len(read_again) <= 25 - len(finished)
    monkeypatch.undo()
    main([*args[:3], str(tmp_path / "fresh"), *args[4:]])
    assert tree(out) == tree(tmp_path / "fresh") | {"progress.json": tree(out)["progress.json"]}
    report = json.loads((out / "report.json").read_text())
    assert report["inputs_seen"] == 25 and report["skipped_counts"] == {"not_an_image": 1}


def test_mixed_resume_mid_document_matches_an_uninterrupted_build(jpegs, tmp_path, monkeypatch):
    """Documents that pack into several samples, shards of 2: shards close in the middle
    of a document, so a resume must skip exactly the samples already written."""
    from data_prep import mixed as mixed_mod

    docs = tmp_path / "docs"
    docs.mkdir()
    for d in range(5):
        parts = [f"words of document {d} part {k} " * 3 + f"<|image|>p{d * 4 + k:02d}.jpg<|/image|>"
                 for k in range(4)]  # fmt: skip
        (docs / f"d{d}.txt").write_text(" ".join(parts))
    kw = {"image_size": 16, "window_size": 8, "max_seq_len": 24, "vocab_size": 300,
          "val_fraction": 0.3, "shard_size": 2, "max_side": 48}  # fmt: skip
    calls = {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 11:  # in the third document
            raise RuntimeError("simulated crash")
        return shard_image(*a, **k)

    monkeypatch.setattr(mixed_mod, "shard_image", crashing)
    with pytest.raises(RuntimeError):
        build_mixed(docs, jpegs, tmp_path / "out", **kw)
    state = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert any(s["skip_samples"] for s in state["splits"].values())  # stopped mid-document
    monkeypatch.undo()
    build_mixed(docs, jpegs, tmp_path / "out", **kw)
    build_mixed(docs, jpegs, tmp_path / "fresh", **kw)
    resumed, fresh = tree(tmp_path / "out"), tree(tmp_path / "fresh")
    assert resumed.pop("progress.json") and fresh.pop("progress.json")
    assert resumed == fresh and sum(n.endswith(".tar") for n in fresh) >= 6


def test_resume_with_changed_arguments_is_refused(jpegs, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["images", str(jpegs), "--out", str(out), "--workers", "1"]
    assert main([*base, "--max-side", "48"]) == 0
    first = tree(out)
    capsys.readouterr()
    assert main([*base, "--max-side", "48", "--workers", "2"]) == 0  # finished: nothing to do
    assert tree(out) == first and "already complete" in capsys.readouterr().out
    assert main([*base, "--max-side", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "progress.json" in err and "max_side: 48 -> 32" in err
    assert "--overwrite" in err and tree(out) == first
    assert main([*base, "--max-side", "32", "--overwrite"]) == 0
    assert json.loads((out / "train" / "index.json").read_text())["image_sizes"]["max_width"] == 32


def test_progress_bar_on_a_terminal_only(jpegs, tmp_path, capsys):
    master, slave = pty.openpty()
    cmd = [sys.executable, "-m", "data_prep.cli", "images", str(jpegs), "--out",
           str(tmp_path / "tty"), "--workers", "1", "--max-side", "48"]  # fmt: skip
    child = subprocess.Popen(cmd, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert child.wait() == 0
    shown = b"".join(chunks).decode()
    bars = re.findall(r"prep images: (\d+)/25 \(\d+%\) ([\d.]+) inputs/s ETA (\S+)", shown)
    assert bars and bars[-1][0] == "25" and bars[-1][2] == "0:00:00"
    assert "\r" in shown and "samples written:" in shown  # redrawn line, then the summary

    assert main(["images", str(jpegs), "--out", str(tmp_path / "pipe"), "--max-side", "48"]) == 0
    captured = capsys.readouterr()  # not a terminal: no bar, only the summary
    assert "inputs/s" not in captured.err + captured.out and "samples written:" in captured.out


def test_stored_original_jpeg_gives_the_same_pixels_as_png(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    photo(64, 48, 0).save(src / "a.jpg", quality=90)
    photo(300, 200, 1).save(src / "big.jpg", quality=90)  # needs a resize: PNG either way
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(64, 48, 2).save(src / "rotated.jpg", exif=exif)  # must be turned: PNG
    photo(64, 48, 3).convert("L").save(src / "gray.jpg")  # not RGB: PNG
    photo(64, 48, 4).save(src / "b.png")
    reports, stored = {}, {}
    for store in ("original", "png"):
        out = tmp_path / store
        reports[store] = build_images(src, out, val_fraction=0, max_side=128, store=store)
        index = json.loads((out / "train" / "index.json").read_text())
        urls = [str(out / "train" / s["name"]) for s in index["shards"]]
        for s in wds.WebDataset(urls, shardshuffle=False):
            (el,) = json.loads(s["json"])["elements"]
            stored[store, el["name"]] = (el["file"], s[el["file"]])
    kept = {name for (store, name), (file, _) in stored.items() if file.endswith(".jpg")}
    assert kept == {"a.jpg"}
    assert stored["original", "a.jpg"][1] == (src / "a.jpg").read_bytes()
    for name in ("a.jpg", "big.jpg", "rotated.jpg", "gray.jpg", "b.png"):
        # decoded as the training loader does: Image.open(bytes).convert("RGB")
        a, b = (np.asarray(Image.open(io.BytesIO(stored[s, name][1])).convert("RGB"))
                for s in ("original", "png"))  # fmt: skip
        assert np.array_equal(a, b), name
        assert np.array_equal(a, np.asarray(load_rgb(src / name, max_side=128))), name
    assert stored["png", "rotated.jpg"][0] == "img0.png"
    orig, png = reports["original"]["images"]["train"], reports["png"]["images"]["train"]
    assert (orig["stored_original"], orig["stored_png"], png["stored_original"]) == (1, 4, 0)
    assert orig["num_images"] == png["num_images"] == 5
    assert orig["bytes"] < png["bytes"]
    assert orig["bytes_per_image"] == round(orig["bytes"] / 5, 1)


def test_max_side_matches_the_loaders_resize():
    """A prep at --max-side S gives exactly the size the loader resizes to at image size
    S, so the loader does not resize a second time."""
    from pixword_lit.data.elements import resize_longer_side

    for w, h in ((300, 200), (200, 301), (1000, 333), (225, 100), (224, 224)):
        src = photo(w, h, 0)
        buf = io.BytesIO()
        src.save(buf, "JPEG")
        img = shard_image(buf.getvalue(), max_side=224)
        assert (img.width, img.height) == resize_longer_side(src, 224, "upscale", "bicubic").size
