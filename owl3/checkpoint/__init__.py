"""Checkpoint I/O in the official mPLUG-Owl3 layout."""

from owl3.checkpoint.load import load_model, parse_device, parse_dtype, read_config
from owl3.checkpoint.save import save_model

__all__ = ["load_model", "parse_device", "parse_dtype", "read_config", "save_model"]
