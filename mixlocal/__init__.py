"""mixlocal: run Mixtral-style mixture-of-experts GGUF models locally on a CPU."""

__version__ = "0.1.0"

from .jit_cache import drop_if_stale

drop_if_stale()
