"""Beam pipelines: they move data to the pure cores and write results; no algorithms here."""
