"""PyTorch baseline for `vggtrain bench` (compute only): the same VGG, batch,
optimiser (SGD, momentum 0.9, weight decay 5e-4) and thread count; PyTorch's
default NCHW layout unless --channels-last. Prints one JSON line.

    PYTHONPATH=~/.cache/vggtrain/torch-2.11.0 python3 benches/pytorch_vgg.py --model D --width 4 --input 32 --batch 128
    python3 benches/pytorch_vgg.py --device cuda --model D --width 1 --input 224 --batch 128 \\
        --precision bf16 --channels-last [--compile --fused]

Without the new flags it is the CPU eager fp32 baseline that benches/compare.sh
runs. The flags:

--device cpu|cuda   cuda: model and the one batch on the GPU,
                    torch.backends.cudnn.benchmark = True, and
                    torch.cuda.synchronize() before each clock reading.
--precision fp32|bf16|fp16
                    on CUDA: torch.autocast("cuda", dtype) around forward and
                    loss (weights, gradients and the optimiser stay fp32, as in
                    PyTorch AMP); fp16 also scales the loss with
                    torch.amp.GradScaler("cuda"). On CPU bf16/fp16 run in fp32:
                    the JSON says so in "precision_effective".
--compile           torch.compile (default mode, inductor) of forward + loss;
                    AOTAutograd compiles the matching backward, so the whole
                    forward/backward is compiled code. The optimiser step stays
                    eager: pass --fused to make it one fused CUDA kernel
                    (scripts/gpu-check.sh does). This is the usual way to
                    torch.compile a training step in PyTorch 2.x (a compiled
                    function containing loss.backward() graph-breaks there).
                    Warm-up is at least 5 steps, so it absorbs the compilation
                    ("warmup_s" says how long warm-up took). On CPU, inductor
                    needs a C++ compiler; it is meant for CUDA.
--fused             torch.optim.SGD(fused=True) (default: PyTorch's default,
                    foreach on CUDA, per-tensor on CPU).
"""
import argparse, json, sys, time
import torch
import torch.nn as nn

CFG = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M"] + [256] * 4 + ["M"] + [512] * 4 + ["M"] + [512] * 4 + ["M"],
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

def vgg(model, width, input_size, classes):
    layers, c = [], 3
    for v in CFG[model]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v // width, 3, padding=1), nn.ReLU(inplace=True)]
            c = v // width
    f, s = 4096 // width, input_size // 32
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * s * s, f), nn.ReLU(True), nn.Dropout(0.5),
                         nn.Linear(f, f), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(f, classes))

def forward_flops(net, input_size):
    """Multiply-adds x 2 of one image's forward pass, counted as vggtrain does."""
    flops, h = 0, input_size
    for m in net:
        if isinstance(m, nn.Conv2d):
            flops += 2 * 9 * m.in_channels * m.out_channels * h * h
        elif isinstance(m, nn.MaxPool2d):
            h //= 2
        elif isinstance(m, nn.Linear):
            flops += 2 * m.in_features * m.out_features
    return flops

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="D", choices=sorted(CFG)); p.add_argument("--width", type=int, default=4)
    p.add_argument("--input", type=int, default=32); p.add_argument("--batch", type=int, default=128)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=10); p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=list(DTYPES))
    p.add_argument("--compile", action="store_true", help="torch.compile forward + loss (see the docstring)")
    p.add_argument("--fused", action="store_true", help="torch.optim.SGD(fused=True)")
    a = p.parse_args()
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit(f"pytorch_vgg.py: --device cuda, but this PyTorch ({torch.__version__}, CUDA "
                 f"{torch.version.cuda}) finds no CUDA device")
    dev = torch.device(a.device)
    effective = a.precision if cuda else "fp32"
    if effective != a.precision:
        print(f"pytorch_vgg.py: --precision {a.precision} on CPU runs in fp32", file=sys.stderr)
    if cuda:
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    net = vgg(a.model, a.width, a.input, a.classes).to(dev)
    x = torch.randn(a.batch, 3, a.input, a.input, device=dev)
    if a.channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    y = torch.randint(0, a.classes, (a.batch,), device=dev)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4,
                          **({"fused": True} if a.fused else {}))
    loss_fn = nn.CrossEntropyLoss()
    dtype = DTYPES[effective]
    amp = cuda and dtype != torch.float32

    def forward_loss(x, y):
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            return loss_fn(net(x), y)
    if a.compile:
        forward_loss = torch.compile(forward_loss)
    scaler = torch.amp.GradScaler("cuda") if cuda and effective == "fp16" else None

    def step():
        opt.zero_grad(set_to_none=True)
        loss = forward_loss(x, y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize()

    warmup = max(a.warmup, 5) if a.compile else a.warmup
    loss = torch.tensor(float("nan"))
    sync()
    t = time.perf_counter()
    for _ in range(warmup):
        loss = step()
    sync()
    warmup_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    sync()
    ips = a.steps * a.batch / (time.perf_counter() - t)
    loss = loss.item()
    print(json.dumps({
        "pytorch_images_per_sec": ips, "threads": torch.get_num_threads(),
        "channels_last": a.channels_last, "model": a.model, "width": a.width,
        "input": a.input, "batch": a.batch,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "precision": a.precision, "precision_effective": effective,
        "compile": a.compile, "fused": a.fused,
        "train_tflops": 3 * forward_flops(net, a.input) * ips / 1e12,
        "warmup_steps": warmup, "warmup_s": warmup_s, "steps": a.steps, "last_loss": loss,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "peak_gpu_reserved_mb": torch.cuda.max_memory_reserved() / 2**20 if cuda else None,
        "torch": torch.__version__,
    }))

if __name__ == "__main__":
    main()
