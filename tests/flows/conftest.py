"""Flow tests reuse the pipeline fixtures (synthetic seeds, tiny model)."""

from tests.pipeline.conftest import seed_set, tiny_model  # noqa: F401
