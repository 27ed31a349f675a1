#!/usr/bin/env python3
"""PyTorch counterpart of `benches/backbones.rs`: the same three backbones
(ResNet-50 up to layer3, MobileNetV2 features, EfficientNet-Lite0 features),
eval mode, float32, CPU, 224x224, images/s at batch 1 and 16, printed as the
same markdown table.

    pip install torch numpy
    python3 benches/pytorch_backbones.py [--secs 3] [--threads N]

Weights are random (timing does not depend on them); BatchNorm stays a
separate module, as in a stock eval-mode PyTorch model. Architectures are
written here from the descriptions in shared/weights/README.md (torchvision
layouts), so torchvision is not needed.
"""
import argparse
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


def images_per_s(net, batch, secs):
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        net(x)
        runs, start = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - start < secs:
            net(x)
            runs += 1
    return runs * batch / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    nets = [("resnet50_layer3", resnet50_layer3()), ("mobilenet_v2", mobilenet_v2()),
            ("efficientnet_lite0", efficientnet_lite0())]
    shapes = {"resnet50_layer3": (1024, 14), "mobilenet_v2": (1280, 7), "efficientnet_lite0": (1280, 7)}
    print(f"torch {torch.__version__} CPU, {torch.get_num_threads()} threads, 224x224, >= {args.secs} s per cell")
    print()
    print("| backbone | weights | batch 1 (img/s) | batch 16 (img/s) |")
    print("| --- | --- | ---: | ---: |")
    nets.append(("resnet50_layer3 + asen_v1 head", AsenV1()))
    shapes["resnet50_layer3 + asen_v1 head"] = None
    for name, net in nets:
        net.eval()
        with torch.inference_mode():
            out = net(torch.zeros(1, 3, 224, 224)).shape
        assert shapes[name] is None or out == (1, shapes[name][0], shapes[name][1], shapes[name][1]), name
        b1 = images_per_s(net, 1, args.secs)
        b16 = images_per_s(net, 16, args.secs)
        print(f"| {name} | random | {b1:.1f} | {b16:.1f} |", flush=True)


if __name__ == "__main__":
    main()
