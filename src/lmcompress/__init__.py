"""lmcompress: make Transformer language models smaller and faster, and prove it."""

__version__ = "0.1.0"

from .api import compare, demo, distill, evaluate, export, finetune, pretrain, prune, quantize, run, zoo  # noqa: E402
from .errors import LmcError  # noqa: E402
from .models.load import allow_remote_code  # noqa: E402  (the API's --trust-remote-code)

__all__ = ["LmcError", "allow_remote_code", "compare", "demo", "distill", "evaluate", "export", "finetune", "pretrain", "prune",
           "quantize", "run", "zoo", "__version__"]
