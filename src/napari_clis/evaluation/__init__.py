"""Evaluation, apart from the product: the benchmarks (``napari-clis bench``), the simulated user with its
random-walker and pixel-classifier peers, and the continual-learning baselines (fine-tuning, LwF, EWC, PackNet).

Only the ``bench`` command imports this package; nothing of the plugin, the widget or the other commands does
(``tests/test_packaging.py`` checks it), so the product loads where evaluation's needs (the Unix-only
``resource`` module, scikit-learn, pyamg) are missing.
"""
