"""data_prep: `prep llava` on a chat.json and images made here (folder and zip)."""

import io
import json
import zipfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data_prep.cli import main
from data_prep.llava import build_llava
from data_prep.tokenizer import SPECIAL_TOKENS, load_tokenizer

PROMPT = "Provide a brief description of the given image."


def photo(w: int, h: int, seed: int) -> Image.Image:
    """Smooth colours plus mild noise: compresses like a photograph, not like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8))


def entry(i, image, caption, human=f"{PROMPT}\n<image>"):
    turns = [{"from": "human", "value": human}, {"from": "gpt", "value": caption}]
    return {"id": f"GCC_train_{i:09d}", "image": image, "conversations": turns}


@pytest.fixture
def llava(tmp_path):
    """chat.json with 8 good entries and every kind of broken one; images as a folder
    and as a zip (all under one top folder, as zips of a folder are)."""
    imgs = tmp_path / "images"
    imgs.mkdir()
    entries = []
    for i in range(8):
        name = f"GCC_train_{i:09d}.jpg"
        photo(40 + 8 * i, 30, i).save(imgs / name, quality=90)
        entries.append(entry(i, name, f"caption number {i} . café"))
    entries[3]["conversations"][0]["value"] = "<image>\nWhat is this?"  # image first
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    entries += [
        entry(8, "GCC_train_missing.jpg", "an image that is not there"),
        entry(9, "broken.jpg", "an unreadable image"),
        "not an object",
        {"id": "x", "conversations": []},  # no image
        entry(10, "GCC_train_000000001.jpg", "", ),  # empty caption
        entry(11, "GCC_train_000000002.jpg", "two tags", human="<image> <image>"),
        {"id": "y", "image": "GCC_train_000000002.jpg"},  # no conversations
    ]
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps(entries, ensure_ascii=False))
    zpath = tmp_path / "images.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in sorted(imgs.iterdir()):
            z.write(p, f"images/{p.name}")
    return chat, imgs, zpath


def samples(folder):
    index = json.loads((folder / "index.json").read_text())
    urls = [str(folder / s["name"]) for s in index["shards"]]
    return index, list(wds.WebDataset(urls, shardshuffle=False)) if urls else []


def test_image_only_from_folder_and_zip_agree(llava, tmp_path):
    """Folder with 1 worker and zip with 2 workers give the same shard bytes."""
    chat, imgs, zpath = llava
    out = {}
    for name, src, workers in (("dir", imgs, "1"), ("zip", zpath, "2")):
        out[name] = tmp_path / name
        argv = ["llava", "--json", str(chat), "--images", str(src), "--out", str(out[name])]
        assert main([*argv, "--workers", workers, "--val-fraction", "0"]) == 0
    report = json.loads((out["dir"] / "report.json").read_text())
    # Only the image is read in image_only mode, so the entries without a usable
    # conversation but with an image still give samples.
    assert report["inputs_seen"] == 15
    assert report["skipped_counts"] == {"malformed_entry": 2, "missing_image": 1,
                                        "not_an_image": 1}  # fmt: skip
    assert report["samples_written"] == {"train": 11, "val": 0}
    assert report["images"]["train"]["stored_original"] == 11  # small 8-bit RGB JPEGs
    zreport = json.loads((out["zip"] / "report.json").read_text())
    assert zreport["samples_written"] == report["samples_written"]
    assert any(str(zpath) + ":images/broken.jpg" in s["path"] for s in zreport["skipped"])
    for rel in ("train/shard-000000.tar",):
        assert (out["dir"] / rel).read_bytes() == (out["zip"] / rel).read_bytes()
    index, got = samples(out["dir"] / "train")
    assert index["kind"] == "images"
    first = json.loads(got[0]["json"])
    assert first["elements"][0]["name"] == "GCC_train_000000000.jpg"
    assert first["source"] == "chat.json#0"
    assert got[0]["img0.jpg"] == (imgs / "GCC_train_000000000.jpg").read_bytes()


@pytest.mark.parametrize("prompt", ["keep", "drop"])
def test_mixed_documents_in_the_papers_format(llava, tmp_path, prompt):
    chat, _, zpath = llava
    out = tmp_path / "out"
    report = build_llava(chat, zpath, out, mode="mixed", prompt=prompt, image_size=32,
                         window_size=8, max_seq_len=64, vocab_size=300, val_fraction=0)  # fmt: skip
    assert report["skipped_counts"] == {"malformed_entry": 5, "missing_image": 1,
                                        "not_an_image": 1}  # fmt: skip
    assert report["samples_written"] == {"train": 8, "val": 0}
    tok = load_tokenizer(out / "tokenizer.json")
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(6))
    index, got = samples(out / "train")
    assert index["kind"] == "mixed" and index["tokenizer"] == "../tokenizer.json"
    docs = [json.loads(s["json"])["elements"] for s in got]
    shape = [(e["type"], e.get("text", e.get("name"))) for e in docs[0]]
    expect = [("image", "GCC_train_000000000.jpg"), ("text", "caption number 0 . café")]
    if prompt == "keep":
        expect.insert(0, ("text", PROMPT))  # as in the authors' sample_1.txt
    assert shape == expect
    order3 = [(e["type"], e.get("text")) for e in docs[3]]
    if prompt == "keep":  # the human turn's order is kept: image, then its text
        assert order3[:2] == [("image", None), ("text", "What is this?")]
    else:
        assert [t for t, _ in order3] == ["image", "text"]


def test_mixed_tokenizer_trained_on_train_split_only(llava, tmp_path):
    chat, imgs, _ = llava
    entries = json.loads(chat.read_text())
    for i, e in enumerate(entries[:8]):
        e["conversations"][1]["value"] = f"zzqx{chr(97 + i)}word " * 30  # a word only this entry has
    chat.write_text(json.dumps(entries))
    out = tmp_path / "out"
    build_llava(chat, imgs, out, mode="mixed", image_size=32, window_size=8, max_seq_len=64,
                vocab_size=2000, val_fraction=0.4, seed=1)  # fmt: skip
    val_names = {e["name"] for s in samples(out / "val")[1]
                 for e in json.loads(s["json"])["elements"] if e["type"] == "image"}  # fmt: skip
    train_names = {e["name"] for s in samples(out / "train")[1]
                   for e in json.loads(s["json"])["elements"] if e["type"] == "image"}  # fmt: skip
    assert val_names and train_names and not val_names & train_names
    vocab = load_tokenizer(out / "tokenizer.json").get_vocab()
    for i in range(8):
        learned = any(f"zzqx{chr(97 + i)}word" in t for t in vocab)
        assert learned == (f"GCC_train_{i:09d}.jpg" in train_names), i


def test_llava_unusable_input_exits_2(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    out = ["--out", str(tmp_path / "out")]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["llava", "--json", str(bad), "--images", str(imgs), *out]) == 2
    assert "bad.json is not valid JSON" in capsys.readouterr().err
    bad.write_text('{"a": 1}')
    assert main(["llava", "--json", str(bad), "--images", str(imgs), *out]) == 2
    assert "not a JSON list" in capsys.readouterr().err
    fake_zip = tmp_path / "images.zip"
    fake_zip.write_text("nope")
    bad.write_text(json.dumps([entry(0, "a.jpg", "x")]))
    assert main(["llava", "--json", str(bad), "--images", str(fake_zip), *out]) == 2
    assert "images.zip is neither a folder nor a readable zip" in capsys.readouterr().err
    assert main(["llava", "--json", str(bad), "--images", str(imgs), *out]) == 2  # nothing
    assert "no samples" in capsys.readouterr().err


def test_zip_images_are_not_unpacked(llava, tmp_path):
    chat, _, zpath = llava
    out = tmp_path / "out"
    build_llava(chat, zpath, out, val_fraction=0)
    written = {p.name for p in out.rglob("*")}
    assert not any(name.endswith(".jpg") for name in written)
    img = Image.open(io.BytesIO(samples(out / "train")[1][0]["img0.jpg"]))
    assert img.size == (40, 30)


@pytest.mark.parametrize("mode", ["image_only", "mixed"])
def test_a_small_llava_set_keeps_validation_data(llava, tmp_path, mode):
    """8 usable images at the default 5%: the hash alone would put none in val."""
    from data_prep.shards import assign_split

    chat, imgs, _ = llava
    names = [f"GCC_train_{i:09d}.jpg" for i in range(8)] + ["GCC_train_missing.jpg", "broken.jpg"]
    # a seed whose hash puts none of the images in val, nor the two that cannot be read
    seed = next(s for s in range(100) if {assign_split(n, s, 0.05) for n in names} == {"train"})
    out = tmp_path / "out"
    build_llava(chat, imgs, out, mode=mode, image_size=32, window_size=8, max_seq_len=64,
                vocab_size=500, seed=seed)  # fmt: skip
    assert samples(out / "val")[0]["num_samples"] >= 1


# ---- an interrupted build (Ctrl-C) ----------------------------------------------------------
def interrupt(monkeypatch, *, at_sample: int | None = None, at_index: str | None = None) -> None:
    """Make the next build raise KeyboardInterrupt (as Ctrl-C does) in the writing process:
    before its `at_sample`-th sample is added, or while the `at_index` split's index.json is
    written (the other split's may be written already)."""
    from data_prep import shards

    add, write, seen = shards.SplitWriter.add, shards.write_json_atomic, [0]

    def adding(self, *a, **k):
        seen[0] += 1
        if seen[0] == at_sample:
            raise KeyboardInterrupt
        return add(self, *a, **k)

    def writing(path, obj):
        if path.name == "index.json" and path.parent.name == at_index:
            raise KeyboardInterrupt
        write(path, obj)

    monkeypatch.setattr(shards.SplitWriter, "add", adding)
    monkeypatch.setattr(shards, "write_json_atomic", writing)


def files(folder) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("mode", ["image_only", "mixed"])
def test_interrupted_llava_leaves_no_partial_file_and_a_rerun_matches(llava, tmp_path, monkeypatch,
                                                                       capsys, mode):
    """Ctrl-C mid-shard, then Ctrl-C while the indexes are written, then a rerun: only
    finished shards ever carry a final name, an index.json only a split whose shards are all
    finished, report.json only a finished build; the rerun's output is byte-identical to an
    uninterrupted build's. Last, an --overwrite rebuild interrupted mid-way leaves no index or
    shard of the old build beside its own partial output."""
    from test_prep_run import tree

    chat, imgs, _ = llava
    args = ["llava", "--json", str(chat), "--images", str(imgs), "--mode", mode, "--shard-size", "2",
            "--val-fraction", "0.25", "--workers", "1", "--image-size", "32", "--window-size", "8",
            "--max-seq-len", "256", "--vocab-size", "300"]
    fresh, out = tmp_path / "fresh", tmp_path / "out"
    assert main([*args, "--out", str(fresh)]) == 0
    interrupt(monkeypatch, at_sample=6)  # 5 samples written: 2 shards finished, 1 open
    assert main([*args, "--out", str(out)]) == 130
    assert "interrupted; rerun the same command" in capsys.readouterr().err
    left = files(out)
    assert not {f for f in left if f.endswith(("index.json", "report.json"))}
    partial = {f for f in left if f.endswith(".tmp")}
    assert len(partial) == 1 and partial.pop().endswith(".tar.tmp")  # the open shard, aside
    finished = {f for f in left if f.endswith(".tar")}
    assert len(finished) == 2
    for f in finished:  # the finished shards are complete: those of the uninterrupted build
        assert (out / f).read_bytes() == (fresh / f).read_bytes()
    monkeypatch.undo()
    interrupt(monkeypatch, at_index="val")  # every shard done, train/index.json written
    assert main([*args, "--out", str(out)]) == 130
    state = json.loads((out / "progress.json").read_text())
    assert not state["complete"] and not (out / "report.json").exists()
    assert not (out / "val" / "index.json").exists() and not list(out.rglob("*.tmp"))
    monkeypatch.undo()
    assert main([*args, "--out", str(out)]) == 0
    resumed, uninterrupted = tree(out), tree(fresh)
    assert resumed.pop("progress.json") and uninterrupted.pop("progress.json")
    assert resumed == uninterrupted
    interrupt(monkeypatch, at_sample=4)  # the first shard of the rebuild finished, 1 open
    assert main([*args, "--out", str(out), "--overwrite"]) == 130
    left = files(out)
    assert not {f for f in left if f.endswith(("index.json", "report.json"))}
    assert sorted(f.rsplit(".", 1)[-1] for f in left if "shard-" in f) == ["tar", "tmp"]
