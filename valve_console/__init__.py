"""valve-console: the software of a bare-metal CI gateway."""

__version__ = "0.1.0"
