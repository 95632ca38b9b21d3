"""A synthetic stand-in for the LLaVA pretraining files, for measuring prep throughput.

`python -m data_prep.synthetic OUT --count 300` writes OUT/images/*.jpg (photo-like
JPEGs: smooth colour fields, edges and sensor-like noise, 512-800 px on the long side,
quality 90, like CC3M photographs), OUT/images.zip (the same files, stored under
images/ as the public zips are) and OUT/chat.json in the LLaVA pretraining format.
Deterministic for a given --seed. Used for the throughput numbers in data_prep/README.md.
"""

import argparse
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

PROMPT = "Provide a brief description of the given image.\n<image>"
WORDS = "a the red blue small old dog cat street house tree car sky water people on in near".split()


def photo(rng: np.random.Generator) -> Image.Image:
    long = int(rng.integers(512, 801))
    short = int(long * rng.uniform(0.6, 1.0))
    w, h = (long, short) if rng.random() < 0.7 else (short, long)
    coarse = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    detail = rng.integers(0, 256, (h // 8, w // 8, 3), np.uint8)
    detail = Image.fromarray(detail).resize((w, h), Image.Resampling.NEAREST)
    img = Image.blend(img, detail.filter(ImageFilter.GaussianBlur(2)), 0.25)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    images = a.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(a.count):
        rng = np.random.default_rng([a.seed, i])
        name = f"GCC_train_{i:09d}.jpg"
        photo(rng).save(images / name, quality=90)
        caption = " ".join(rng.choice(WORDS, int(rng.integers(5, 15))))
        entries.append({"id": name[:-4], "image": name, "conversations": [
            {"from": "human", "value": PROMPT}, {"from": "gpt", "value": caption}]})  # fmt: skip
    (a.out / "chat.json").write_text(json.dumps(entries, indent=1))
    with zipfile.ZipFile(a.out / "images.zip", "w") as z:  # JPEGs: stored, not deflated
        for p in sorted(images.iterdir()):
            z.write(p, f"images/{p.name}")
    size = sum(p.stat().st_size for p in images.iterdir())
    print(f"{a.count} images, {size / 2**20:.1f} MiB, in {images}; {a.out / 'chat.json'}")


if __name__ == "__main__":
    main()
