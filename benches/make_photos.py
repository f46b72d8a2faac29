"""Builds an ImageNet-style folder of real photographs, offline.

The photographs are the public-domain and CC0 sample images that the
scikit-image wheel ships in skimage/data/ (PyPI is reachable where PyTorch is):
each is one class, and each output image is a random crop of it, resized to
about 500x375 (ImageNet's mean size; portrait or landscape), sometimes
mirrored, saved as a baseline JPEG at quality 85-95 with 4:2:0 chroma, as
most of ImageNet is. The same --seed gives the same files.

Usage: python3 make_photos.py --out DIR [--train N] [--val N] [--seed S]
       [--wheel scikit_image-....whl]
  DIR/train/<class>/NNNNN.jpg and DIR/val/<class>/NNNNN.jpg, N per class.
Needs Pillow (setup.sh --for-tests puts it in .pyref: PYTHONPATH=.pyref).
"""
import argparse
import glob
import io
import os
import random
import subprocess
import sys
import tempfile
import zipfile

from PIL import Image

WHEEL = "scikit-image==0.26.0"
# (file in skimage/data, class name, licence as skimage states it)
SOURCES = [
    ("astronaut.png", "astronaut", "NASA, public domain"),
    ("chelsea.png", "cat", "CC0, Stefan van der Walt"),
    ("coffee.png", "coffee", "CC0, Rachel Michetti"),
    ("rocket.jpg", "rocket", "NASA, public domain"),
    ("hubble_deep_field.jpg", "galaxies", "NASA, public domain"),
    ("retina.jpg", "retina", "public domain"),
    ("ihc.png", "tissue", "no copyright restrictions"),
    ("camera.png", "cameraman", "CC0, Lav Varshney (grey)"),
]


def wheel_path(given):
    if given:
        return given
    cache = os.path.join(os.path.expanduser("~/.cache/vggtrain"), "wheels")
    found = glob.glob(os.path.join(cache, "scikit_image-0.26.0-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
             "--only-binary=:all:", "-d", cache, WHEEL],
            check=True,
        )
        found = glob.glob(os.path.join(cache, "scikit_image-0.26.0-*.whl"))
    return found[0]


def photo(source, rng):
    """A random crop of `source`, about 500x375, maybe mirrored."""
    w, h = source.size
    area = rng.uniform(0.35, 1.0) * w * h
    aspect = rng.choice([4 / 3, 3 / 4]) * rng.uniform(0.9, 1.1)
    cw = min(w, int(round((area * aspect) ** 0.5)))
    ch = min(h, int(round((area / aspect) ** 0.5)))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = source.crop((x0, y0, x0 + cw, y0 + ch))
    long_side = rng.randint(420, 520)
    k = long_side / max(cw, ch)
    img = img.resize((max(1, round(cw * k)), max(1, round(ch * k))), Image.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", type=int, default=250, help="images per class")
    ap.add_argument("--val", type=int, default=25, help="images per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wheel", help="a scikit-image 0.26.0 wheel (else pip downloads it)")
    args = ap.parse_args()
    for split in ("train", "val"):
        if os.path.exists(os.path.join(args.out, split)):
            sys.exit(f"{os.path.join(args.out, split)} exists: choose another --out")
    rng = random.Random(args.seed)
    with zipfile.ZipFile(wheel_path(args.wheel)) as z:
        sources = []
        for name, cls, _ in SOURCES:
            img = Image.open(io.BytesIO(z.read("skimage/data/" + name)))
            sources.append((cls, img.convert("L" if img.mode == "L" else "RGB")))
    written = 0
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(args.out)) or ".") as tmp:
        for split, n in (("train", args.train), ("val", args.val)):
            for cls, source in sources:
                folder = os.path.join(tmp, split, cls)
                os.makedirs(folder, exist_ok=True)
                for i in range(n):
                    img = photo(source, rng)
                    q = rng.randint(85, 95)
                    img.save(os.path.join(folder, f"{i:05d}.jpg"), quality=q, subsampling=2)
                    written += 1
        os.makedirs(args.out, exist_ok=True)
        for split in ("train", "val"):
            if os.path.isdir(os.path.join(tmp, split)):
                os.replace(os.path.join(tmp, split), os.path.join(args.out, split))
    print(f"wrote {written} photographs ({len(sources)} classes) to {args.out}")


if __name__ == "__main__":
    main()
