"""Prefect flows composing the stage tasks (see flows/nightly.py)."""
