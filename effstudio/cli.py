"""``effstudio`` — the GUI with no verb, headless verbs over the same core.

    effstudio [MODEL]                      start the GUI (on the demo CNN without MODEL)
    effstudio inspect MODEL [--json]       the layer graph: names, ops, shapes, params, bytes
    effstudio profile MODEL [--json]       per-layer MACs and measured latency, end-to-end stats
    effstudio compress MODEL --step … -o OUT  apply compression steps, write the model and its recipe

Errors in the user's input print one line on stderr and exit 2 (``--debug`` for a traceback).
Progress goes to stderr; stdout carries only the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from effstudio import __version__
from effstudio.cli_compress import HELP as COMPRESS_HELP
from effstudio.cli_compress import add_compress_args, cmd_compress

VERBS = ("inspect", "profile", "compress")


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
        filled = round(fraction * width)
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


def _open(args: argparse.Namespace, bar: ConsoleProgress, read_weights: bool = True):
    from effstudio.core.inputs import parse_input_specs
    from effstudio.core.loaders import open_model

    return open_model(args.model, inputs=parse_input_specs(args.input), weights=args.weights,
                      trust=args.trust, progress=bar.progress, read_weights=read_weights)


def _fmt_shape(shape) -> str:
    return "?" if shape is None else "×".join(str(d) for d in shape)


def _print_table(rows: list[list[str]], header: list[str], right: set[int]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def fmt(r: list[str]) -> str:
        cells = enumerate(zip(r, widths, strict=True))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in cells)

    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))


def cmd_inspect(args: argparse.Namespace) -> int:
    bar = ConsoleProgress()
    try:
        loaded = _open(args, bar, read_weights=False)  # the graph counts without the large weights
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


def _add_profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to time the model")
    p.add_argument("--threads", type=int, metavar="N",
                   help="intra-op threads (default: every available core)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--runs", type=int, metavar="N",
                     help="timed runs (default: about 2 s, at least 10 runs)")
    how.add_argument("--budget", type=float, metavar="SECONDS", help="time budget for the end-to-end runs")
    p.add_argument("--npz", metavar="FILE", help="input data: a .npz with one array per model input "
                   "(default: random data of the right shapes)")
    p.add_argument("--no-per-layer", dest="per_layer", action="store_false",
                   help="time end to end only (no per-layer profiling)")


def _fmt_ms(v: float | None) -> str:
    return "?" if v is None else f"{v:.3f}"


def _profile_method(lat) -> str:
    e = lat.e2e_ms
    text = f"median of {e['runs']} runs, p10–p90 {e['p10']:.3f}–{e['p90']:.3f} ms, CV {e['cv'] * 100:.0f} %"
    if "; per layer: " in lat.method:  # the backend says how it got per-layer times
        text += f"; per layer from {lat.backend}: " + lat.method.split("; per layer: ", 1)[1]
    return text


def cmd_profile(args: argparse.Namespace) -> int:
    from effstudio.core.latency import RUNTIME_KEY, load_npz_inputs
    from effstudio.core.latency.stats import noise_warning
    from effstudio.core.profile import profile_json, profile_model

    bar = ConsoleProgress()
    try:
        loaded = _open(args, bar)
        inputs = load_npz_inputs(args.npz, loaded.graph) if args.npz else None
        result = profile_model(loaded, device=args.device, threads=args.threads, runs=args.runs,
                               budget_s=args.budget, per_layer=args.per_layer, inputs=inputs,
                               progress=bar.progress)
    finally:
        bar.close()
    if args.json:
        json.dump(profile_json(loaded, result.static, result.latency), sys.stdout)
        sys.stdout.write("\n")
        return 0
    lat, st = result.latency, result.static
    per_layer = lat.per_layer_ms
    layer_sum = sum(per_layer.values())

    def share(ms: float | None) -> str:
        return "?" if ms is None or layer_sum <= 0 else f"{100 * ms / layer_sum:.1f}"

    rows = []
    for lay in loaded.graph.layers:
        macs = st.get("macs", lay.name)
        ms = per_layer.get(lay.name)
        macs_text = "?" if macs is None else f"{int(macs):,}"
        rows.append([lay.name, lay.op_type, macs_text, _fmt_ms(ms), share(ms)])
    if RUNTIME_KEY in per_layer:
        rows.append([RUNTIME_KEY, "", "", _fmt_ms(per_layer[RUNTIME_KEY]), share(per_layer[RUNTIME_KEY])])
    _print_table(rows, ["name", "op", "MACs", "latency ms", "share %"], right={2, 3, 4})
    e, env = lat.e2e_ms, lat.environment
    t = st.totals
    print(f"\n{loaded.path} ({loaded.format}): {len(loaded.graph.layers)} layers, "
          f"{t.get('params', 0):,} params, {t.get('macs', 0):,} MACs")
    print(f"latency: {e['median']:.3f} ms end to end on {lat.backend} {lat.device} "
          f"({env.get('cpu', '?')}, {lat.threads} threads)")
    print(f"method: {_profile_method(lat)}")
    warning = noise_warning(e)
    if warning:
        print(f"warning: {warning} (or with --threads 1)", file=sys.stderr)
    if lat.fused:
        shown = [f"{k} = {' + '.join(v)}" for k, v in lat.fused.items() if len(v) > 1]
        if shown:
            more = f" (+{len(shown) - 5} more)" if len(shown) > 5 else ""
            print(f"fused kernels (time shared by FLOPs): {'; '.join(shown[:5])}{more}")
    if RUNTIME_KEY in per_layer:
        print(f"{RUNTIME_KEY}: time outside any layer: {', '.join(sorted(lat.runtime_nodes))}")
    if lat.eliminated:
        print(f"removed by the runtime's optimizer (0 ms): {', '.join(lat.eliminated[:8])}"
              + (f" (+{len(lat.eliminated) - 8} more)" if len(lat.eliminated) > 8 else ""))
    if st.uncounted_ops:
        print("MACs not counted for: " + ", ".join(f"{u['op_type']} ×{u['count']}" for u in st.uncounted_ops))
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "inspect": (cmd_inspect, "print the layer graph: names, ops, output shapes, params, weight bytes"),
    "profile": (cmd_profile, "count MACs and measure latency, end to end and per layer"),
    "compress": (cmd_compress, COMPRESS_HELP),
}

# extra arguments of a verb beyond the model arguments every verb takes
VERB_ARGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "profile": _add_profile_args,
    "compress": add_compress_args,
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
        sp = sub.add_parser(name, help=help_, description=help_,
                            epilog=f"built-in demo models: {_demo_names()} "
                                   "(add .onnx or .pt2 for the exported copy, e.g. demo:cnn.onnx)")
        _add_model_args(sp)
        if name in VERB_ARGS:
            VERB_ARGS[name](sp)
        sp.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    gui = sub.add_parser("gui", help="start the GUI (the default with no verb)")
    gui.add_argument("model", nargs="?", help="a model to open (default: the demo CNN)")
    gui.add_argument("--input", action="append", metavar="NAME=DIMS[:DTYPE]", help="shape of an input")
    gui.add_argument("--trust", action="store_true", help="allow unpickling a whole-model .pt file")
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
        from effstudio.core.errors import EffstudioError
        from effstudio.core.inputs import parse_input_specs

        try:
            inputs = parse_input_specs(args.input)
        except EffstudioError as e:
            print(f"effstudio: {e}", file=sys.stderr)
            return 2
        from effstudio.ui.app import run_app

        return run_app(args.model, trust=args.trust, inputs=inputs)
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
    except BrokenPipeError:
        # the reader went away (`effstudio inspect … | head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
