"""Vocabulary discovery: propose labels per frame, filter, group into synsets, map to a
taxonomy (LLM2Labels-style). One module per job; the stage is tasks/vocabulary.py."""
