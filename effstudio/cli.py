"""``effstudio`` — the GUI with no verb, headless verbs over the same core.

    effstudio [MODEL]                      start the GUI (on the demo CNN without MODEL)
    effstudio inspect MODEL [--json]       the layer graph: names, ops, shapes, params, bytes

Errors in the user's input print one line on stderr and exit 2 (``--debug`` for a traceback).
Progress goes to stderr; stdout carries only the result.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from effstudio import __version__

VERBS = ("inspect",)


class ConsoleProgress:
    """Adapts core Progress to a one-line bar on stderr (only when stderr is a terminal)."""

    def __init__(self) -> None:
        from effstudio.core.progress import Progress

        self._tty = sys.stderr.isatty()
        self.progress = Progress(self._draw)
        self._last = ""

    def _draw(self, fraction: float, message: str) -> None:
        if not self._tty:
            return
        width = 30
        filled = int(round(fraction * width))
        line = f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}% {message[:60]:<60}"
        if line != self._last:
            sys.stderr.write(line)
            sys.stderr.flush()
            self._last = line

    def close(self) -> None:
        if self._tty and self._last:
            sys.stderr.write("\r" + " " * len(self._last) + "\r")
            sys.stderr.flush()


def _demo_names() -> str:
    from effstudio.core.zoo import DEMOS

    return ", ".join(f"demo:{n}" for n in DEMOS)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model file (.onnx .pt2 .pt .ts), a Hugging Face folder, "
                   "pkg.module:factory, or demo:NAME")
    p.add_argument("--input", action="append", metavar="NAME=DIMS[:DTYPE]",
                   help="shape (and dtype) of an input, e.g. images=1x3x640x640 or ids=1x128:int64")
    p.add_argument("--weights", metavar="FILE", help="weights for a factory model (.safetensors or state dict)")
    p.add_argument("--trust", action="store_true",
                   help="allow unpickling a whole-model .pt file (runs code from the file: only for files you trust)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _open(args: argparse.Namespace, bar: ConsoleProgress):
    from effstudio.core.inputs import parse_input_specs
    from effstudio.core.loaders import open_model

    return open_model(args.model, inputs=parse_input_specs(args.input), weights=args.weights,
                      trust=args.trust, progress=bar.progress)


def _fmt_shape(shape) -> str:
    return "?" if shape is None else "×".join(str(d) for d in shape)


def _print_table(rows: list[list[str]], header: list[str], right: set[int]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))


def cmd_inspect(args: argparse.Namespace) -> int:
    bar = ConsoleProgress()
    try:
        loaded = _open(args, bar)
    finally:
        bar.close()
    g = loaded.graph
    if args.json:
        json.dump(g.to_json(), sys.stdout)
        sys.stdout.write("\n")
        return 0
    rows = []
    for lay in g.layers:
        shapes = ", ".join(_fmt_shape(s) for s in g.output_shapes(lay))
        rows.append([lay.name, lay.op_type, shapes, f"{lay.params:,}", f"{lay.weight_bytes:,}"])
    _print_table(rows, ["name", "op", "output shape", "params", "weight bytes"], right={3, 4})
    t = g.totals()
    print(f"\n{g.model.path if g.model else ''} ({loaded.format}): {t['layers']} layers, "
          f"{t['params']:,} params, {t['weight_bytes']:,} weight bytes")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "inspect": (cmd_inspect, "print the layer graph: names, ops, output shapes, params, weight bytes"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="effstudio",
        description="effstudio: see where a model's parameters, FLOPs, memory and time go; compress it.",
        epilog="With no verb, starts the GUI: 'effstudio [MODEL]'.",
    )
    p.add_argument("--version", action="version", version=f"effstudio {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for name, (_fn, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        _add_model_args(sp)
        sp.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    gui = sub.add_parser("gui", help="start the GUI (the default with no verb)")
    gui.add_argument("model", nargs="?", help="a model to open (default: the demo CNN)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # 'effstudio MODEL' (no verb) starts the GUI on MODEL
    if not argv or (argv[0] not in (*COMMANDS, "gui") and not argv[0].startswith("-")):
        argv = ["gui", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        argv = ["gui"]
        args = parser.parse_args(argv)
    if args.verb == "gui":
        from effstudio.ui.app import run_app

        return run_app(args.model)
    from effstudio.core.errors import EffstudioError
    from effstudio.core.progress import Cancelled

    fn = COMMANDS[args.verb][0]
    try:
        return fn(args)
    except EffstudioError as e:
        if args.debug:
            raise
        print(f"effstudio {args.verb}: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        print(f"effstudio {args.verb}: cancelled", file=sys.stderr)
        return 130
