"""Command line: parse -> typed config -> stage function. Errors become one `lmcompress: error: ...` line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, NoReturn

from rich.logging import RichHandler
from rich.table import Table

from . import api
from .config import add_flags, build_config, flags_to_dict
from .console import console
from .errors import LmcError
from .models.trust import allow_remote_code
from .pipeline import builtin_recipes
from .distributed import close_process_group
from .runs.files import os_error
from .stages import STAGES
from .version import __version__

PROG = "lmcompress"
log = logging.getLogger("lmcompress")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line like every other error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def _setup_logging(quiet: bool) -> None:
    handler = RichHandler(console=console(stderr=True), show_path=False, show_time=False, markup=False)
    # third-party libraries (the ONNX exporter above all) log pages at INFO: only their warnings pass
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    rank = os.environ.get("RANK", "0")  # set by `accelerate launch` / torchrun: only rank 0 reports progress
    log.setLevel(logging.WARNING if quiet or rank != "0" else logging.INFO)


def _print_json_or_summary(result: dict[str, Any], as_json: bool) -> None:
    if not result:  # a non-zero rank under `accelerate launch`: rank 0 reports
        return
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    out = console()
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.get("metrics", {}).items())
    latency = result.get("latency_ms", {})
    out.print(f"[bold]{result.get('split', 'test')}[/]: {metrics}")
    out.print(f"params {result.get('params', 0):,}  size {result.get('size_bytes', 0) / 1e6:.1f} MB  "
                  + "  ".join(f"latency {k} {v:.1f} ms" for k, v in latency.items()))
    if "path" in result:
        out.print(f"written: {result['path']}")


# ------------------------------------------------------------------------------------------------------------ commands


def _stage_command(name: str):
    """A handler: flags (+ --config YAML) -> the stage's typed config -> its runner -> summary or JSON (compare: where
    the report is)."""

    def handler(args: argparse.Namespace) -> int:
        stage = STAGES[name]
        result = stage.run(build_config(stage.config, args.config, flags_to_dict(args), name))
        if stage.positional_runs:  # compare
            console().print(f"report: {result['path']}/report.html (also report.md, report.json, pareto.png)")
        elif stage.prints_own_summary:  # predict: one line (stdout stays JSON alone with --json); serve: nothing
            if args.json:
                print(json.dumps(result, indent=2, default=str))
            elif result.get("summary"):
                console().print(result["summary"], soft_wrap=True)
        else:
            _print_json_or_summary(result, args.json)
        return 0

    return handler


def cmd_zoo(args: argparse.Namespace) -> int:
    rows = api.zoo()
    if not args.presets:
        rows = [r for r in rows if r["kind"] != "preset"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="lmcompress zoo (offline; nothing is downloaded at run time)")
    for column in ("name", "kind", "installed", "size", "install / path"):
        table.add_column(column, overflow="fold")
    for row in rows:
        size = f"{row['size_bytes'] / 1e6:.1f} MB" if row["size_bytes"] else "-"
        where = row["path"] if row["installed"] and row["path"] else row["install"]
        installed = "[green]yes[/]" if row["installed"] else "[red]no[/]"
        table.add_row(row["name"], row["kind"], installed, size, where or row["description"])
    console().print(table)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    result = api.run(args.recipe, out=args.out, overwrite=args.overwrite, only=args.only)
    table = Table(title=f"recipe {result['name']}: {result['wall_time_s']:.0f} s")
    for column in ("step", "stage", "status", "wall s", "run"):
        table.add_column(column)
    for step in result["steps"]:
        table.add_row(step["step"], step["stage"], step["status"], f"{step['wall_s']:.0f}", result["paths"][step["step"]])
    console().print(table)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    api.demo(quick=args.quick, out=args.out, overwrite=args.overwrite)
    return 0


# ------------------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Compress Transformer language models and prove it with a report.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks")
    common.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
    common.add_argument("--trust-remote-code", action="store_true",
                        help="let model folders run their own Python code (off by default; only for sources you trust)")
    subs = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    for stage in STAGES.values():  # flags generated from each stage's config dataclass (YAML keys == flags)
        sub = subs.add_parser(stage.name, parents=[common], help=stage.help, description=stage.description)
        if stage.positional_runs:
            sub.add_argument("runs", nargs="+", metavar="RUN", help="run directories; the first is the teacher "
                             "unless --teacher")
        sub.add_argument("--config", help="YAML file with the same keys (one section per group); flags override it")
        if not stage.positional_runs:
            sub.add_argument("--json", action="store_true", help="print the metrics as JSON")
        add_flags(sub, stage.config, skip=("runs",) if stage.positional_runs else ())
        sub.set_defaults(func=_stage_command(stage.name))

    zo = subs.add_parser("zoo", parents=[common], help="list offline models and datasets and whether installed")
    zo.add_argument("--json", action="store_true", help="machine-readable output")
    zo.add_argument("--presets", action="store_true", help="also list the architecture presets")
    zo.set_defaults(func=cmd_zoo)

    ru = subs.add_parser("run", parents=[common], help="run a YAML recipe that chains stages (skips complete steps)",
                         description="Run a recipe: steps in order, each writing OUT/STEP; complete steps are skipped "
                                     "and an interrupted one resumes. Built-in recipes: " + ", ".join(
                                         sorted(builtin_recipes())))
    ru.add_argument("recipe", help="recipe YAML file or built-in recipe name")
    ru.add_argument("--out", help="root folder for the steps' runs (default: the recipe's out)")
    ru.add_argument("--overwrite", action="store_true", help="redo steps whose runs are already complete")
    ru.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (their inputs must exist)")
    ru.set_defaults(func=cmd_run)

    de = subs.add_parser("demo", parents=[common], help="minilm-l6 fine-tuned on rotten-tomatoes, then `auto` finds "
                         "a model >= 10x faster keeping 97%% of its accuracy (the hand-made chain: `run demo`)")
    de.add_argument("--quick", action="store_true", help="smoke run: 1,000 training rows, 1 epoch, a 20-minute search "
                    "(OUT/quick)")
    de.add_argument("--out", default="runs/demo", help="folder for the demo's runs")
    de.add_argument("--overwrite", action="store_true", help="redo runs that already exist")
    de.set_defaults(func=cmd_demo)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _setup_logging(getattr(args, "quiet", False))
    debug = getattr(args, "debug", False) or os.environ.get("LMCOMPRESS_DEBUG") == "1"
    allow_remote_code(getattr(args, "trust_remote_code", False))
    try:
        return args.func(args)
    except LmcError as exc:
        if debug:
            raise
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: error: interrupted\n")
        return 130
    except OSError as exc:  # a disk or permission problem outside a stage's own guard (e.g. creating --out)
        if debug:
            raise
        sys.stderr.write(f"{PROG}: error: {os_error(exc)}\n")
        return 1
    except Exception as exc:  # a bug of ours: still one line unless --debug
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        sys.stderr.write(f"{PROG}: error: internal error {type(exc).__name__}: {first} (re-run with --debug and "
                         "report it)\n")
        return 1
    finally:
        close_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
