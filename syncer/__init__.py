"""syncer: back up and migrate a clinic's files through the Files REST API (v3)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
