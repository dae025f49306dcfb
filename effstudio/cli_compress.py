"""``effstudio compress``: apply compression steps headless and write the result with its recipe.

    effstudio compress MODEL --step 'TECHNIQUE key=value ... layers=PATTERN[,PATTERN]' ... -o OUT
    effstudio compress MODEL --recipe RECIPE.yaml -o OUT [--json] [--no-measure] [--npz DATA]

OUT is ``.onnx`` for ONNX models and ``.pt2`` for torch models; the recipe that made it is
written beside it as ``OUT.recipe.yaml``.  Prints the numbers before and after (params, weight
bytes, zipped weight bytes, MACs, measured latency, fidelity, accuracy when known) and says
plainly when a step made the model slower or larger.  Any problem — a technique pointed at
layers it does not apply to, bad settings, a wrong OUT suffix — is one line on stderr, exit
status 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

HELP = "apply compression steps (--step or --recipe) and write the compressed model and its recipe"
STEP_HELP = ("one step: 'TECHNIQUE key=value ... layers=PATTERN[,PATTERN] ops=OP[,OP]'; PATTERN is a layer "
             "name, a glob (features.*), re:REGEX or scope:PATH; without layers= every layer the technique "
             "applies to; values are numbers, true/false, text, or comma-separated lists. Repeat for more steps")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


def add_compress_args(p: argparse.ArgumentParser) -> None:
    """The arguments of ``compress`` besides the model arguments every verb takes."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--recipe", metavar="RECIPE.yaml", help="apply the steps of a recipe file")
    src.add_argument("--step", action="append", metavar="'TECHNIQUE key=value ...'", help=STEP_HELP)
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="where to write the compressed model (.onnx for ONNX models, .pt2 for torch models)")
    p.add_argument("--no-measure", dest="measure", action="store_false",
                   help="do not measure latency (static numbers, fidelity and accuracy only)")
    p.add_argument("--npz", metavar="DATA", help="evaluation data: a .npz with 'x' (or one array per input) "
                   "and optionally 'y' labels (default: the digits test split for the demo models)")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="time budget for each latency measurement")
    p.add_argument("--threads", type=int, metavar="N", help="intra-op threads for timing (default: all cores)")


def add_compress_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``compress`` verb to an ``add_subparsers()`` object (model arguments included)."""
    from effstudio.cli import _add_model_args

    sp = subparsers.add_parser("compress", help=HELP, description=HELP)
    _add_model_args(sp)
    add_compress_args(sp)
    sp.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return sp


# --- --step parsing ---------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, ``"a,b"`` -> ["a", "b"],
    ``"[1, 2]"`` -> [1, 2]; anything else stays text."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    if _INT.match(t):
        return int(t)
    if _FLOAT.match(t):
        return float(t)
    if t.startswith("[") and t.endswith("]"):
        inner = t[1:-1].strip()
        return [parse_value(x) for x in inner.split(",")] if inner else []
    if "," in t:
        return [parse_value(x) for x in t.split(",") if x.strip()]
    return t


def parse_step(text: str, index: int):
    """``--step`` text -> a validated recipe Step (settings checked by the technique's config)."""
    from effstudio.core.compress.base import CompressError
    from effstudio.core.compress.recipe import Step

    where = f"--step {index} ({text!r})"
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise CompressError(f"{where}: {e}") from None
    if not tokens or "=" in tokens[0]:
        raise CompressError(f"{where}: start with the technique's name, e.g. 'prune.unstructured amount=0.5'")
    technique, config, selection, ops = tokens[0], {}, None, None
    for tok in tokens[1:]:
        key, eq, value = tok.partition("=")
        if not eq or not key:
            raise CompressError(f"{where}: expected key=value, got {tok!r}")
        if key in ("layers", "layer", "selection"):
            selection = [p for p in value.split(",") if p]
            if not selection:
                raise CompressError(f"{where}: layers= names no layer")
        elif key in ("ops", "op_types"):
            ops = [p for p in value.split(",") if p]
        else:
            config[key] = parse_value(value)
    from effstudio.core.compress.registry import get_technique

    tech = get_technique(technique)
    step = Step(technique, int(tech.config_cls.version), config, selection, ops)
    try:
        cfg = step.make_config()
    except CompressError as e:
        raise CompressError(f"{where}: {e}") from None
    return Step.of(cfg, selection, ops)


# --- the report -------------------------------------------------------------------------------
def _bytes(n: Any) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{int(n)} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return "?"


def _count(n: Any) -> str:
    return "?" if n is None else f"{int(n):,}"


def _macs(totals: dict) -> str:
    """The MAC total, marked as a lower bound when some layers could not be counted."""
    n = totals.get("uncounted_layers") or 0
    text = _count(totals.get("macs"))
    return f"≥ {text} ({n} layer(s) uncounted)" if n else text


def _ratio(a: Any, b: Any) -> str:
    if a is None or b is None or not b:
        return ""
    return f"×{float(a) / float(b):.2f}"


def _summary(numbers: dict[str, Any]) -> dict[str, Any]:
    out = dict(numbers.get("totals", {}))
    out["latency_ms"] = numbers.get("latency")
    return out


def report_json(session, out_files: list[str], recipe_path: str) -> dict[str, Any]:
    before, after = session.root.numbers, session.current.numbers
    steps, expectations, warnings = [], [], []
    for v in session.path_to():
        if v.step is None:
            continue
        j = v.numbers.get("judgement") or {}
        steps.append({"version": v.id, **v.step.to_dict(with_layers=True),
                      "changed": v.numbers.get("changed", []), "coupled": v.numbers.get("coupled", []),
                      "notes": v.numbers.get("notes", []), "extra": v.numbers.get("extra", {}),
                      "totals": v.numbers.get("totals"), "latency_ms": v.numbers.get("latency"),
                      "fidelity": _short_fidelity(v.numbers.get("fidelity")),
                      "accuracy": v.numbers.get("accuracy")})
        expectations.append({"technique": v.step.technique, "expected": j.get("expected"),
                             "measured": j.get("measured"), "met": j.get("met"), "text": j.get("text", "")})
        warnings += j.get("warnings", [])
    return {"model": session.identity.to_dict(), "output": {"model": out_files, "recipe": recipe_path},
            "before": _summary(before), "after": _summary(after),
            "fidelity": after.get("fidelity"),
            "accuracy": {"before": before.get("accuracy"), "after": after.get("accuracy")},
            "steps": steps, "expectations": expectations, "warnings": warnings}


def _short_fidelity(f: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if f is None else {k: v for k, v in f.items() if k != "outputs"}


def print_report(session, out_files: list[str], recipe_path: str) -> None:
    from effstudio.cli import _print_table

    b, a = session.root.numbers, session.current.numbers
    tb, ta = b.get("totals", {}), a.get("totals", {})
    rows = [
        ["params", _count(tb.get("params")), _count(ta.get("params")), _ratio(ta.get("params"), tb.get("params"))],
        ["weight bytes", _bytes(tb.get("weight_bytes")), _bytes(ta.get("weight_bytes")),
         _ratio(ta.get("weight_bytes"), tb.get("weight_bytes"))],
        ["zipped weights", _bytes(tb.get("compressed_weight_bytes")), _bytes(ta.get("compressed_weight_bytes")),
         _ratio(ta.get("compressed_weight_bytes"), tb.get("compressed_weight_bytes"))],
        ["MACs", _macs(tb), _macs(ta), _ratio(ta.get("macs"), tb.get("macs"))],
    ]
    lb, la = b.get("latency"), a.get("latency")
    if lb and la:
        rows.append(["latency (median)", f"{lb['median']:.3f} ms", f"{la['median']:.3f} ms",
                     _ratio(la["median"], lb["median"])])
    else:
        rows.append(["latency (median)", "not measured", "not measured", ""])
    fid = a.get("fidelity")
    if fid:
        cos = fid.get("cosine")
        rows.append(["fidelity (cosine)", "1", "?" if cos is None else f"{cos:.6f}", ""])
        if fid.get("top1_agreement") is not None:
            rows.append(["top-1 agreement", "100.0 %", f"{100 * fid['top1_agreement']:.1f} %", ""])
    ab, aa = b.get("accuracy"), a.get("accuracy")
    if ab and aa:
        rows.append(["accuracy (top-1)", f"{100 * ab['top1']:.2f} %", f"{100 * aa['top1']:.2f} %",
                     f"{100 * (aa['top1'] - ab['top1']):+.2f} pt"])
    _print_table(rows, ["", "before", "after", "change"], right={1, 2, 3})
    if fid:
        def g(v: Any) -> str:
            return "?" if v is None else f"{v:.4g}"

        print(f"fidelity on {fid.get('inputs')}: relative L2 error {g(fid.get('rel_l2'))}, "
              f"max abs error {g(fid.get('max_abs'))}")
    if aa:
        print(f"accuracy on {aa['data']}")
    print()
    warnings = []
    for v in session.path_to():
        if v.step is None:
            continue
        j = v.numbers.get("judgement") or {}
        met = {True: "met", False: "NOT met", None: "not checked"}[j.get("met")]
        n = len(v.step.layers)
        print(f"step {v.id}: {v.step.technique} on {n} layer{'s' if n != 1 else ''}: expected "
              f"{j.get('expected') or '?'} — {met} ({j.get('measured', '')})")
        for note in v.numbers.get("notes", []):
            print(f"  {note}")
        warnings += j.get("warnings", [])
    for w in warnings:
        print(w)
    print(f"\nwrote {', '.join(out_files)} and {recipe_path}")


# --- the verb ---------------------------------------------------------------------------------
def cmd_compress(args: argparse.Namespace) -> int:
    from effstudio.cli import ConsoleProgress, _open
    from effstudio.core.compress.base import CompressError
    from effstudio.core.compress.modelfile import TORCH_SUFFIXES, model_suffix, save_model_file
    from effstudio.core.compress.recipe import load_recipe, save_recipe
    from effstudio.core.compress.session import Session
    from effstudio.core.compress.store import ModelIdentity

    out = Path(args.output)
    if args.recipe:
        recipe = load_recipe(args.recipe)
        steps = recipe.steps
    else:
        recipe = None
        steps = [parse_step(text, i) for i, text in enumerate(args.step, start=1)]
    bar = ConsoleProgress()
    try:
        loaded = _open(args, bar)
        want = (".onnx",) if model_suffix(loaded) == ".onnx" else TORCH_SUFFIXES
        if out.suffix.lower() not in want:
            kind = "an ONNX" if want == (".onnx",) else "a torch"
            raise CompressError(f"-o {out}: {args.model} is {kind} model, written as "
                                f"{' or '.join(want)}; name the output *{want[0]}")
        if recipe is not None and recipe.model.get("sha256"):
            ident = ModelIdentity.of(loaded, args.model)
            if ident.sha256 and ident.sha256 != recipe.model["sha256"]:
                print(f"effstudio compress: note: {args.recipe} was made on another file "
                      f"({recipe.model.get('path')}); applying it anyway", file=sys.stderr)
        latency: dict[str, Any] = {"per_layer": False}
        if args.budget is not None:
            latency["budget_s"] = args.budget
        if args.threads is not None:
            latency["threads"] = args.threads
        spec = {"spec": args.model, "inputs": args.input, "weights": args.weights, "trust": args.trust}
        n = len(steps)
        session = Session(loaded, None, measure=args.measure, data=args.npz, latency=latency, spec=spec,
                          progress=bar.progress.sub(0.0, 1 / (n + 1)))
        for i, step in enumerate(steps, start=1):
            try:
                session.apply(step.technique, step.make_config(), step.selection, op_types=step.op_types,
                              progress=bar.progress.sub(i / (n + 1), (i + 1) / (n + 1)))
            except CompressError as e:
                raise CompressError(f"step {i} ({step.technique}): {e}") from e
        files = [str(p) for p in save_model_file(session.current.model, out)]
        recipe_path = str(save_recipe(session.recipe(), Path(str(out) + ".recipe.yaml")))
    finally:
        bar.close()
    if args.json:
        json.dump(report_json(session, files, recipe_path), sys.stdout)
        sys.stdout.write("\n")
    else:
        print_report(session, files, recipe_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``effstudio compress ...`` on its own (the same as the verb of ``effstudio``)."""
    from effstudio.core.errors import EffstudioError
    from effstudio.core.progress import Cancelled

    parser = argparse.ArgumentParser(prog="effstudio")
    sub = parser.add_subparsers(dest="verb", required=True)
    add_compress_parser(sub)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return cmd_compress(args)
    except EffstudioError as e:
        if args.debug:
            raise
        print(f"effstudio compress: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        print("effstudio compress: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
