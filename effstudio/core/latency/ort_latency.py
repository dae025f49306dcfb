"""Latency of an ONNX model under onnxruntime: end to end, and per layer from its profiler.

The end-to-end time comes from a plain session (profiling off, default graph optimizations,
the requested threads).  Per-layer times come from a second, identical session with
``enable_profiling``: per runtime node the median of its ``kernel_time`` over the profiled runs
(warm-up runs dropped), mapped back to the model's layers by :mod:`.ort_fusion` using the
optimized graph that session saves.  Optimizations stay on: timing an unoptimized graph
measures a model nobody runs (about 1.9× slower on the development machine).

The profiler costs several µs per node inside each ``kernel_time``: on CPU that cost is measured
alongside the model's runs and taken out of its nodes (:mod:`.ort_overhead`; ``overhead_ms``,
``latency_sum_ratio_raw`` keeps the uncorrected ratio).  The profiled runs alternate in blocks
with plain runs of the first session, and ``latency_sum_ratio`` compares with those: the same load.
"""

from __future__ import annotations

import bisect
import json
import os
import statistics
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from effstudio.core.errors import EffstudioError
from effstudio.core.latency import ort_overhead, stats
from effstudio.core.latency.environment import environment
from effstudio.core.latency.ort_fusion import map_runtime_nodes
from effstudio.core.latency.ort_source import ort_source
from effstudio.core.latency.result import RUNTIME_KEY, LatencyResult, add_times, in_graph_order, split_time
from effstudio.core.model import LoadedModel
from effstudio.core.progress import Progress

MAX_PROFILED_RUNS = 50
INTERLEAVE_BLOCK = 5  # profiled runs, then as many plain ones (see _per_layer)
_KERNEL = "_kernel_time"


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EffstudioError("--device cuda: this onnxruntime has no CUDAExecutionProvider "
                                 f"(available: {', '.join(ort.get_available_providers())})")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise EffstudioError(f"--device {device!r}: expected cpu or cuda")


def _model_source(loaded: LoadedModel, workdir: str) -> str:
    # a path, never model.SerializeToString(): that holds the GIL for seconds on a big model
    return ort_source(loaded, workdir)


def _session_options(threads: int, *, profile_prefix: str | None = None, optimized_path: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # the NCHWc "hardware specific" warning on saving is expected here
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if optimized_path is not None:
        so.optimized_model_filepath = optimized_path
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                    os.path.basename(optimized_path) + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return so


def _feeds(session, inputs: Mapping[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
    feeds = {}
    for i in session.get_inputs():
        if i.name not in inputs:
            raise EffstudioError(f"{path}: no input data for model input {i.name!r} (give its shape "
                                 f"with --input {i.name}=DIMS, or the data with --npz)")
        feeds[i.name] = np.ascontiguousarray(inputs[i.name])
    return feeds


def measure_onnx(loaded: LoadedModel, *, device: str, threads: int, plan: stats.RunPlan, per_layer: bool,
                 inputs: Mapping[str, np.ndarray], flops: Mapping[str, float] | None,
                 progress: Progress) -> LatencyResult:
    providers = providers_for(device)
    with tempfile.TemporaryDirectory(prefix="effstudio-ort-") as workdir:
        source = _model_source(loaded, workdir)
        progress.update(0.0, "creating onnxruntime session")
        plain, feeds, times = _time_e2e(loaded, source, providers, threads, inputs, plan,
                                        progress.sub(0.0, 0.5 if per_layer else 1.0))
        e2e = stats.summarize(times)
        result = LatencyResult(
            backend="onnxruntime", device=device, threads=threads, e2e_ms=e2e,
            environment=environment("onnxruntime", device, threads, providers=providers,
                                    graph_optimization="ORT_ENABLE_ALL"),
            method=f"median of {e2e['runs']} runs (p10–p90, CV)")
        if per_layer and providers[0] == "CUDAExecutionProvider":
            # onnxruntime's node events time each kernel's launch on the host, and CUDA kernels run
            # asynchronously: those are not the layers' times, so none are shown (its kernel events
            # need a build made with --enable_cuda_profiling, which the pip wheels are not)
            result.method += ("; per layer: not measured on CUDA (onnxruntime's profiler times the "
                              "asynchronous kernel launches on the host, not the kernels)")
        elif per_layer:
            _per_layer(loaded, source, providers, threads, plain, feeds, len(times), flops, workdir,
                       progress.sub(0.5, 1.0), result)
    return result


def _time_e2e(loaded: LoadedModel, source: str | bytes, providers: list[str], threads: int,
              inputs: Mapping[str, np.ndarray], plan: stats.RunPlan,
              progress: Progress) -> tuple[Any, dict[str, np.ndarray], list[float]]:
    import onnxruntime as ort

    sess = ort.InferenceSession(source, _session_options(threads), providers=providers)
    if providers[0] == "CUDAExecutionProvider" and "CUDAExecutionProvider" not in sess.get_providers():
        raise EffstudioError(f"{loaded.path}: onnxruntime could not start CUDA for this model")
    feeds = _feeds(sess, inputs, loaded.path)
    try:
        stats.warm_up(lambda: sess.run(None, feeds), progress, "warming up")
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.RuntimeException) as e:
        # the model refuses this data (random values where it wants e.g. a sample rate)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EffstudioError(f"{loaded.path}: onnxruntime could not run the model on these inputs "
                             f"({why[:300]}); give real input data with --npz") from e
    return sess, feeds, stats.time_runs(lambda: sess.run(None, feeds), plan, progress, "timing end to end")


def _per_layer(loaded: LoadedModel, source: str | bytes, providers: list[str], threads: int, plain,
               feeds: dict[str, np.ndarray], n_e2e: int, flops: Mapping[str, float] | None, workdir: str,
               progress: Progress, result: LatencyResult) -> None:
    import onnxruntime as ort

    progress.update(0.0, "creating profiling session")
    optimized_path = os.path.join(workdir, "optimized.onnx")
    so = _session_options(threads, profile_prefix=os.path.join(workdir, "profile"),
                          optimized_path=optimized_path)
    sess = ort.InferenceSession(source, so, providers=providers)
    # the profiler's cost is measured on CPU only: on CUDA the probe would add device copies
    probe = _Probe(threads, workdir) if providers[0] == "CPUExecutionProvider" else None
    plain_ms: list[float] = []
    # CPU time of this thread per run (the executor's, and so the profiler's): the profiler's
    # cost is their difference.  Not wall time: under load a profiled run, 2-4× as long as a plain
    # one, was preempted that much more, and its stalls counted as profiler cost took the whole
    # time of short nodes (the demo MobileNetV2 summed to 0.01× its end-to-end time)
    plain_cpu: list[float] = []
    profiled_cpu: list[float] = []
    done = [0]
    call = _CallShell(plain, feeds, threads) if probe is not None else None

    def between() -> None:
        # after each block of profiled runs a block of plain runs (and the probe's): they see the
        # same load.  Blocks, not single runs: alternating run by run, each session evicted the
        # other's weights from the caches, and the demo MLP's nodes summed to 3.2× the
        # (back-to-back) end-to-end time; in a block the first run alone is cold, and medians drop it
        done[0] += 1
        if done[0] % block and done[0] != n:
            return
        for _ in range(block):
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            plain.run(None, feeds)
            plain_ms.append((time.perf_counter_ns() - t0) / 1e6)
            plain_cpu.append((time.thread_time_ns() - c0) / 1e6)
        if probe is not None:
            probe.run(block)
        if call is not None:
            call.run(block)

    try:
        def run() -> None:
            c0 = time.thread_time_ns()
            sess.run(None, feeds)
            profiled_cpu.append((time.thread_time_ns() - c0) / 1e6)

        warm = stats.warm_up(run, progress, "warming up the profiled session")
        profiled_cpu.clear()
        if probe is not None:
            probe.warm_up()
        n = max(3, min(n_e2e, MAX_PROFILED_RUNS))
        block = INTERLEAVE_BLOCK if n >= 2 * INTERLEAVE_BLOCK else 1
        stats.time_runs(run, stats.RunPlan(runs=n), progress, "profiling per layer", between=between)
    finally:
        profile_path = sess.end_profiling()
        probe_path = probe.end() if probe is not None else None
    try:
        events = read_profile(profile_path)
    finally:
        os.remove(profile_path)
    optimized = onnx.load(optimized_path, load_external_data=False)
    node_ms, runs = node_medians(events, skip_runs=warm)
    overhead = None
    if probe_path is not None:
        executions = executions_per_run(events, skip_runs=warm)
        overhead = ort_overhead.measure(plain_cpu, profiled_cpu, probe.share(probe_path),
                                        sum(executions.values()))
        raw_ms = node_ms
        node_ms = ort_overhead.corrected(raw_ms, executions, overhead.per_node_ms)
    assign_layers(loaded, optimized, node_ms, flops, result)
    call_ms = call.median_ms(cpu=threads == 1) if call is not None else None
    if call_ms is not None:  # time in no node: the runtime's, like the nodes no layer owns
        result.runtime_nodes[ort_overhead.CALL_KEY] = call_ms
        result.per_layer_ms[RUNTIME_KEY] = result.per_layer_ms.get(RUNTIME_KEY, 0.0) + call_ms
    result.per_layer_runs = runs
    # against the plain runs that alternated with the profiled ones, under the same load: the
    # end-to-end phase before ran the demo MLP 2× faster (back to back, its weights stayed in
    # cache).  With 1 thread, in CPU time: all of a run's work is on this thread, and like the
    # per-node medians it leaves out the time other processes held the core (on a loaded machine
    # the demo ResNet's plain runs took 6.5 ms of wall time for 2.4 ms of CPU, ratio 0.34 vs 0.91)
    wall_median = statistics.median(plain_ms)
    e2e_median = statistics.median(plain_cpu) if threads == 1 else wall_median
    total = sum(result.per_layer_ms.values())
    result.latency_sum_ratio = total / e2e_median if e2e_median > 0 else None
    result.sum_ratio_e2e_ms = e2e_median
    how = f"median of {runs} onnxruntime-profiled runs"
    if overhead is not None:
        nested = _subgraph_node_names(optimized.graph) - {nd.name for nd in optimized.graph.node}
        taken = sum(raw_ms[k] - node_ms[k] for k in raw_ms if k not in nested)
        result.overhead_ms = taken
        result.latency_sum_ratio_raw = (total + taken) / e2e_median if e2e_median > 0 else None
        how += (f" less the profiler's cost inside node events ({overhead.per_node_ms * 1e3:.1f} µs per node: "
                f"{overhead.inside_share:.2f} of the {overhead.cost_ms:.3f} ms profiled − plain run; the share "
                f"measured on a probe alongside)")
    if call_ms is not None:
        how += (f"; {ort_overhead.CALL_KEY} {call_ms * 1e3:.1f} µs in {RUNTIME_KEY}: a run of a node-less model with "
                f"the same inputs and outputs, alongside")
    how += f"; sum/e2e = {result.latency_sum_ratio:.2f}"
    if overhead is not None:
        how += f" (uncorrected {result.latency_sum_ratio_raw:.2f})"
    how += f", e2e here the median of {len(plain_ms)} plain runs in blocks alternating with the profiled ones "
    how += (f"(CPU time {e2e_median:.3f} ms, wall {wall_median:.3f} ms)" if threads == 1
            else f"({e2e_median:.3f} ms)")
    result.method += f"; per layer: {how}"


class _CallShell:
    """Runs :func:`.ort_overhead.call_shell_model` in blocks beside the plain runs; its median is
    the time of a ``run`` call outside the model's nodes (None where no shell can be built)."""

    def __init__(self, plain, feeds: dict[str, np.ndarray], threads: int) -> None:
        import onnxruntime as ort

        self.feeds = feeds
        self.cpu: list[float] = []  # CPU time of this thread per run, ms
        self.wall: list[float] = []
        self.sess = None
        names = [o.name for o in plain.get_outputs()]
        model = ort_overhead.call_shell_model(feeds, dict(zip(names, plain.run(None, feeds), strict=True)))
        if model is None:
            return
        try:
            self.sess = ort.InferenceSession(model, _session_options(threads), providers=["CPUExecutionProvider"])
            for _ in range(stats.WARMUP_RUNS):
                self.sess.run(None, feeds)
        except Exception:  # an input onnxruntime will not take into a node-less model
            self.sess = None

    def run(self, runs: int) -> None:
        if self.sess is None:
            return
        for _ in range(runs):
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            self.sess.run(None, self.feeds)
            self.wall.append((time.perf_counter_ns() - t0) / 1e6)
            self.cpu.append((time.thread_time_ns() - c0) / 1e6)

    def median_ms(self, *, cpu: bool) -> float | None:
        times = self.cpu if cpu else self.wall
        return statistics.median(times) if times else None


class _Probe:
    """The :mod:`.ort_overhead` probe: a plain and a profiled session of a chain of ``Add`` nodes,
    run as a pair; the profiled session's share of the profiler cost inside node events."""

    def __init__(self, threads: int, workdir: str) -> None:
        import onnxruntime as ort

        model = ort_overhead.probe_model()
        cpu = ["CPUExecutionProvider"]
        self.plain = ort.InferenceSession(model, _session_options(threads), providers=cpu)
        self.profiled = ort.InferenceSession(
            model, _session_options(threads, profile_prefix=os.path.join(workdir, "probe")), providers=cpu)
        self.feeds = ort_overhead.probe_feeds()
        self.plain_cpu: list[float] = []  # CPU time of this thread per run, ms
        self.profiled_cpu: list[float] = []
        self.warm = 0

    def warm_up(self) -> None:
        for _ in range(stats.WARMUP_RUNS):
            self.plain.run(None, self.feeds)
            self.profiled.run(None, self.feeds)
        self.warm = stats.WARMUP_RUNS

    def run(self, runs: int) -> None:
        for sess, times in ((self.plain, self.plain_cpu), (self.profiled, self.profiled_cpu)):
            for _ in range(runs):
                c0 = time.thread_time_ns()
                sess.run(None, self.feeds)
                times.append((time.thread_time_ns() - c0) / 1e6)

    def end(self) -> str:
        return self.profiled.end_profiling()

    def share(self, path: str) -> float:
        try:
            events = read_profile(path)
        finally:
            os.remove(path)
        kernel = sum(node_medians(events, skip_runs=self.warm)[0].values())  # as the model's nodes are timed
        return ort_overhead.inside_share(self.plain_cpu, self.profiled_cpu, kernel)


def read_profile(path: str) -> list[dict[str, Any]]:
    """The events of an onnxruntime profile file.

    onnxruntime writes one event per line; parsing line by line keeps each C call short, where one
    ``json.load`` of a profile of tens of MB holds the GIL (and freezes the GUI) for its whole
    length.  Any other layout is read whole.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    events: list[dict[str, Any]] = []
    try:
        for line in text.splitlines():
            line = line.strip().rstrip(",")
            if line and line not in ("[", "]"):
                events.append(json.loads(line))
    except json.JSONDecodeError:
        return json.loads(text)
    return events


def _model_runs(events: list[dict[str, Any]], skip_runs: int) -> list[tuple[int, int]]:
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    return runs[skip_runs:] if len(runs) > skip_runs else runs


def _node_events(events: list[dict[str, Any]], runs: list[tuple[int, int]]):
    """(run index, runtime node name, event) of each ``kernel_time`` event inside one of ``runs``."""
    starts = [r[0] for r in runs]
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith(_KERNEL):
            continue
        ts = e["ts"]
        k = bisect.bisect_right(starts, ts) - 1
        if k < 0 or ts > runs[k][1]:
            continue  # a warm-up run's node
        yield k, e["name"][: -len(_KERNEL)], e


def node_runs(events: list[dict[str, Any]], *, skip_runs: int = 0) -> list[dict[str, float]]:
    """Per profiled run (the profile's ``model_run`` events, the first ``skip_runs`` dropped as
    warm-up), each runtime node's summed ``kernel_time`` in ms."""
    runs = _model_runs(events, skip_runs)
    per_run: list[dict[str, float]] = [{} for _ in runs]
    for k, name, e in _node_events(events, runs):
        per_run[k][name] = per_run[k].get(name, 0.0) + e["dur"] / 1000.0
    return per_run


def executions_per_run(events: list[dict[str, Any]], *, skip_runs: int = 0) -> dict[str, float]:
    """Per runtime node, the median number of ``kernel_time`` events it had per run (1 but for
    nodes inside a ``Loop``/``Scan`` body)."""
    runs = _model_runs(events, skip_runs)
    counts: list[dict[str, int]] = [{} for _ in runs]
    for k, name, _ in _node_events(events, runs):
        counts[k][name] = counts[k].get(name, 0) + 1
    names = {n for c in counts for n in c}
    return {n: float(statistics.median(c.get(n, 0) for c in counts)) for n in sorted(names)}


def node_medians(events: list[dict[str, Any]], *, skip_runs: int = 0) -> tuple[dict[str, float], int]:
    """Per runtime node, the median over runs of its summed ``kernel_time`` in ms.

    A median per node, not the mean: the whole-µs rounding of ``dur`` moves it little (on the
    ViT demo, 43 nodes under 10 µs summed 356 µs by medians, 350 µs by means of the typical
    runs), while on a loaded machine the means (and the typical fifth of runs by total) took in
    the runs' stalls and came to 1.7–2.4× the median sum.  A node that did not run in some run
    (an untaken ``If`` branch) counts 0 there.
    """
    per_run = node_runs(events, skip_runs=skip_runs)
    if not per_run:
        return {}, 0
    names = {n for r in per_run for n in r}
    return {n: statistics.median(r.get(n, 0.0) for r in per_run) for n in sorted(names)}, len(per_run)


def _subgraph_node_names(graph: onnx.GraphProto) -> set[str]:
    out: set[str] = set()
    for n in graph.node:
        for a in n.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for g in subs:
                out.update(x.name for x in g.node)
                out |= _subgraph_node_names(g)
    return out


def assign_layers(loaded: LoadedModel, optimized: onnx.ModelProto, node_ms: Mapping[str, float],
                  flops: Mapping[str, float] | None, result: LatencyResult) -> None:
    """Fill ``per_layer_ms``, ``fused``, ``eliminated`` and ``runtime`` from runtime-node times."""
    original = loaded.onnx_model.graph
    rmap = map_runtime_nodes(original, optimized.graph)
    producers = loaded.graph.producers()
    layer_of: dict[int, str | None] = {}
    for i, n in enumerate(original.node):
        layer_of[i] = next((producers[t] for t in n.output if t in producers), None)
    nested = _subgraph_node_names(optimized.graph) - {n.name for n in optimized.graph.node}
    per_layer: dict[str, float] = {}
    runtime_nodes: dict[str, float] = {}
    fused: dict[str, list[str]] = {}
    for node, ms in node_ms.items():
        if node in rmap.covers:
            layers = list(dict.fromkeys(lay for i in rmap.covers[node] if (lay := layer_of[i]) is not None))
            if layers:
                add_times(per_layer, split_time(ms, layers, flops))
                if layers != [node]:
                    fused[node] = layers
                continue
        elif node in nested:
            continue  # a node inside a Loop/If/Scan body: its time is inside the parent node's
        runtime_nodes[node] = ms
    # layers the optimizer folded away (constant folding, Identity/Dropout removal) cost nothing
    covered = {lay for layers in rmap.covers.values() for i in layers if (lay := layer_of[i]) is not None}
    eliminated = [lay for i in rmap.uncovered if (lay := layer_of[i]) is not None and lay not in covered]
    for lay in eliminated:
        per_layer.setdefault(lay, 0.0)
    if runtime_nodes:
        per_layer[RUNTIME_KEY] = sum(runtime_nodes.values())
    result.per_layer_ms = in_graph_order(per_layer, loaded.graph.names())
    result.fused = fused
    result.eliminated = list(dict.fromkeys(eliminated))
    result.runtime_nodes = runtime_nodes
