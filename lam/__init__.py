"""LAM: the Label Anything Model annotator, pure torch/numpy.

`lam` holds the ML only: backbones, the Semantic Class Adapter, the honest OptOU refinement,
training from seed frames, inference and metrics. It never imports orchestration or storage
code (prefect, dvc, fsspec); callers hand it arrays and get arrays back.
"""

from lam.errors import LamflowError

__all__ = ["LamflowError", "__version__"]
__version__ = "0.1.0"
