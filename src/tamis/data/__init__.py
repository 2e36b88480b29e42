"""Bundled-data converters (e.g. the BBC News quickstart pool)."""
