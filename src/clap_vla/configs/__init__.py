"""Frozen configuration dataclasses for every CLI command, with named presets.

Kept free of torch/pyarrow/av imports: `clap --help` builds its parsers from these.
"""
