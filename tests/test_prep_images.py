"""data_prep: pixel conversions, `prep images` builds, bad inputs, shard format guarantees."""

import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data_prep import images as images_mod
from data_prep.cli import main
from data_prep.errors import BadInput
from data_prep.imageio import load_rgb, shard_image, to_rgb
from data_prep.images import build_images
from data_prep.shards import assign_split, assign_splits

WHITE = (255, 255, 255)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


def read_split(folder):
    """All samples of a split via webdataset, checked against index.json."""
    index = json.loads((folder / "index.json").read_text())
    urls = [str(folder / s["name"]) for s in index["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False)) if urls else []
    assert len(samples) == index["num_samples"]
    return index, samples


def palette_image(transparent: bool) -> Image.Image:
    img = Image.new("P", (3, 2), 1)
    img.putpalette([0, 0, 0, 200, 30, 40])
    if transparent:
        img.info["transparency"] = 1
    return img


# (description, source image, format to save it in or None to convert in memory, pixel)
CONVERSIONS = [
    ("gray L", Image.new("L", (3, 2), 77), "PNG", (77, 77, 77)),
    ("1-bit", Image.new("1", (3, 2), 1), "PNG", WHITE),
    ("LA alpha 0 -> white", Image.new("LA", (3, 2), (10, 0)), "PNG", WHITE),
    ("RGBA alpha 0 -> white", Image.new("RGBA", (3, 2), (10, 20, 30, 0)), "PNG", WHITE),
    ("RGBA opaque", Image.new("RGBA", (3, 2), (10, 20, 30, 255)), "PNG", (10, 20, 30)),
    ("RGBA half over white", Image.new("RGBA", (3, 2), (0, 0, 0, 128)), "PNG", (127,) * 3),
    ("palette", palette_image(False), "PNG", (200, 30, 40)),
    ("palette transparent", palette_image(True), "PNG", WHITE),
    ("16-bit max", Image.new("I;16", (3, 2), 65535), "PNG", WHITE),
    ("16-bit v>>8", Image.new("I;16", (3, 2), 100 * 256 + 255), "PNG", (100, 100, 100)),
    ("32-bit I, 16-bit range", Image.new("I", (3, 2), 65535), "TIFF", WHITE),
    ("CMYK black", Image.new("CMYK", (3, 2), (0, 0, 0, 255)), "TIFF", (0, 0, 0)),
    ("CMYK white", Image.new("CMYK", (3, 2), (0, 0, 0, 0)), "TIFF", WHITE),
    ("YCbCr", Image.new("RGB", (3, 2), (200, 10, 30)).convert("YCbCr"), None, (199, 10, 28)),
]


@pytest.mark.parametrize("desc,img,fmt,pixel", CONVERSIONS, ids=[c[0] for c in CONVERSIONS])
def test_conversions_give_8bit_rgb(desc, img, fmt, pixel):
    out = load_rgb(encode(img, fmt)) if fmt else to_rgb(img)
    arr = np.asarray(out)
    assert out.mode == "RGB" and arr.dtype == np.uint8 and arr.shape == (2, 3, 3)
    assert (arr == pixel).all(), f"{desc}: {arr[0, 0]} != {pixel}"


def test_exif_orientation_and_max_side(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rot.jpg"
    noise(80, 40).save(path, "JPEG", exif=exif)
    assert load_rgb(path).size == (40, 80)
    assert load_rgb(path, max_side=20).size == (10, 20)
    assert load_rgb(encode(noise(9, 5)), max_side=20).size == (9, 5)  # never upscales


@pytest.fixture
def mixed_folder(tmp_path, monkeypatch):
    """Good images of three shapes plus one of every bad kind, and hidden files."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    (d / ".git").mkdir()
    noise(30, 20, 1).save(d / "wide.png")
    noise(20, 30, 2).save(d / "tall.png")
    noise(25, 25, 3).save(d / "square.bmp")
    noise(12, 8, 4).save(d / "sub" / "deep.jpg")
    (d / "notes.txt").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    data = encode(noise(30, 20, 5))
    (d / "cut.png").write_bytes(data[: len(data) // 2])
    noise(100, 100).save(d / "bomb.png")  # 10000 px > 2 * 5000: Pillow raises
    noise(80, 80).save(d / "big.png")  # 6400 px > 5000: Pillow only warns
    noise(8, 8).save(d / ".hidden.png")
    noise(8, 8).save(d / ".git" / "x.png")
    return d


def test_bad_inputs_are_skipped_and_reported(mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["images", str(mixed_folder), "--out", str(out), "--val-fraction", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["inputs_seen"] == 9  # hidden files are not inputs
    assert report["skipped_counts"] == {
        "decompression_bomb": 2,
        "empty_file": 1,
        "not_an_image": 1,
        "truncated_image": 1,
    }
    assert {s["path"] for s in report["skipped"]} == {
        "notes.txt", "empty.png", "cut.png", "bomb.png", "big.png",
    }  # fmt: skip
    assert report["samples_written"] == {"train": 4, "val": 0}
    index, samples = read_split(out / "train")
    names = [json.loads(s["json"])["elements"][0]["name"] for s in samples]
    assert names == ["square.bmp", "sub/deep.jpg", "tall.png", "wide.png"]
    sizes = index["image_sizes"]
    assert (sizes["count_landscape"], sizes["count_portrait"], sizes["count_square"]) == (2, 1, 1)
    assert (sizes["min_width"], sizes["max_width"]) == (12, 30)
    assert (sizes["min_height"], sizes["max_height"]) == (8, 30)
    printed = capsys.readouterr().out
    assert "decompression_bomb 2" in printed and "samples written: 4 train" in printed


def test_shard_contents_match_index(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(5):
        noise(10 + i, 7, i).save(src / f"im{i}.png")
    out = tmp_path / "out"
    build_images(src, out, val_fraction=0, shard_size=2)
    index, samples = read_split(out / "train")
    assert index["format"] == "pixword-shards-v1" and index["kind"] == "images"
    assert [s["name"] for s in index["shards"]] == [f"shard-00000{i}.tar" for i in range(3)]
    assert (
        [s["samples"] for s in index["shards"]]
        == [2, 2, 1]
        == [s["images"] for s in index["shards"]]
    )
    assert index["num_images"] == 5 and index["tokenizer"] is None and index["packing"] is None
    assert index["args"]["shard_size"] == 2
    for i, s in enumerate(samples):
        assert s["__key__"] == f"{i:08d}"
        doc = json.loads(s["json"])
        assert doc["source"] == f"im{i}.png"
        (el,) = doc["elements"]
        img = Image.open(io.BytesIO(s[el["file"]]))
        assert el == {"type": "image", "name": f"im{i}.png", "file": "img0.png",
                      "width": 10 + i, "height": 7}  # fmt: skip
        assert img.mode == "RGB" and img.size == (10 + i, 7)
        assert (np.asarray(img) == np.asarray(noise(10 + i, 7, i))).all()  # lossless pixels
    with tarfile.open(out / "train" / "shard-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "00000000.img0.png", "00000000.json", "00000001.img0.png", "00000001.json",
    ]  # fmt: skip
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    val_index, _ = read_split(out / "val")
    assert val_index["num_samples"] == 0 and val_index["shards"] == []


def test_split_is_stable_and_proportional():
    names = [f"img_{i}.jpg" for i in range(2000)]
    splits = [assign_split(n, 0, 0.2) for n in names]
    assert splits == [assign_split(n, 0, 0.2) for n in names]
    assert 300 < splits.count("val") < 500
    assert splits != [assign_split(n, 1, 0.2) for n in names]
    assert {assign_split(n, 0, 0) for n in names} == {"train"}
    assert {assign_split(n, 0, 1) for n in names} == {"val"}


def test_two_or_more_inputs_keep_a_validation_unit():
    # 18 names none of which the hash puts in val (5% of 18 rounds to none often enough)
    names = [n for n in (f"photo_{i}.png" for i in range(40)) if assign_split(n, 0, 0.05) == "train"][:18]
    assert len(names) == 18
    splits = assign_splits(names, 0, 0.05)
    assert list(splits.values()).count("val") == 1  # the one whose hash is smallest
    assert splits == assign_splits(list(reversed(names)), 0, 0.05)  # order does not matter
    assert set(assign_splits(names, 0, 0).values()) == {"train"}  # asked for no validation
    assert assign_splits(["only.jpg"], 0, 0.05) == {"only.jpg": "train"}
    many = [f"img_{i}.jpg" for i in range(2000)]  # where the hash gives val units, it decides
    assert assign_splits(many, 0, 0.2) == {n: assign_split(n, 0, 0.2) for n in many}


def test_prep_images_of_a_small_folder_writes_validation_images(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    names = [n for n in (f"photo_{i}.png" for i in range(40)) if assign_split(n, 0, 0.05) == "train"][:18]
    for i, name in enumerate(names):
        noise(6, 5, i).save(src / name)
    build_images(src, tmp_path / "out")  # the default 5%
    val, _ = read_split(tmp_path / "out" / "val")
    train, _ = read_split(tmp_path / "out" / "train")
    assert val["num_samples"] == 1 and train["num_samples"] == 17


def test_builds_are_byte_identical(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(12):
        noise(9, 6 + i, i).save(src / f"{i}.png")
    for name in ("a", "b"):
        build_images(src, tmp_path / name, val_fraction=0.3, shard_size=3)
    for split in ("train", "val"):
        a, b = (
            sorted((tmp_path / "a" / split).iterdir()),
            sorted((tmp_path / "b" / split).iterdir()),
        )
        assert [p.name for p in a] == [p.name for p in b] and len(a) > 1
        for pa, pb in zip(a, b):
            if pa.name != "index.json":  # the index records its own --out
                assert pa.read_bytes() == pb.read_bytes()


def test_crash_leaves_no_partial_shard_and_rerun_succeeds(tmp_path, monkeypatch):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(6):
        noise(8, 8, i).save(src / f"{i}.png")
    out = tmp_path / "out"
    calls = {"n": 0}

    def crashing_load(path, max_side=0, store="original"):
        calls["n"] += 1
        if calls["n"] == 4:  # first shard (2 samples) done, second one half written
            raise RuntimeError("simulated crash")
        return shard_image(path, max_side, store)

    monkeypatch.setattr(images_mod, "shard_image", crashing_load)
    with pytest.raises(RuntimeError):
        build_images(src, out, val_fraction=0, shard_size=2)
    train = out / "train"
    assert sorted(p.name for p in train.iterdir()) == ["shard-000000.tar", "shard-000001.tar.tmp"]
    assert not (out / "report.json").exists()
    with tarfile.open(train / "shard-000000.tar") as tar:
        assert len(tar.getnames()) == 4  # the finished shard is complete

    monkeypatch.undo()
    build_images(src, out, val_fraction=0, shard_size=2)
    assert not list(out.rglob("*.tmp"))
    index, _ = read_split(train)
    assert index["num_samples"] == 6 and len(index["shards"]) == 3


def test_bad_input_error_kinds():
    with pytest.raises(BadInput) as e:
        load_rgb(b"")
    assert e.value.kind == "empty_file"
    with pytest.raises(BadInput) as e:
        load_rgb(b"hello, not pixels")
    assert e.value.kind == "not_an_image"


def test_unusable_input_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert main(["images", str(empty), "--out", str(tmp_path / "o1")]) == 2
    assert str(empty) in capsys.readouterr().err

    (empty / ".DS_Store").write_bytes(b"x")  # hidden files only: still empty
    assert main(["images", str(empty), "--out", str(tmp_path / "o1")]) == 2

    missing = tmp_path / "nope"
    assert main(["images", str(missing), "--out", str(tmp_path / "o2")]) == 2
    assert str(missing) in capsys.readouterr().err

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_text("not really")
    assert main(["images", str(junk), "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "no samples" in err and str(junk) in err
    assert json.loads((tmp_path / "o3" / "report.json").read_text())["skipped_counts"] == {
        "not_an_image": 1
    }

    good = tmp_path / "good"
    good.mkdir()
    noise(4, 4).save(good / "a.png")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["images", str(good), "--out", str(blocker / "out")]) == 2
    assert "not writable" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["images", "mixed", "llava", "glyphs"])
def test_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert "usage: pixword prep " + command in capsys.readouterr().out


def test_output_inside_input_is_not_read_back(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    noise(6, 4).save(src / "a.png")
    for _ in range(2):
        report = build_images(src, src / "shards", val_fraction=0)
        assert report["inputs_seen"] == 1 and report["skipped"] == []


def test_an_empty_validation_split_is_named_at_prep_time(tmp_path, capsys):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        noise(6, 5, i).save(src / f"{i}.png")
    assert main(["images", str(src), "--out", str(tmp_path / "out"), "--val-fraction", "0"]) == 0
    assert "the validation split is empty" in capsys.readouterr().out
    assert main(["images", str(src), "--out", str(tmp_path / "out2")]) == 0
    assert "validation split is empty" not in capsys.readouterr().out
