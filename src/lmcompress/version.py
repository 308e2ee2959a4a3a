"""The package version (its own module: runs.py records it without importing the package)."""

__version__ = "0.1.0"
