"""saetransfer: does an SAE trained on a base language model still work on its finetune?

The core package: registry, loading, one streaming evaluation pass, metrics, verdicts and the report.
It knows nothing of pytest; `findings/` turns its results into tests.
"""

__version__ = "0.1.0"
