"""Seed selection: frame embeddings (`embed`) and budgeted, explained selection (`select`)."""
