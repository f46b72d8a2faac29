"""The torchvision input pipeline that people run today, on an ImageNet-style
folder: ImageFolder + DataLoader with PIL decode, Resize(S), RandomCrop(crop),
RandomHorizontalFlip, ToTensor, Normalize, as `vggtrain bench --folder` does
(scale S, random crop, flip, then normalised). One pass warms the page cache;
then each num_workers is timed over the whole folder. Prints one JSON object
per num_workers: {"num_workers", "cores", "images", "images_per_sec"}
(cores: the processes that decode, 1 for num_workers 0).

Usage: python3 torchvision_folder.py DIR [--scale 256] [--crop 224]
       [--batch 32] [--workers 0 1 2]
"""
import argparse
import json
import os
import time

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--scale", type=int, default=256)
ap.add_argument("--crop", type=int, default=224)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
args = ap.parse_args()
torch.set_num_threads(1)
root = os.path.join(args.dir, "train") if os.path.isdir(os.path.join(args.dir, "train")) else args.dir
tf = transforms.Compose([
    transforms.Resize(args.scale),
    transforms.RandomCrop(args.crop),
    transforms.RandomHorizontalFlip(),
    transforms.ToTensor(),
    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])
ds = datasets.ImageFolder(root, transform=tf)


def one_pass(workers):
    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=workers,
                        persistent_workers=False)
    start, n = time.perf_counter(), 0
    for x, _ in loader:
        n += x.shape[0]
    return n, time.perf_counter() - start


one_pass(0)
for w in args.workers:
    n, t = one_pass(w)
    print(json.dumps({"num_workers": w, "cores": max(w, 1), "images": n, "images_per_sec": n / t}), flush=True)
