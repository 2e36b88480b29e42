"""Selectors: one module per method; each core is a pure function over arrays."""
