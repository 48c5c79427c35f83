"""nmt: neural machine translation from YAML recipes."""

__version__ = "0.1.0"
