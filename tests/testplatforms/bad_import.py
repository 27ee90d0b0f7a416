"""A platform module that fails at import time."""

raise RuntimeError("boom at import: this platform module is broken")
