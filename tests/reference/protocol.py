"""A reference for vggtrain's test protocol, written in plain PyTorch from the
paper's definitions (Simonyan & Zisserman, sections 3.2 and 4.2-4.4), to check
`vggtrain predict` against.

Usage: python3 protocol.py CASES.json, where CASES.json is a list of
{"models": [exported .safetensors], "image": a PNG, "q": the test scale,
 "methods": ["crop" | "dense" | "multi-crop", ...], "flip": bool,
 "torchvision": bool}. The image must need no rescaling (its smallest side
is q; for a network of a small dataset: of its native size, and q = 32). Prints a JSON list: each case's posterior, one number per class.

With "torchvision": true the network is torchvision's own vgg11/13/16/19 with
the export loaded by load_state_dict(strict=True), as the README shows.
"""
import json
import sys

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision.io import ImageReadMode, read_image

# Table 1: convolutions per block (3x3 here; A-LRN and C are not covered).
BLOCKS = {"A": [1, 1, 2, 2, 2], "B": [2, 2, 2, 2, 2], "D": [2, 2, 3, 3, 3], "E": [2, 2, 4, 4, 4]}
TORCHVISION = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}


def load(path):
    with safe_open(path, "pt") as f:
        card = json.loads(f.metadata()["vggtrain.model"])
    return load_file(path), card


def features(sd, card, x):
    i = 0  # torchvision's numbering: conv, (bn), relu, ..., pool
    for convs in BLOCKS[card["arch"]]:
        for _ in range(convs):
            x = F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1)
            if card["batch_norm"]:
                j = i + 1
                x = F.batch_norm(x, sd[f"features.{j}.running_mean"], sd[f"features.{j}.running_var"],
                                 sd[f"features.{j}.weight"], sd[f"features.{j}.bias"], False, 0.0, 1e-5)
                i += 1
            x = F.relu(x)
            i += 2
        x = F.max_pool2d(x, 2, 2)
        i += 1
    return x


def classify(sd, card, x, dense):
    """Logits of crops (the classifier on the flattened map) or of whole
    images (dense: FC layers as convolutions, the score map averaged)."""
    f = features(sd, card, x)
    w0, w3, w6 = (sd[f"classifier.{k}.weight"] for k in (0, 3, 6))
    b0, b3, b6 = (sd[f"classifier.{k}.bias"] for k in (0, 3, 6))
    if not dense:
        h = F.relu(F.linear(f.flatten(1), w0, b0))
        h = F.relu(F.linear(h, w3, b3))
        return F.linear(h, w6, b6)
    side = card["crop"] // 32
    h = F.relu(F.conv2d(f, w0.view(w0.shape[0], -1, side, side), b0))
    h = F.relu(F.conv2d(h, w3[:, :, None, None], b3))
    return F.conv2d(h, w6[:, :, None, None], b6).mean((2, 3))


def prepare(card, path):
    mode = ImageReadMode.RGB if card["channels"] == 3 else ImageReadMode.GRAY
    x = read_image(path, mode).float()[None] / 255.0
    if card["native"] is not None:
        # A small dataset's image (of its native size): zero-padded to 32.
        n = card["native"]
        assert x.shape[2:] == (n, n), "the reference takes images of the native size"
        before = (32 - n) // 2
        x = F.pad(x, (before, 32 - n - before, before, 32 - n - before))
    mean = torch.tensor(card["mean"]).view(1, -1, 1, 1)
    x = x - mean
    if card["std"] is not None:
        x = x / torch.tensor(card["std"]).view(1, -1, 1, 1)
    return x


def grid(h, w, c):
    return [(j * (h - c) // 4, i * (w - c) // 4) for j in range(5) for i in range(5)]


def posterior(net, card, x, methods, flip):
    """Mean over the methods of the mean over each method's views."""
    c = card["crop"]
    _, _, h, w = x.shape
    soft = lambda v, dense=False: net(v, dense).softmax(-1)
    out = []
    for m in methods:
        if m == "crop":
            y0, x0 = (h - c) // 2, (w - c) // 2
            v = x[:, :, y0:y0 + c, x0:x0 + c]
            views = [v, v.flip(3)] if flip else [v]
            out.append(torch.stack([soft(v) for v in views]).mean(0))
        elif m == "dense":
            views = [x, x.flip(3)] if flip else [x]
            out.append(torch.stack([soft(v, True) for v in views]).mean(0))
        else:
            crops = [x[:, :, y:y + c, xx:xx + c] for y, xx in grid(h, w, c)]
            views = crops + [v.flip(3) for v in crops]
            out.append(torch.stack([soft(v) for v in views]).mean(0))
    return torch.stack(out).mean(0)


def case(spec):
    per_model = []
    for path in spec["models"]:
        sd, card = load(path)
        if spec.get("torchvision"):
            import torchvision

            model = getattr(torchvision.models, TORCHVISION[card["arch"]])(num_classes=len(card["classes"]))
            model.load_state_dict(sd, strict=True)
            model.eval()
            net = lambda v, dense: model(v)
        else:
            net = lambda v, dense, sd=sd, card=card: classify(sd, card, v, dense)
        x = prepare(card, spec["image"])
        assert min(x.shape[2:]) == spec["q"], "the reference takes images that need no rescaling"
        per_model.append(posterior(net, card, x, spec["methods"], spec["flip"]))
    return torch.stack(per_model).mean(0)[0].tolist()


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    torch.set_default_dtype(torch.float32)
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    print(json.dumps([case(c) for c in cases]))
