"""The demos: their models, data choices and scripts, outside the library core.

``precedents demo --task NAME`` runs one of them (:data:`precedents.cli.demo.DEMO_TASKS`):

* :mod:`.mnist`: a CNN trained on the full MNIST, explained by RPS-l2 and RPS-LJE, with feature attribution,
  sensitivity maps and TCAV beside the precedents;
* :mod:`.tabular`: XGBoost on German credit and on COMPAS, precedents as table rows;
* :mod:`.sequence`: an LSTM reading MNIST row by row.

:mod:`.models` holds the demo models (``MnistCNN``, ``SequenceLSTM``), their deterministic training loop and
trained-model cache; :mod:`.datasets` the loaders of real data that ship inside installed packages (nothing
is downloaded). The library (``precedents`` without ``.demos``) never imports this package.
"""
