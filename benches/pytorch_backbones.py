#!/usr/bin/env python3
"""The baselines of `benches/forward_compare.py`: the networks of
`benches/backbones.rs` written in PyTorch (ResNet-50 up to layer3,
MobileNetV2 features, EfficientNet-Lite0 features, ResNet-50 + the ASEN v1
head, and the shipped network: MobileNetV2 + asen's colour histogram + the
ASEN v2 head for all 8 attributes), run three ways: PyTorch eager,
TorchScript frozen (`torch.jit.freeze` + `optimize_for_inference`, which
folds BatchNorm), and exported to ONNX and run in ONNX Runtime. Eval mode,
float32, CPU, 224x224, images/s at batch 1 and 16.

    pip install torch onnx onnxruntime numpy
    python3 benches/pytorch_backbones.py [--secs 3] [--threads 2]

Weights are random (timing does not depend on them); BatchNorm stays a
separate module in eager mode, as in a stock eval-mode PyTorch model.
Architectures are written here from the descriptions in
shared/weights/README.md (torchvision layouts) and from asen's own code
(`models/src/colour.rs`, `models/src/head/asen_v2.rs`), so torchvision is
not needed.
"""
import argparse
import io
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin, cout, k, s, groups=1, pad=None, eps=1e-5):
    return [nn.Conv2d(cin, cout, k, s, k // 2 if pad is None else pad, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=eps)]


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(*conv_bn(cin, width, 1, 1), nn.ReLU(inplace=True),
                                  *conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
                                  *conv_bn(width, cout, 1, 1))
        self.down = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None

    def forward(self, x):
        return F.relu(self.body(x) + (x if self.down is None else self.down(x)))


def resnet50_layer3():
    layers = [*conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2)]:
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t, k=3, eps=1e-5, same=False):
        super().__init__()
        hidden = cin * t
        layers = [] if t == 1 else [*conv_bn(cin, hidden, 1, 1, eps=eps), nn.ReLU6(inplace=True)]
        self.same = (k, stride) if same else None
        pad = 0 if same else k // 2
        layers += [*conv_bn(hidden, hidden, k, stride, groups=hidden, pad=pad, eps=eps), nn.ReLU6(inplace=True)]
        self.expand = nn.Sequential(*layers[:-3]) if t != 1 else nn.Identity()
        self.dw = nn.Sequential(*layers[-3:])
        self.project = nn.Sequential(*conv_bn(hidden, cout, 1, 1, eps=eps))
        self.res = stride == 1 and cin == cout

    def forward(self, x):
        y = self.expand(x)
        if self.same is not None:
            k, s = self.same
            h, w = y.shape[-2:]
            ph = max((-(-h // s) - 1) * s + k - h, 0)
            pw = max((-(-w // s) - 1) * s + k - w, 0)
            y = F.pad(y, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        y = self.project(self.dw(y))
        return x + y if self.res else y


def mobilenet_v2():
    layers = [*conv_bn(3, 32, 3, 2), nn.ReLU6(inplace=True)]
    cin = 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [*conv_bn(cin, 1280, 1, 1), nn.ReLU6(inplace=True)]
    return nn.Sequential(*layers)


class SamePad(nn.Module):
    def __init__(self, k, s):
        super().__init__()
        self.k, self.s = k, s

    def forward(self, x):
        h, w = x.shape[-2:]
        ph = max((-(-h // self.s) - 1) * self.s + self.k - h, 0)
        pw = max((-(-w // self.s) - 1) * self.s + self.k - w, 0)
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def efficientnet_lite0():
    eps = 1e-3
    layers = [SamePad(3, 2), *conv_bn(3, 32, 3, 2, pad=0, eps=eps), nn.ReLU6(inplace=True)]
    cin = 32
    for r, k, s, e, c in [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]:
        for i in range(r):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, e, k=k, eps=eps, same=True))
            cin = c
    layers += [*conv_bn(cin, 1280, 1, 1, eps=eps), nn.ReLU6(inplace=True)]
    return nn.Sequential(*layers)


class AsenV1Head(nn.Module):
    """ASEN v1 head (golden README section 3), one attribute per image."""

    def __init__(self, n_attr=8, c=1024, d=512):
        super().__init__()
        self.n_attr = n_attr
        self.mask_fc1 = nn.Linear(n_attr, d, bias=False)
        self.mask_fc2 = nn.Linear(n_attr, c, bias=False)
        self.conv1 = nn.Conv2d(c, d, 1)
        self.conv2 = nn.Conv2d(d, 1, 1)
        self.fc1 = nn.Linear(2 * c, d)
        self.fc2 = nn.Linear(d, c)
        self.feature_fc = nn.Linear(c, c)

    def forward(self, x, attr):
        onehot = F.one_hot(attr, self.n_attr).float()
        img = torch.tanh(self.conv1(x))
        m = torch.tanh(self.mask_fc1(onehot))[:, :, None, None]
        logits = torch.tanh(self.conv2(m * img)).flatten(1)
        attn = F.softmax(logits, dim=1).view(x.shape[0], 1, x.shape[2], x.shape[3])
        v = (x * attn).sum((2, 3))
        a = F.relu(self.mask_fc2(onehot))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(torch.cat([v, a], 1)))))
        return F.normalize(self.feature_fc(v * gate), dim=1)


class AsenV1(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = resnet50_layer3()
        self.head = AsenV1Head()

    def forward(self, x):
        return self.head(self.backbone(x), torch.zeros(x.shape[0], dtype=torch.long))



def palette():
    """asen's colour palette (CIELab), as `models/src/colour.rs` builds it."""
    import math
    p = [[g, 0.0, 0.0] for g in (5.0, 20.0, 35.0, 50.0, 65.0, 80.0, 95.0)]
    for light, chroma, step in [(30, 35, 1), (50, 35, 1), (70, 35, 1), (55, 70, 1), (85, 20, 2)]:
        for k in range(0, 12, step):
            a = math.radians(30 * k)
            p.append([float(light), chroma * math.cos(a), chroma * math.sin(a)])
    assert len(p) == 61
    return torch.tensor(p)


def pooling_matrix(cells, size):
    m = torch.zeros(cells, size)
    for i in range(cells):
        start, end = i * size // cells, -(-((i + 1) * size) // cells)
        m[i, start:end] = 1.0 / (end - start)
    return m


class ColourHistogram(nn.Module):
    """`models/src/colour.rs`: per-cell soft histogram over the Lab palette,
    square-rooted and scaled by 16, for a `cells` x `cells` map."""

    def __init__(self, size=224, cells=7, samples=8, sigma=12.0, gain=16.0):
        super().__init__()
        s = min(samples * cells, size)
        self.register_buffer("rows_in", pooling_matrix(s, size))
        self.register_buffer("rows_out", pooling_matrix(cells, s))
        self.register_buffer("palette", palette())
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.register_buffer("rgb_to_xyz", torch.tensor([
            [0.4124564 / 0.95047, 0.3575761 / 0.95047, 0.1804375 / 0.95047],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339 / 1.08883, 0.1191920 / 1.08883, 0.9503041 / 1.08883]]))
        self.scale = -1.0 / (2 * sigma * sigma)
        self.gain = gain

    def forward(self, x):
        b = x.shape[0]
        small = self.rows_in @ x @ self.rows_in.t()  # [B, 3, s, s]
        s = small.shape[-1]
        rgb = (small * self.std + self.mean).clamp(0, 1).flatten(2).pow(2.2)
        f = (self.rgb_to_xyz @ rgb).clamp(min=1e-6).pow(1.0 / 3.0)
        fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
        lab = torch.cat([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)
        d2 = -2 * (self.palette @ lab) + (lab * lab).sum(1, keepdim=True) \
            + (self.palette * self.palette).sum(1).view(1, -1, 1)
        w = torch.softmax(d2 * self.scale, dim=1).view(b, -1, s, s)
        return (self.rows_out @ w @ self.rows_out.t()).sqrt() * self.gain


class AsenV2Head(nn.Module):
    """`models/src/head/asen_v2.rs` for every attribute at once: the shared
    image branch once, then attention, gate and projection per attribute."""

    def __init__(self, c=1341, n_attr=8, a=256, hidden=256, d=128):
        super().__init__()
        self.n_attr, self.scale = n_attr, a ** 0.5
        self.attr_embedding = nn.Embedding(n_attr, a)
        self.attr_transform1 = nn.Linear(a, a)
        self.attr_transform2 = nn.Linear(a, a)
        self.conv1 = nn.Conv2d(c, a, 1)
        self.img_bn1 = nn.BatchNorm2d(a)
        self.fc1 = nn.Linear(c + a, hidden)
        self.fc2 = nn.Linear(hidden, c)
        self.feature_fc = nn.Linear(c, d)

    def forward(self, x):
        b = x.shape[0]
        img = torch.tanh(self.img_bn1(self.conv1(x))).flatten(2)  # [B, A, N]
        x = x.flatten(2)  # [B, C, N]
        e = self.attr_embedding.weight  # [n, A]
        t = torch.tanh(self.attr_transform1(e))  # [n, A]
        attn = torch.softmax(torch.einsum("na,bam->bnm", t, img) / self.scale, dim=-1)
        v = torch.einsum("bcm,bnm->bnc", x, attn)  # [B, n, C]
        a = F.relu(self.attr_transform2(e)).expand(b, -1, -1)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(torch.cat([v, a], -1)))))
        return F.normalize(self.feature_fc(v * gate), dim=-1)  # [B, n, D]


class Shipped(nn.Module):
    """The shipped model (`models/default`): MobileNetV2 features, the
    colour histogram appended, the ASEN v2 head for its 8 attributes."""

    def __init__(self):
        super().__init__()
        self.backbone = mobilenet_v2()
        self.colour = ColourHistogram()
        self.head = AsenV2Head()

    def forward(self, x):
        return self.head(torch.cat([self.backbone(x), self.colour(x)], 1))


NETWORKS = {
    "resnet50_layer3": resnet50_layer3,
    "mobilenet_v2": mobilenet_v2,
    "efficientnet_lite0": efficientnet_lite0,
    "resnet50_layer3 + asen_v1 head": lambda: AsenV1(),
    "shipped: mobilenet_v2 + colour + asen_v2 x 8": lambda: Shipped(),
}


def images_per_s(run, batch, secs):
    """Images/s of `run(x)` on a random [batch, 3, 224, 224] batch."""
    x = torch.randn(batch, 3, 224, 224)
    run(x)
    runs, start = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - start < secs:
        run(x)
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def eager(net):
    def run(x):
        with torch.inference_mode():
            return net(x)
    return run


def frozen(net):
    with torch.no_grad():
        script = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(net)))
    def run(x):
        with torch.no_grad():
            return script(x)
    return run


def onnxruntime_session(net, threads):
    import onnxruntime as ort
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, torch.randn(1, 3, 224, 224), buf, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
                          opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    def run(x):
        return sess.run(None, {"x": x.numpy()})
    return run


def measure(secs, threads, only=None):
    """{network: {runtime: {batch: images/s}}} for every network and runtime."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    results = {}
    for name, make in NETWORKS.items():
        if only and only != name:
            continue
        net = make().eval()
        runtimes = {"torch eager": eager(net), "torch frozen": frozen(net),
                    "onnxruntime": onnxruntime_session(net, threads)}
        results[name] = {rt: {b: images_per_s(run, b, secs) for b in (1, 16)}
                         for rt, run in runtimes.items()}
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of every runtime")
    ap.add_argument("--only", help="one network by name")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    import onnxruntime
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, CPU, "
          f"{args.threads} threads, 224x224, >= {args.secs} s per cell")
    results = measure(args.secs, args.threads, args.only)
    print()
    print("| network | runtime | batch 1 (img/s) | batch 16 (img/s) |")
    print("| --- | --- | ---: | ---: |")
    for name, rts in results.items():
        for rt, cells in rts.items():
            print(f"| {name} | {rt} | {cells[1]:.1f} | {cells[16]:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
