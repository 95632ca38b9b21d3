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
