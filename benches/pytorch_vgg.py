"""PyTorch eager baseline for `vggtrain bench` (compute only): the same VGG,
batch, optimiser and thread count, PyTorch's default NCHW layout.

    PYTHONPATH=~/.cache/vggtrain/torch-2.11.0 python3 benches/pytorch_vgg.py --model D --width 4 --input 32 --batch 128
"""
import argparse, json, time
import torch
import torch.nn as nn

CFG = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M"] + [256] * 4 + ["M"] + [512] * 4 + ["M"] + [512] * 4 + ["M"],
}

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

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="D"); p.add_argument("--width", type=int, default=4)
    p.add_argument("--input", type=int, default=32); p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10); p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()
    net = vgg(a.model, a.width, a.input, 10)
    x = torch.randn(a.batch, 3, a.input, a.input)
    if a.channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch,))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    def step():
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss
    for _ in range(a.warmup):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    ips = a.steps * a.batch / (time.perf_counter() - t)
    print(json.dumps({"pytorch_images_per_sec": ips, "threads": torch.get_num_threads(),
                      "channels_last": a.channels_last, "model": a.model, "width": a.width,
                      "input": a.input, "batch": a.batch}))

if __name__ == "__main__":
    main()
