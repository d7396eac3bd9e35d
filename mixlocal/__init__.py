"""mixlocal: run Mixtral-style mixture-of-experts GGUF models locally on a CPU."""

__version__ = "0.1.0"
