"""erasekit: erase concepts from generative models — fast, measurably, robustly, offline."""

__version__ = "0.1.0"
