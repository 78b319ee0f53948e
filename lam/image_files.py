"""Which file names are frames: kept apart from lam.imageio, whose decoder imports torch, so
that storage code (`lamflow.storage`, which must not load torch) can list frames."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
