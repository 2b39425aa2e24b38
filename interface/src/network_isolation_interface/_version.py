"""The distribution's version: its major number is the interface's major version (LIBAPI)."""

__version__ = "1.0.0"
