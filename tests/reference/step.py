"""A reference for vggtrain's training step, in plain PyTorch, to check the
fused optimiser, the loss scaling and the fused convolution against.

Usage: python3 step.py IN.safetensors, where IN holds
- params "p.<name>" (the initial values) and grads "g.<name>" (one per step,
  stacked on a first axis): names ending in ".bias" get no weight decay;
- "hp": [lr, momentum, weight_decay, init_scale, growth_interval];
- "clean": [first, count], the steps of the runs without loss scaling;
- "x", "w", "b", "dy": a convolution's input, weight, bias and the gradient
  of its output, for relu(conv2d(x, w, b, padding=w.shape[-1] // 2)).
Prints a JSON object:
- "fused", "loop": each parameter after every step of
  torch.optim.SGD(fused=True) and of SGD(foreach=False) (the per-parameter
  loop), with "fused_momentum";
- "scaled": the same with torch.amp.GradScaler("cpu") around the fused
  SGD, where each step's gradient is the stacked one times the scale (as
  backward of the scaled loss gives it), with its "scale", "growth" and
  "skipped" (steps whose gradients held an inf or NaN);
- "conv": the output and the gradients of x, w and b by autograd.
"""
import json
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def sgd(params, grads, lr, momentum, wd, **kw):
    ps = {n: t.clone().requires_grad_(True) for n, t in params.items()}
    decayed = [p for n, p in ps.items() if not n.endswith(".bias")]
    plain = [p for n, p in ps.items() if n.endswith(".bias")]
    groups = [{"params": decayed, "weight_decay": wd}, {"params": plain, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, **kw)
    return ps, opt


def run(params, grads, hp, scaled, **kw):
    lr, momentum, wd, init_scale, interval = hp
    ps, opt = sgd(params, grads, lr, momentum, wd, **kw)
    steps = next(iter(grads.values())).shape[0]
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=int(interval)) if scaled else None
    skipped = 0
    for s in range(steps):
        if scaler:
            # What backward's loss goes through (the scale's lazy start).
            scaler.scale(torch.ones(()))
        for n, p in ps.items():
            g = grads[n][s].clone()
            p.grad = g * scaler.get_scale() if scaler else g
        if scaler:
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            skipped += int(scaler.get_scale() < before)
        else:
            opt.step()
    out = {"params": {n: p.detach().flatten().tolist() for n, p in ps.items()}}
    out["momentum"] = {n: opt.state[p]["momentum_buffer"].flatten().tolist() for n, p in ps.items()}
    if scaler:
        out["scale"] = scaler.get_scale()
        out["growth"] = int(scaler._growth_tracker.item())
        out["skipped"] = skipped
    return out


def conv(t):
    x, w, b = (t[k].clone().requires_grad_(True) for k in ("x", "w", "b"))
    y = F.relu(F.conv2d(x, w, b, padding=w.shape[-1] // 2))
    y.backward(t["dy"])
    return {"y": y.detach().flatten().tolist(), "dx": x.grad.flatten().tolist(),
            "dw": w.grad.flatten().tolist(), "db": b.grad.flatten().tolist()}


def main():
    t = load_file(sys.argv[1])
    params = {k[2:]: v for k, v in t.items() if k.startswith("p.")}
    grads = {k[2:]: v for k, v in t.items() if k.startswith("g.")}
    hp = t["hp"].tolist()
    start, n = t["clean"].tolist()
    clean = {name: g[start:start + n] for name, g in grads.items()}
    print(json.dumps({
        "fused": run(params, clean, hp, False, fused=True),
        "loop": run(params, clean, hp, False, foreach=False),
        "scaled": run(params, grads, hp, True, fused=True),
        "conv": conv(t),
    }))


if __name__ == "__main__":
    main()
