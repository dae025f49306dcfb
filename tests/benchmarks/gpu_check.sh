#!/usr/bin/env bash
# The checks that need a GPU, as one call on a lent CUDA machine (the `device` tool's `run`):
#   bash tests/benchmarks/gpu_check.sh [quick]
# From the repository root.  Wheels the machine lacks (platformdirs) travel in .whl/ (see the
# device tool's README); logs go to $OUT.  Prints the environment, runs the tests marked `gpu`,
# profiles a demo through the CLI on CUDA, and prints how per-layer CUDA times add up
# (bench_latency_overhead.py --device cuda: CUDA events against synchronize-and-host-clock).
set -u
OUT=${OUT:-/tmp/effstudio-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 EFFSTUDIO_CACHE_DIR=/tmp/effstudio-cache EFFSTUDIO_DATA_DIR=/tmp/effstudio-data
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi -L
python3 - <<'PY'
import onnx, onnxruntime as ort, torch
print("python torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("onnxruntime", ort.__version__, ort.get_available_providers(), "onnx", onnx.__version__)
PY
echo "== tests marked gpu"
python3 -m pytest -q -rs -s tests/core/test_cuda.py 2>&1 | tee "$OUT/pytest_cuda.log" | grep -v Warning
echo "== effstudio profile demo:resnet50 --device cuda"
python3 -m effstudio profile demo:resnet50 --device cuda --budget 2 --json >"$OUT/profile_resnet50_cuda.json" \
  2>"$OUT/profile_resnet50_cuda.err"
echo "rc=$?"; tail -c 600 "$OUT/profile_resnet50_cuda.err"
python3 - "$OUT/profile_resnet50_cuda.json" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as exc:
    print("no JSON:", exc); raise SystemExit
t = d["totals"]
print("resnet50 cuda: e2e", t["latency_ms"], "sum/e2e", t.get("latency_sum_ratio"), "device", d["environment"])
top = sorted(((l.get("latency_ms") or 0, l["name"]) for l in d["layers"]), reverse=True)[:5]
print("slowest layers:", top)
PY
models=mlp,cnn,mobilenetv2,resnet,transformer,lstm,resnet50,mobilenet_v2,bert_base
[ "${1:-}" = quick ] && models=cnn,resnet50
echo "== per-layer sums on CUDA (torch form)"
python3 tests/benchmarks/bench_latency_overhead.py --device cuda --forms torch --clock events,sync \
  --models "$models" --repeats 3 --budget 0.3 2>&1 | tee "$OUT/bench_cuda.log" | grep -v -i "warn\|next(self.gen)"
