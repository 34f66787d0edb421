"""Residuals: per-use royalty metering for licensed AI likenesses."""

__version__ = "0.1.0"
