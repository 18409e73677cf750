"""The PyTorch twins of minidl's model files, for the benchmarks' same-run comparisons (PyTorch is never a
runtime dependency of minidl: only the benchmarks and tests import it)."""
from __future__ import annotations


def _lrn(nn):
    return nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)  # the paper's LRN in torch's convention


def alexnet_mini(nn):
    """models/alexnet-mini.yaml (550,538 parameters)."""
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), _lrn(nn), nn.MaxPool2d(3, 2),
        nn.Conv2d(32, 64, 5, padding=2, groups=2), nn.ReLU(), _lrn(nn), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 96, 3, padding=1), nn.ReLU(),
        nn.Conv2d(96, 96, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(96, 64, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Linear(256, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 512), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(512, 10))
    assert sum(p.numel() for p in model.parameters()) == 550538
    return model


def alexnet_paper(nn):
    """models/alexnet.yaml: the paper's network, its two GPU columns as groups=2."""
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), _lrn(nn), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), _lrn(nn), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 1000))
