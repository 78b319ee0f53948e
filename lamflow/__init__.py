"""lamflow: the product around `lam` — storage, configuration, CLI (stages live in `tasks/`)."""

from lam import LamflowError, __version__

__all__ = ["LamflowError", "__version__"]
