"""Train a small MLP on Fashion-MNIST with minidl's autograd (the README's main job for now).

    python examples/train_fashion_mnist.py [--epochs 5] [--device cpu]

Everything is plain minidl: Parameters, ops, cross_entropy, backward(), and an
SGD-with-momentum update written out in a few lines.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import minidl as mdl
import minidl.functions as F
from minidl.data import load_idx_dataset

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def init_params(rng, sizes, device):
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        w = rng.standard_normal((fan_in, fan_out)).astype(np.float32) * np.sqrt(2.0 / fan_in)  # He init
        params.append(mdl.Parameter(w, device=device))
        params.append(mdl.Parameter(np.zeros(fan_out, np.float32), device=device))
    return params


def forward(params, x):
    h = x
    for i in range(0, len(params) - 2, 2):
        h = F.relu(h @ params[i] + params[i + 1])
    return h @ params[-2] + params[-1]


def evaluate(params, images, labels, device, batch=1000):
    correct = 0
    with mdl.no_grad():
        for start in range(0, len(images), batch):
            x = mdl.tensor(images[start:start + batch], device=device)
            correct += int((forward(params, x).argmax(axis=1).numpy() == labels[start:start + batch]).sum())
    return correct / len(images)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=None, help="directory with the IDX files (default: Debian's)")
    args = parser.parse_args(argv)

    train_x, train_y = load_idx_dataset(args.data, "train")
    test_x, test_y = load_idx_dataset(args.data, "test")
    mean, std = train_x.mean() / 255.0, train_x.std() / 255.0
    prep = lambda a: ((a.reshape(len(a), -1) / 255.0 - mean) / std).astype(np.float32)  # noqa: E731
    train_x, test_x = prep(train_x), prep(test_x)
    print(f"Fashion-MNIST: {len(train_x)} train / {len(test_x)} test images, device {args.device}")

    rng = np.random.default_rng(0)
    params = init_params(rng, [784, 256, 128, 10], args.device)
    velocity = [p.device.xp.zeros_like(p.data) for p in params]
    steps_per_epoch = len(train_x) // args.batch_size
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(train_x))
        started, total_loss = time.perf_counter(), 0.0
        lr = args.lr * 0.5 * (1 + np.cos(np.pi * (epoch - 1) / args.epochs))  # cosine decay per epoch
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            x = mdl.tensor(train_x[idx], device=args.device)
            loss = F.cross_entropy(forward(params, x), train_y[idx])
            for p in params:
                p.grad = None
            loss.backward()
            for p, v in zip(params, velocity):  # SGD, momentum 0.9, weight decay 5e-4, in place
                v *= 0.9
                v -= lr * (p.grad.data + 5e-4 * p.data)
                p.data += v
            total_loss += loss.item()
        seconds = time.perf_counter() - started
        accuracy = evaluate(params, test_x, test_y, args.device)
        print(f"epoch {epoch}/{args.epochs}  loss {total_loss / steps_per_epoch:.4f}  "
              f"test accuracy {accuracy:.2%}  {steps_per_epoch * args.batch_size / seconds:,.0f} images/s")
    with mdl.no_grad():
        probs = F.softmax(forward(params, mdl.tensor(test_x[:5], device=args.device)), axis=1).numpy()
    for i, p in enumerate(probs):
        print(f"test image {i}: predicted {CLASSES[p.argmax()]!r} ({p.max():.1%}), true {CLASSES[test_y[i]]!r}")
    print(f"final test accuracy: {accuracy:.2%}")


if __name__ == "__main__":
    main()
