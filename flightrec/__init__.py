"""flightrec: an ftrace flight recorder for AF_XDP."""

__version__ = "0.1.0"
