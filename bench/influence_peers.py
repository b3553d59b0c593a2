"""Influence solvers side by side: precedents against Captum and dattri on the task of
/work/shared/research/peers.md ("Measured side by side on one task"), in one run.

    python bench/influence_peers.py [--out bench/results] [--threads 1] [--repeats 1] [--only KEY,KEY]
                                    [--extended] [--loo-cache FILE]

Task: MNIST 1 vs 7 (``load_mnist("train")``/``("test")`` + ``binary_subset``; 10,853 training images),
``nn.Linear(784, 2)`` at the exact optimum (float64 Newton, gradient norm ~1e-15) of mean cross-entropy +
0.01/2 ||theta||^2 (weights and bias), the 5 test points of highest loss, 100 training points (the 50 of
largest exact |influence| on any of the 5, and 50 drawn at random from the rest; seed 0). Truth: the actual
change of each test loss when each training point is left out and the model retrained to the optimum, warm
started (``precedents.evaluate.loo``). Every method is called as its documentation tells a user to, once with
its defaults and once with the regularisation matched to the weight decay, and scores all 10,853 training
points for the 5 test points.

Each method runs in a fresh subprocess (after its library is imported and the data loaded): wall time
(``time.perf_counter``, fitting/caching included), peak resident memory (the process's high-water mark, reset
just before the call through /proc/self/clear_refs, minus its resident size then), warnings, NaNs, crashes.
"The floor" is one pass of per-example gradients over the 10,853 training images (the least any gradient-based
method must do), measured in every subprocess after its method. Every process runs with ``--threads``
torch/MKL threads (default 1: on a shared 2-core machine a threaded MKL ``eigh`` of the 1570 x 1570 Hessian
took 5-33 s instead of 1 s). Workers are seeded (``torch.manual_seed(0)``): dattri's LiSSA is not otherwise.

Sign: every score is reported as the predicted *increase* of the test loss if the training point is removed.
All three libraries document that convention already (Captum: ``grad L(test)' H^-1 grad L(train)``; dattri:
``g_train . H^-1 g_test`` and representer values for the test label; TracIn: ``lr * g_train . g_test``), so
no method's scores are flipped (``sign`` in the JSON records it).

Writes ``influence_peers.json`` and ``influence_peers.md`` to ``--out``. Needs the ``bench`` extra
(``pip install -c constraints.txt captum==0.9.0 dattri==0.3.0``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

WEIGHT_DECAY = 0.01
N_TEST = 5
N_TOP = 50
N_RANDOM = 50
SEED = 0
N_PARAMS = 2 * 785
WORKER_TIMEOUT_S = 420


class LogisticRegression(nn.Module):
    """``nn.Linear(784, 2)`` under a name (``fc``) that dattri's RPS and Captum's layer options can address."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 2, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


# ---------------------------------------------------------------------------------------------------------
# The data a worker receives
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Task:
    X: torch.Tensor                 # (n, 784) float64
    y: torch.Tensor                 # (n,) int64
    Xt: torch.Tensor                # (5, 784) the test points explained
    yt: torch.Tensor
    model: LogisticRegression       # at the optimum (float64, or cast to float32 for the methods that need it)
    checkpoint: str                 # its state_dict on disk (Captum takes checkpoints)
    workdir: Path

    @property
    def n(self) -> int:
        return len(self.X)

    def loader(self, X: torch.Tensor, y: torch.Tensor, batch_size: int | None = None):
        from torch.utils.data import DataLoader, TensorDataset

        return DataLoader(TensorDataset(X, y), batch_size=batch_size or len(X), shuffle=False)


def load_task(workdir: Path, dtype: str = "float64") -> Task:
    blob = torch.load(workdir / "task.pt")
    dt = getattr(torch, dtype)
    model = LogisticRegression(dt)
    model.load_state_dict({k: v.to(dt) for k, v in blob["state"].items()})
    model.eval()
    return Task(blob["X"].to(dt), blob["y"], blob["Xt"].to(dt), blob["yt"], model,
                str(workdir / f"model_{dtype}.pt"), workdir)


# ---------------------------------------------------------------------------------------------------------
# The methods, each as a user would call it. Each returns scores (n_test, n_train) in its own convention.
# ---------------------------------------------------------------------------------------------------------

def _ours(solver: str, weight_decay: float | None) -> Callable[[Task], torch.Tensor]:
    def run(t: Task) -> torch.Tensor:
        import precedents as pc

        kwargs = {} if weight_decay is None else {"weight_decay": weight_decay}
        ex = pc.InfluenceFunction(t.model, solver=solver, progress=False, **kwargs).fit(t.X, t.y)
        return ex.attribute(t.Xt, t.yt).full()
    return run


def _captum_if(kind: str, **options) -> Callable[[Task], torch.Tensor]:
    def run(t: Task) -> torch.Tensor:
        from captum.influence import NaiveInfluenceFunction

        # captum 0.9.0 does not export it from captum.influence: the user imports it from its module
        from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction

        cls = NaiveInfluenceFunction if kind == "naive" else ArnoldiInfluenceFunction
        ex = cls(t.model, t.loader(t.X, t.y), t.checkpoint, loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                 sample_wise_grads_per_batch=True, **options)
        return ex.influence((t.Xt, t.yt))
    return run


def _ours_tracin(t: Task) -> torch.Tensor:
    import precedents as pc

    ex = pc.TracIn(t.model, [t.checkpoint], progress=False).fit(t.X, t.y)
    return ex.attribute(t.Xt, t.yt).full()


def _captum_tracin(t: Task) -> torch.Tensor:
    from captum.influence import TracInCP

    ex = TracInCP(t.model, t.loader(t.X, t.y), [t.checkpoint], loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                  sample_wise_grads_per_batch=True)
    return ex.influence((t.Xt, t.yt))


def _dattri_task(t: Task):
    from dattri.task import AttributionTask

    model = t.model

    def loss(params, data):
        image, label = data
        out = torch.func.functional_call(model, params, image)
        return nn.functional.cross_entropy(out, label.long())

    return AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())


def _dattri_if(kind: str, **options) -> Callable[[Task], torch.Tensor]:
    def run(t: Task) -> torch.Tensor:
        from dattri.algorithm import influence_function as dif

        cls = {"explicit": dif.IFAttributorExplicit, "cg": dif.IFAttributorCG, "lissa": dif.IFAttributorLiSSA,
               "arnoldi": dif.IFAttributorArnoldi}[kind]
        ex = cls(task=_dattri_task(t), device="cpu", **options)
        train = t.loader(t.X, t.y)
        ex.cache(train)
        with torch.no_grad():
            scores = ex.attribute(train, t.loader(t.Xt, t.yt))     # (n_train, n_test)
        return scores.T
    return run


def _dattri_tracin(t: Task) -> torch.Tensor:
    from dattri.algorithm.tracin import TracInAttributor

    ex = TracInAttributor(task=_dattri_task(t), weight_list=torch.ones(1), normalized_grad=False, device="cpu")
    with torch.no_grad():
        scores = ex.attribute(t.loader(t.X, t.y), t.loader(t.Xt, t.yt))
    return scores.T


def _dattri_rps(**options) -> Callable[[Task], torch.Tensor]:
    def run(t: Task) -> torch.Tensor:
        from dattri.algorithm.rps import RPSAttributor
        from dattri.task import AttributionTask

        def target(pre_activation, label):            # RPS's refit loss: soft-label cross-entropy
            return nn.functional.cross_entropy(pre_activation, label)

        task = AttributionTask(loss_func=target, model=t.model, checkpoints=t.model.state_dict())
        ex = RPSAttributor(task=task, final_linear_layer_name="fc", device="cpu", **options)
        train = t.loader(t.X, t.y)
        ex.cache(train)
        scores = ex.attribute(train, t.loader(t.Xt, t.yt))
        return scores.T
    return run


@dataclass
class Method:
    key: str
    library: str
    name: str
    setting: str
    run: Callable[[Task], torch.Tensor]
    sign: int = 1                    # multiply raw scores by this to get "loss increase if removed"
    units: str = "loss"              # "loss x n": dattri omits the 1/n; "logit": representer values
    dtype: str = "float64"           # of the model and data handed to the method
    extended: bool = False           # only with --extended (slow, adds little)


def methods(n: int) -> list[Method]:
    wd, nwd = WEIGHT_DECAY, n * WEIGHT_DECAY
    cap = "sample_wise_grads_per_batch=True, "
    f32 = "float32 model (float64 crashes), "
    return [
        Method("ours-exact", "precedents", "InfluenceFunction exact", "weight_decay=0.01", _ours("exact", wd)),
        Method("ours-cg", "precedents", "InfluenceFunction cg", "weight_decay=0.01", _ours("cg", wd)),
        Method("ours-lissa", "precedents", "InfluenceFunction lissa", "weight_decay=0.01", _ours("lissa", wd)),
        Method("ours-arnoldi", "precedents", "InfluenceFunction arnoldi", "weight_decay=0.01",
               _ours("arnoldi", wd)),
        Method("ours-exact-nowd", "precedents", "InfluenceFunction exact", "weight_decay not given (0)",
               _ours("exact", None)),
        Method("ours-cg-nowd", "precedents", "InfluenceFunction cg", "weight_decay not given (0)",
               _ours("cg", None), extended=True),
        Method("ours-tracin", "precedents", "TracIn", "final checkpoint only (learning rate 1)", _ours_tracin,
               units="gradient dot"),
        Method("captum-naive", "captum", "NaiveInfluenceFunction",
               cap + "defaults (projection_dim=50, hessian_reg=1e-6)", _captum_if("naive")),
        Method("captum-naive-reg", "captum", "NaiveInfluenceFunction",
               cap + f"hessian_reg=n*wd={nwd:g} (its Hessian is of the summed loss), projection_dim=50",
               _captum_if("naive", hessian_reg=nwd)),
        Method("captum-naive-reg-full", "captum", "NaiveInfluenceFunction",
               cap + f"hessian_reg={nwd:g}, projection_dim={N_PARAMS} (full rank)",
               _captum_if("naive", hessian_reg=nwd, projection_dim=N_PARAMS)),
        Method("captum-naive-reg-wd-full", "captum", "NaiveInfluenceFunction",
               cap + f"hessian_reg=0.01 (the weight decay taken literally), projection_dim={N_PARAMS}",
               _captum_if("naive", hessian_reg=wd, projection_dim=N_PARAMS)),
        Method("captum-arnoldi", "captum", "ArnoldiInfluenceFunction",
               cap + "defaults (projection_dim=50, arnoldi_dim=200, hessian_reg=1e-3)", _captum_if("arnoldi")),
        Method("captum-arnoldi-reg", "captum", "ArnoldiInfluenceFunction", cap + f"hessian_reg=n*wd={nwd:g}",
               _captum_if("arnoldi", hessian_reg=nwd)),
        Method("captum-tracin", "captum", "TracInCP", cap + "final checkpoint only (learning rate 1)",
               _captum_tracin, units="gradient dot"),
        Method("dattri-explicit", "dattri", "IFAttributorExplicit", "defaults (regularization=0)",
               _dattri_if("explicit"), units="loss x n"),
        Method("dattri-explicit-reg", "dattri", "IFAttributorExplicit", "regularization=0.01",
               _dattri_if("explicit", regularization=wd), units="loss x n"),
        Method("dattri-cg", "dattri", "IFAttributorCG", "defaults (max_iter=10, regularization=0)",
               _dattri_if("cg"), units="loss x n"),
        Method("dattri-cg-reg", "dattri", "IFAttributorCG", "regularization=0.01",
               _dattri_if("cg", regularization=wd), units="loss x n"),
        Method("dattri-lissa-f64", "dattri", "IFAttributorLiSSA", "defaults, float64 model",
               _dattri_if("lissa"), units="loss x n"),
        Method("dattri-lissa", "dattri", "IFAttributorLiSSA",
               f32 + "defaults (batch_size=1, recursion_depth=5000, scaling=50, damping=0)", _dattri_if("lissa"),
               units="loss x n", dtype="float32"),
        Method("dattri-lissa-reg", "dattri", "IFAttributorLiSSA",
               f32 + f"damping=wd/scaling={wd / 50:g} (its damping scales the iterate: H + scaling*damping I)",
               _dattri_if("lissa", damping=wd / 50), units="loss x n", dtype="float32"),
        Method("dattri-arnoldi-f64", "dattri", "IFAttributorArnoldi", "defaults, float64 model",
               _dattri_if("arnoldi"), units="loss x n"),
        Method("dattri-arnoldi", "dattri", "IFAttributorArnoldi",
               f32 + "defaults (proj_dim=100, max_iter=100, regularization=0)", _dattri_if("arnoldi"),
               units="loss x n", dtype="float32"),
        Method("dattri-arnoldi-reg", "dattri", "IFAttributorArnoldi", f32 + "regularization=0.01",
               _dattri_if("arnoldi", regularization=wd), units="loss x n", dtype="float32"),
        Method("dattri-tracin", "dattri", "TracInAttributor", "final checkpoint only, weight 1, "
               "normalized_grad=False (its default projector: 512-dim random projection)", _dattri_tracin,
               units="gradient dot"),
        Method("dattri-rps", "dattri", "RPSAttributor (RPS-l2)", "defaults (l2_strength=0.003, epoch=3000)",
               _dattri_rps(), units="logit"),
        Method("dattri-rps-reg", "dattri", "RPSAttributor (RPS-l2)", "l2_strength=wd/2=0.005 (its penalty is "
               "l2 * ||W||^2)", _dattri_rps(l2_strength=wd / 2), units="logit"),
    ]


# ---------------------------------------------------------------------------------------------------------
# The floor: every training example's gradient, once
# ---------------------------------------------------------------------------------------------------------

def gradient_pass_closed_form(model: LogisticRegression, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example gradients of the cross-entropy w.r.t. (W, b): ``(softmax - onehot) outer [x, 1]``, (n, 1570)."""
    with torch.no_grad():
        r = torch.softmax(model(X), dim=1)
        r[torch.arange(len(y)), y] -= 1
        F = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)
        return (r[:, :, None] * F[:, None, :]).reshape(len(X), -1)


def gradient_pass_torch_func(model: LogisticRegression, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same with ``torch.func.vmap(grad(...))``: what an autodiff library does for any model."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, t):
        return nn.functional.cross_entropy(torch.func.functional_call(model, p, (x[None],)), t[None])

    g = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, X, y)
    return torch.cat([g["fc.weight"].reshape(len(X), -1), g["fc.bias"]], dim=1)


def measure_floor(task: Task, repeats: int = 3) -> dict[str, float]:
    out = {}
    for name, fn in (("closed_form", gradient_pass_closed_form), ("torch_func", gradient_pass_torch_func)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(task.model, task.X, task.y)
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    return out


# ---------------------------------------------------------------------------------------------------------
# Worker: one method in a fresh process
# ---------------------------------------------------------------------------------------------------------

def _status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (resident high-water mark) of this process, from /proc."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset this process's resident high-water mark to its current size (Linux >= 4.0). ``getrusage``'s
    ``ru_maxrss`` cannot be used as is: a child inherits its parent's high-water mark across fork and exec."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(key: str, workdir: Path, repeats: int) -> None:
    start = time.perf_counter()
    method = next(m for m in methods(len(torch.load(workdir / "task.pt")["y"])) if m.key == key)
    task = load_task(workdir, method.dtype)
    lib = {"precedents": "precedents", "captum": "captum.influence", "dattri": "dattri.algorithm"}[method.library]
    __import__(lib)
    import_s = time.perf_counter() - start
    torch.manual_seed(SEED)                              # dattri's LiSSA draws from torch's global generator
    gc.collect()
    peak_reset = _reset_peak()
    rss_before = _status_bytes("VmRSS")
    record: dict = {"key": key, "import_and_load_seconds": import_s, "seconds": [], "warnings": [], "error": None}
    scores = None
    for _ in range(repeats):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            try:
                scores = method.run(task)
            except Exception as exc:                    # a peer crashing is a result, not a bench failure
                record["error"] = f"{type(exc).__name__}: {str(exc).strip()[:400]}"
                record["traceback"] = traceback.format_exc()[-2000:]
                break
            record["seconds"].append(time.perf_counter() - t0)
        for w in caught:
            text = f"{w.category.__name__}: {str(w.message).strip()[:300]}"
            if text not in record["warnings"]:
                record["warnings"].append(text)
    if peak_reset:
        record["peak_rss_bytes"], record["peak_source"] = _status_bytes("VmHWM"), "VmHWM after clear_refs"
    else:                                                # an upper bound: includes the parent's high-water mark
        record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        record["peak_source"] = "ru_maxrss (includes the parent's peak: an upper bound)"
    record["rss_before_bytes"] = rss_before
    record["peak_rss_delta_bytes"] = record["peak_rss_bytes"] - rss_before
    if scores is not None:
        scores = torch.as_tensor(scores).detach().to(torch.float64).reshape(len(task.Xt), task.n)
        record["n_nan"] = int(torch.isnan(scores).sum())
        record["n_inf"] = int(torch.isinf(scores).sum())
        torch.save(scores, workdir / f"{key}.scores.pt")
    record["floor"] = measure_floor(load_task(workdir))
    record["threads"] = torch.get_num_threads()
    (workdir / f"{key}.json").write_text(json.dumps(record))


# ---------------------------------------------------------------------------------------------------------
# Main: data, optimum, truth; then every method in its own process
# ---------------------------------------------------------------------------------------------------------

def reference_influence(model: nn.Linear, X: torch.Tensor, y: torch.Tensor, Xt: torch.Tensor, yt: torch.Tensor,
                        weight_decay: float) -> torch.Tensor:
    """(1/n) g_t^T H^-1 g_i in float64 from the explicit Hessian of the regularised mean loss (independent of
    every library; selects the training points)."""
    wrapped = LogisticRegression()
    wrapped.fc = model
    G = gradient_pass_closed_form(wrapped, X, y)                              # (n, 2 * 785)
    Gt = gradient_pass_closed_form(wrapped, Xt, yt)
    with torch.no_grad():
        p = torch.softmax(model(X), dim=1)
    F = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)
    A = (F * (p[:, 0] * p[:, 1])[:, None]).T @ F / len(X)                     # two classes: [[A, -A], [-A, A]]
    H = torch.cat([torch.cat([A, -A], 1), torch.cat([-A, A], 1)], 0)
    H += weight_decay * torch.eye(len(H), dtype=H.dtype)
    solved = torch.cholesky_solve(Gt.T, torch.linalg.cholesky(H)).T
    return solved @ G.T / len(X)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "captum", "dattri", "precedents"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def prepare(workdir: Path, loo_cache: str | None) -> dict:
    from precedents.datasets import binary_subset, load_mnist
    from precedents.evaluate import LogisticRegressionRetrainer, leave_one_out

    X, y = binary_subset(*load_mnist("train"))
    Xte, yte = binary_subset(*load_mnist("test"))
    X = torch.from_numpy(X.reshape(len(X), -1)).to(torch.float64)
    Xte = torch.from_numpy(Xte.reshape(len(Xte), -1)).to(torch.float64)
    y, yte = torch.from_numpy(y), torch.from_numpy(yte)

    start = time.perf_counter()
    retrain = LogisticRegressionRetrainer(X, y, 2, WEIGHT_DECAY)
    model = retrain.base_model
    fit_s = time.perf_counter() - start
    with torch.no_grad():
        test_loss = nn.functional.cross_entropy(model(Xte), yte, reduction="none")
    top = test_loss.argsort(descending=True)[:N_TEST]
    Xt, yt = Xte[top], yte[top]

    exact = reference_influence(model, X, y, Xt, yt, WEIGHT_DECAY)
    strongest = exact.abs().max(0).values.argsort(descending=True)[:N_TOP]
    rest = torch.ones(len(X), dtype=torch.bool)
    rest[strongest] = False
    rest = rest.nonzero()[:, 0]
    rng = torch.Generator().manual_seed(SEED)
    random = rest[torch.randperm(len(rest), generator=rng)[:N_RANDOM]]
    indices = torch.cat([strongest, random])

    start = time.perf_counter()
    loo = leave_one_out(retrain, Xt, yt, indices, base_model=model, progress=False, results_path=loo_cache)
    loo_s = time.perf_counter() - start

    wrapped = LogisticRegression()
    wrapped.fc.load_state_dict(model.state_dict())
    for dtype in ("float64", "float32"):
        state = {k: v.to(getattr(torch, dtype)) for k, v in wrapped.state_dict().items()}
        torch.save(state, workdir / f"model_{dtype}.pt")
    torch.save({"X": X, "y": y, "Xt": Xt, "yt": yt, "state": wrapped.state_dict()}, workdir / "task.pt")
    return {"loo": loo, "exact": exact, "indices": indices, "test_index": top, "test_loss": test_loss[top],
            "fit": model.fit_info_, "fit_seconds": fit_s, "loo_seconds": loo_s, "n_train": len(X),
            "n_test_pool": len(Xte)}


def run_worker(key: str, workdir: Path, repeats: int, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", key, "--workdir", str(workdir),
           "--repeats", str(repeats), "--threads", str(threads)]
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return {"key": key, "error": f"timeout: no result within {WORKER_TIMEOUT_S} s", "seconds": []}
    path = workdir / f"{key}.json"
    if not path.exists():
        tail = (proc.stderr or proc.stdout or "")[-1500:]
        return {"key": key, "error": f"worker died (exit {proc.returncode}): {tail.strip()[-400:]}", "seconds": []}
    return json.loads(path.read_text())


def _json_safe(obj):
    """NaN/inf -> null, so that the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--repeats", type=int, default=1, help="calls per method in its process (median time)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/MKL threads in every process (default 1: on a shared machine, threaded "
                        "MKL eigh slows down 3-30x under oversubscription)")
    parser.add_argument("--only", default=None, help="comma-separated method keys (default: all but extended)")
    parser.add_argument("--extended", action="store_true", help="also the slow rows that add little")
    parser.add_argument("--loo-cache", default=None, help="JSON-lines file to keep/reuse the leave-one-out truth")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, Path(args.workdir), args.repeats)
        return

    wall = time.perf_counter()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="influence_peers_") as tmp:
        workdir = Path(tmp)
        print("fitting the optimum, selecting points, leave-one-out truth ...", flush=True)
        prep = prepare(workdir, args.loo_cache)
        loo = prep["loo"]
        n = prep["n_train"]
        check = loo.correlate(prep["exact"])
        print(f"  fit {prep['fit_seconds']:.1f} s, {len(prep['indices'])} retrains {prep['loo_seconds']:.1f} s; "
              f"reference exact influence vs truth: Pearson {check.pearson:.4f}", flush=True)
        task = load_task(workdir)
        floor_main = measure_floor(task)

        chosen = [m for m in methods(n) if args.extended or not m.extended]
        if args.only:
            keys = set(args.only.split(","))
            chosen = [m for m in methods(n) if m.key in keys]
        rows = []
        for m in chosen:
            rec = run_worker(m.key, workdir, args.repeats, args.threads)
            row = {"key": m.key, "library": m.library, "method": m.name, "setting": m.setting, "sign": m.sign,
                   "flipped": m.sign < 0, "units": m.units, **{k: v for k, v in rec.items() if k != "key"}}
            row["seconds_median"] = statistics.median(rec["seconds"]) if rec.get("seconds") else None
            spath = workdir / f"{m.key}.scores.pt"
            if rec.get("error") is None and spath.exists():
                scores = m.sign * torch.load(spath)
                corr = loo.correlate(scores)
                sel = scores[:, loo.indices]
                row.update(pearson=corr.pearson, spearman=corr.spearman,
                           pearson_per_test=corr.pearson_per_test.tolist(),
                           spearman_per_test=corr.spearman_per_test.tolist(),
                           magnitude_ratio=float(sel.norm() / loo.loss_change.norm())
                           / (n if m.units == "loss x n" else 1),
                           relative_difference_to_reference=float((scores - prep["exact"]).norm()
                                                                  / prep["exact"].norm())
                           if m.units == "loss" else None)
            rows.append(row)
            print(f"  {m.key:24s} {_fmt(row.get('pearson'), 4):>8s} {_fmt(row['seconds_median'], 2):>8s} s "
                  f"{row.get('error') or ''}"[:160], flush=True)

    floors = [r["floor"]["closed_form"] for r in rows if "floor" in r] or [floor_main["closed_form"]]
    floor = statistics.median(floors)
    for r in rows:
        r["floor_multiple"] = r["seconds_median"] / floor if r.get("seconds_median") else None
        r["nan"] = bool(r.get("n_nan")) or (r.get("pearson") is not None and math.isnan(r["pearson"]))
        r["warned"] = any(not w.startswith(("DeprecationWarning", "FutureWarning")) for w in r.get("warnings", []))
    meta = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "machine": _cpu_model(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "versions": _versions(),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "n_train": n, "n_test_explained": N_TEST, "test_pool": prep["n_test_pool"],
        "test_index": prep["test_index"].tolist(), "test_loss": prep["test_loss"].tolist(),
        "train_indices": prep["indices"].tolist(), "weight_decay": WEIGHT_DECAY, "seed": SEED,
        "optimum": prep["fit"], "fit_seconds": prep["fit_seconds"], "loo_seconds": prep["loo_seconds"],
        "reference_exact": {"pearson": check.pearson, "spearman": check.spearman},
        "floor_seconds": floor, "floor_definition": "median over the worker processes of the median of 5 passes of "
        "closed-form per-example gradients (softmax - onehot) outer [x, 1] over all training images, float64",
        "floor_main_process": floor_main,
        "floor_torch_func_median": statistics.median([r["floor"]["torch_func"] for r in rows if "floor" in r]
                                                     or [floor_main["torch_func"]]),
        "repeats": args.repeats, "total_seconds": time.perf_counter() - wall,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "influence_peers.json").write_text(json.dumps(_json_safe({"meta": meta, "rows": rows}), indent=1,
                                                         allow_nan=False))
    (out / "influence_peers.md").write_text(markdown(meta, rows))
    print(f"wrote {out / 'influence_peers.json'} and {out / 'influence_peers.md'} "
          f"({meta['total_seconds']:.0f} s)")


HOW_CALLED = [
    "precedents: `pc.InfluenceFunction(model, solver=..., weight_decay=0.01).fit(X, y).attribute(X_test, y_test)"
    ".full()` (params='head', closed-form gradients and Hessian, float64 inside).",
    "Captum: `NaiveInfluenceFunction` / `ArnoldiInfluenceFunction` / `TracInCP(model, DataLoader(train, "
    "batch_size=n), checkpoint, loss_fn=CrossEntropyLoss(reduction='sum'), sample_wise_grads_per_batch=True)`"
    "`.influence((X_test, y_test))`; its docs recommend the batched per-example gradients for Linear layers (the "
    "default per-example loop is several times slower). `ArnoldiInfluenceFunction` is not exported by "
    "`captum.influence` 0.9.0: imported from `captum.influence._core.arnoldi_influence_function`. Its Hessian "
    "is of the *summed* loss, so the weight decay of a mean loss matches `hessian_reg = n * wd`.",
    "dattri: `AttributionTask(loss_func=mean cross-entropy of (params, (x, y)), model, checkpoints=state_dict)`, "
    "`attributor.cache(DataLoader(train, batch_size=n))`, `attributor.attribute(train_loader, test_loader)` "
    "under `torch.no_grad()`, both loaders full-batch as its docs advise (a smaller train batch repeats the "
    "inverse-Hessian solve once per batch). Scores lack the 1/n. LiSSA and Arnoldi cast to float32 inside "
    "and crash on a float64 model, so they are also run on the model cast to float32.",
]


def markdown(meta: dict, rows: list[dict]) -> str:
    v = meta["versions"]
    lines = [
        f"# Influence solvers side by side: MNIST 1 vs 7 logistic regression ({meta['n_train']:,} training images)",
        "",
        f"`nn.Linear(784, 2)` at the exact optimum of mean cross-entropy + {meta['weight_decay']}/2 ||theta||^2 "
        f"(float64, gradient norm {meta['optimum']['gradient_norm']:.1e}); the {meta['n_test_explained']} test "
        f"points of highest loss x {len(meta['train_indices'])} training points ({N_TOP} of largest exact "
        f"|influence|, {N_RANDOM} random, seed {meta['seed']}); truth = the actual test-loss change after "
        "retraining without each point, to the optimum (warm start). Pearson and Spearman over the 500 pairs "
        "pooled. Every method scores all training points for the 5 test points in a fresh process; seconds include "
        "its own fitting/caching (median of the calls); peak MB = resident high-water mark minus the resident "
        "size before the call.",
        "",
        f"Floor = one pass of per-example gradients over all {meta['n_train']:,} training images: "
        f"{meta['floor_seconds'] * 1000:.0f} ms in closed form ((softmax - onehot) outer [x, 1]), "
        f"{meta['floor_torch_func_median'] * 1000:.0f} ms with torch.func vmap(grad). The reference exact influence "
        f"(explicit float64 Hessian, no library) reaches Pearson {meta['reference_exact']['pearson']:.4f}.",
        "",
        "Sign: no library's scores were flipped; all document 'positive = removing the point raises the test loss' "
        "(influence, TracIn) or 'positive = supports the test label' (RPS).",
        "",
        "| library | method | setting | Pearson | Spearman | seconds | x floor | peak MB | scale | warned | NaN |"
        " failure |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = (r.get("error") or "").replace("|", "/").replace("\n", " ")
        warned = "; ".join(w[:60] + ("..." if len(w) > 60 else "") for w in r.get("warnings", [])
                           if not w.startswith(("DeprecationWarning", "FutureWarning"))) or "-"
        scale = _fmt(r.get("magnitude_ratio"), 2) if r["units"] in ("loss", "loss x n") and not r.get("error") \
            else "-"
        nan = f"all {r['n_nan']}" if r.get("n_nan") and r["n_nan"] == meta["n_train"] * N_TEST else \
            (str(r["n_nan"]) if r.get("n_nan") else "-")
        lines.append(
            f"| {r['library']} | {r['method']} | {r['setting']} | {_fmt(r.get('pearson'), 4)} | "
            f"{_fmt(r.get('spearman'), 4)} | {_fmt(r.get('seconds_median'), 2)} | "
            f"{_fmt(r.get('floor_multiple'), 0)} | {r.get('peak_rss_delta_bytes', 0) / 2**20:.0f} | {scale} | "
            f"{warned} | {nan} | {err[:160] or '-'} |")
    lines += [
        "",
        "scale = ||scores|| / ||truth|| over the 500 pairs, dattri's divided by n (it omits the 1/n): 1 = the "
        "right magnitude in nats. TracIn (gradient dot products) and RPS (logits) have no such scale.",
        "",
        "Warnings (first line of each kind, DeprecationWarnings included):",
        "",
    ]
    for r in rows:
        for w in r.get("warnings", []):
            lines.append(f"- `{r['key']}`: {w.splitlines()[0][:300]}")
    lines += ["", "How each library was called:", ""] + [f"- {h}" for h in HOW_CALLED]
    lines += [
        "",
        f"Command: `{meta['command']}` ({meta['total_seconds']:.0f} s in all; the optimum {meta['fit_seconds']:.1f} "
        f"s, the truth ({len(meta['train_indices'])} retrains) {meta['loo_seconds']:.1f} s).",
        "",
        f"Machine: {meta['machine']}, {meta['cpu_count']} CPUs, {meta['torch_threads']} torch/MKL thread(s) per "
        f"process, load average {meta['load_average_start'][0]:.1f} at the start and "
        f"{meta['load_average_end'][0]:.1f} at the end (a shared machine: compare times within this run); "
        f"{meta['platform']}; Python {v['python']}, torch {v['torch']}, numpy {v['numpy']}, captum {v['captum']}, "
        f"dattri {v['dattri']}, precedents {v['precedents']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
