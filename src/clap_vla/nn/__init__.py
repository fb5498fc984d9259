"""Reusable layers, one concept per file (quantizer, attention, transformer, frame encoders, ...)."""
