"""The package version (its own module: run manifests record it without importing the package)."""

__version__ = "0.1.0"
