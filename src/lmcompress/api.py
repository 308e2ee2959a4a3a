"""Python API: one function per CLI stage, generated from the stage registry (`lmcompress.stages`), taking the same
names as the flags (or a `config` YAML path), plus `run` (recipes), `demo` and `zoo`.

    import lmcompress
    metrics = lmcompress.finetune(model="minilm-l6", data="rotten-tomatoes", out="runs/teacher", max_length=64)
    lmcompress.distill_lm(teacher="smollm2-135m", student="layers=4", data="enwiki-sample", out="runs/lm")
    lmcompress.compare("runs/teacher", "runs/student", out="runs/report")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from . import catalog
from .config import build_config, flat_to_nested
from .demo import run_demo
from .models import presets
from .pipeline import run_recipe
from .stages import STAGES, Stage


def _stage_function(stage: Stage) -> Callable[..., dict[str, Any]]:
    """`lmcompress.<stage>(config=None, **options)`: options are the flag names with underscores, checked like
    flags (unknown ones are one clear LmcError)."""

    def call(*runs: str, config: str | None = None, **options: Any) -> dict[str, Any]:
        if runs and not stage.positional_runs:
            raise TypeError(f"lmcompress.{stage.api_name} takes keyword options only")
        if runs:
            options["runs"] = list(runs)
        return stage.run(build_config(stage.config, config, flat_to_nested(stage.config, options), stage.name))

    call.__name__ = call.__qualname__ = stage.api_name
    call.__doc__ = f"{stage.description}\n\nOptions: the flags of `lmcompress {stage.name} --help`, dashes as underscores."
    return call


STAGE_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {s.api_name: _stage_function(s) for s in STAGES.values()}
globals().update(STAGE_FUNCTIONS)


def zoo() -> list[dict[str, Any]]:
    """Offline models and datasets with their install state, plus the architecture presets."""
    rows = []
    for entry in catalog.ENTRIES.values():
        path = entry.locate()
        rows.append({"name": entry.name, "kind": entry.kind, "installed": entry.installed(),
                     "size_bytes": entry.size_bytes(), "path": str(path) if path else None,
                     "install": entry.install, "description": entry.description})
    for family in presets.FAMILIES:
        for size in presets.STANDARD:
            rows.append({"name": f"{family}-{size}", "kind": "preset", "installed": True, "size_bytes": None,
                         "path": None, "install": "", "description": f"random-init {family} architecture"})
    return rows


def run(recipe: str | dict[str, Any], out: str | None = None, overwrite: bool = False,
        only: list[str] | None = None) -> dict[str, Any]:
    """Run a YAML recipe (path, built-in name like "demo", or the parsed mapping): complete steps are skipped."""
    return run_recipe(recipe, out=out, overwrite=overwrite, only=only)


def demo(quick: bool = False, out: str = "runs/demo", overwrite: bool = False) -> dict[str, Any]:
    """The built-in offline demo (see lmcompress.demo)."""
    return run_demo(quick=quick, out=out, overwrite=overwrite)


def load(run: str, threads: int | None = None, batch_size: int = 32) -> Any:
    """The predictor of a run directory, whatever its format (PyTorch, ONNX, OpenVINO, static, GGUF):
    `lmcompress.load("runs/best")(["a text"])` answers as transformers' pipeline of the run's task
    (lmcompress.serving.Predictor). Imported on first use, as stages are: `import lmcompress` stays light."""
    serving = importlib.import_module("lmcompress.serving")
    return serving.load(run, threads=threads, batch_size=batch_size)
