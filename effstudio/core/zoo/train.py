"""Train the demo zoo on the built-in digits and write the shipped weights.

    python -m effstudio.core.zoo.train [NAMES...]   # default: every trained demo

Training is deterministic: one CPU thread, ``torch.use_deterministic_algorithms``, a fixed seed
for initialization, batch order and augmentation, so a rerun on the same torch gives the same
bytes.  It writes ``resources/demo/<name>.safetensors`` (fp32) and merges the run's numbers into
``resources/demo/metrics.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from effstudio.core.progress import Progress
from effstudio.core.zoo import DEMOS, _factory
from effstudio.core.zoo.data import background_value, digits, split_digest

SEED = 0


@dataclass(frozen=True)
class Recipe:
    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.0
    shift: int = 2  # augmentation: random translation up to ±shift pixels (at 32×32), 0 = none
    label_smoothing: float = 0.0


RECIPES: dict[str, Recipe] = {
    "mlp": Recipe(epochs=12, lr=1e-3, weight_decay=1e-4),
    "cnn": Recipe(epochs=5, lr=2e-3),
    "mobilenetv2": Recipe(epochs=5, lr=3e-3),
    "resnet": Recipe(epochs=4, lr=2e-3),
    "transformer": Recipe(epochs=15, lr=2e-3, weight_decay=1e-4, label_smoothing=0.1),
    "lstm": Recipe(epochs=15, lr=3e-3, shift=1),
}


@contextlib.contextmanager
def deterministic(threads: int = 1) -> Iterator[None]:
    """One thread and deterministic kernels for the duration; the previous settings come back after."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by a random (dy, dx) in [-max_shift, max_shift], filling with background."""
    if max_shift <= 0:
        return x
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=background_value())
    offsets = torch.randint(0, 2 * s + 1, (x.shape[0], 2), generator=gen).tolist()
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


@torch.no_grad()
def accuracy(module: nn.Module, split: str, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``module`` (input ``x``) on one digits split."""
    x, y = digits(split)
    module.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = module(x=torch.from_numpy(x[i:i + batch_size].copy()))
        correct += int((logits.argmax(1).numpy() == y[i:i + batch_size]).sum())
    return correct / len(x)


def train_demo(name: str, *, epochs: int | None = None, progress: Progress | None = None,
               seed: int = SEED) -> tuple[nn.Module, dict]:
    """Train demo ``name`` from scratch; returns the module (eval mode) and its metrics."""
    progress = progress or Progress()
    spec = DEMOS[name]
    if not spec.trained:
        raise ValueError(f"demo {name!r} is a reference architecture; it is not trained")
    recipe = RECIPES[name]
    n_epochs = recipe.epochs if epochs is None else epochs
    x_np, y_np = digits("train")
    x_all, y_all = torch.from_numpy(x_np.copy()), torch.from_numpy(y_np.copy())
    with deterministic():
        torch.manual_seed(seed)
        module = _factory(spec)()
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(module.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        steps_per_epoch = math.ceil(len(x_all) / recipe.batch_size)
        total = max(1, n_epochs * steps_per_epoch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total, pct_start=0.2)
        start, start_cpu = time.perf_counter(), time.process_time()
        step = 0
        for epoch in range(n_epochs):
            module.train()
            order = torch.randperm(len(x_all), generator=gen)
            for b in range(steps_per_epoch):
                idx = order[b * recipe.batch_size:(b + 1) * recipe.batch_size]
                xb = _shift(x_all[idx], recipe.shift, gen)
                loss = F.cross_entropy(module(x=xb), y_all[idx], label_smoothing=recipe.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                progress.update(step / total, f"{name}: epoch {epoch + 1}/{n_epochs}, loss {loss.item():.3f}")
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        module.eval()
        val, test = accuracy(module, "val"), accuracy(module, "test")
    metrics = {
        "val_accuracy": round(val, 4),
        "test_accuracy": round(test, 4),
        "params": sum(p.numel() for p in module.parameters()),
        "macs": spec.macs,
        "train_seconds": round(seconds, 1),  # wall clock (the machine may have been busy)
        "train_cpu_seconds": round(cpu_seconds, 1),
        "threads": 1,
        "epochs": n_epochs,
        "recipe": asdict(recipe),
        "seed": seed,
        "split": split_digest(),
        "torch": torch.__version__,
    }
    return module, metrics


def save_weights(module: nn.Module, path: Path, name: str) -> str:
    """Write the state dict as fp32 safetensors; returns the file's sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"demo": name, "split": split_digest(), "torch": torch.__version__})
    path.chmod(0o644)  # safetensors creates the file private to the user; these are shipped
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    from effstudio.core.paths import demo_dir

    trained = [n for n, s in DEMOS.items() if s.trained]
    parser = argparse.ArgumentParser(prog="python -m effstudio.core.zoo.train",
                                     description="Train the demo zoo on the built-in digits.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"demos to train (default: {' '.join(trained)})")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: resources/demo)")
    args = parser.parse_args(argv)
    names = args.names or trained
    unknown = [n for n in names if n not in trained]
    if unknown:
        parser.error(f"not a trained demo: {', '.join(unknown)} (trained demos: {', '.join(trained)})")
    out = args.out or demo_dir()
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    all_metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    for name in names:
        module, metrics = train_demo(name, epochs=args.epochs)
        path = out / f"{name}.safetensors"
        metrics["sha256"] = save_weights(module, path, name)
        metrics["weights_bytes"] = path.stat().st_size
        all_metrics[name] = metrics
        ordered = {n: all_metrics[n] for n in trained if n in all_metrics}
        metrics_path.write_text(json.dumps(ordered, indent=2) + "\n")
        print(f"{name:12s} val {metrics['val_accuracy']:.4f}  test {metrics['test_accuracy']:.4f}  "
              f"params {metrics['params']:,}  {metrics['train_seconds']:.1f} s "
              f"({metrics['train_cpu_seconds']:.1f} s CPU)  -> {path}", flush=True)
    total = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    print(f"total shipped weights: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
