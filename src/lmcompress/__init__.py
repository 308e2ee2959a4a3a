"""lmcompress: make Transformer language models smaller and faster, and prove it."""

# "X as X": re-exported names
from .api import STAGE_FUNCTIONS
from .api import demo as demo
from .api import load as load
from .api import run as run
from .api import zoo as zoo
from .distillation.train import DistillSettings as DistillSettings  # the in-memory library call and its inputs
from .distillation.train import Evaluation as Evaluation
from .distillation.train import distill_model as distill_model
from .errors import LmcError as LmcError
from .models.trust import allow_remote_code as allow_remote_code  # the API's --trust-remote-code
from .version import __version__ as __version__

globals().update(STAGE_FUNCTIONS)  # lmcompress.finetune, lmcompress.distill_lm, ...: one per stage of the registry

__all__ = sorted([*STAGE_FUNCTIONS, "DistillSettings", "Evaluation", "distill_model", "LmcError", "allow_remote_code",
                  "demo", "load", "run", "zoo", "__version__"])

