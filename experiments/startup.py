"""Start-up and run-folder costs of ``python -m fnn train``: wall time cold and warm, compiles.

    python experiments/startup.py [--repeats 3] [--out DIR] [--smoke]

Each command runs in a fresh Python process (as a user runs it), twice per repetition: first
with an empty JAX compilation cache ("cold"), then again with the cache the first run filled
("warm"). A small wrapper registers a ``jax.monitoring`` listener before ``fnn`` is
imported, so each run reports how many XLA programs it compiled (backend compilations; a
program loaded from the persistent cache is a cache hit, not a compile) and how long they
took, and it times every checkpoint write. From the run folder it reads the epochs' time (the
sum of ``metrics.jsonl``'s ``time``), so that saving can be set against training.

Writes ``startup.json`` and prints a Markdown table (the one in the README).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNNER = r"""
import collections, json, sys, time
import jax
counts = collections.Counter()
seconds = collections.defaultdict(float)
def on_duration(name, duration, **kw):
    counts[name] += 1
    seconds[name] += duration
jax.monitoring.register_event_duration_secs_listener(on_duration)
jax.monitoring.register_event_listener(lambda name, **kw: counts.update([name]))
from fnn import checkpoint, cli
save = checkpoint.save_checkpoint
def timed_save(*args, **kwargs):  # every save, the last one included
    t0 = time.perf_counter()
    try:
        return save(*args, **kwargs)
    finally:
        seconds["checkpoint"] += time.perf_counter() - t0
        counts["checkpoint"] += 1
checkpoint.save_checkpoint = timed_save
code = cli.main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"rc": code, "counts": counts, "seconds": seconds}, f)
sys.exit(code)
"""

COMMANDS = {
    "default job, 1 epoch": ["--epochs", "1"],
    "default job (mnist5k, 40 epochs)": [],
    "xor, 1 epoch": ["--dataset", "xor", "--epochs", "1"],
    "circle, full batch, 2000 epochs, --eps-loss 1e-6": [
        "--dataset", "circle", "--batch-size", "full", "--epochs", "2000", "--eps-loss", "1e-6"],
}
SMOKE = {"xor, 1 epoch": COMMANDS["xor, 1 epoch"]}


def run_once(argv: list[str], cache: Path, folder: Path) -> dict:
    """One ``fnn train`` process: wall time, compiles, epochs' and checkpoints' time."""
    stats = folder.with_suffix(".stats.json")
    env = {**os.environ, "FNN_COMPILATION_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(stats), "train", *argv,
                           "--no-progress", "--out", str(folder)], env=env, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"fnn train {' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    s = json.loads(stats.read_text())
    report = json.loads((folder / "metrics.json").read_text())
    epochs = [json.loads(line)["time"] for line in (folder / "metrics.jsonl").read_text().split()]
    backend = "/jax/core/compile/backend_compile_duration"  # loads from the cache count too
    hits = s["counts"].get("/jax/compilation_cache/cache_hits", 0)
    return {"wall_s": wall, "compiles": s["counts"].get(backend, 0) - hits,
            "compile_s": s["seconds"].get(backend, 0.0), "cache_hits": hits,
            "epochs_run": report["epochs_run"], "epochs_s": sum(epochs),
            "checkpoints": s["counts"]["checkpoint"], "checkpoint_s": s["seconds"]["checkpoint"],
            "test_accuracy": report["test_accuracy"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/startup"))
    ap.add_argument("--smoke", action="store_true", help="one command, one repetition")
    args = ap.parse_args(argv)
    commands, repeats = (SMOKE, 1) if args.smoke else (COMMANDS, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, command in commands.items():
            runs = {"cold": [], "warm": []}
            for rep in range(repeats):
                cache = Path(tmp) / f"cache-{len(results)}-{rep}"
                for phase in ("cold", "warm"):
                    folder = Path(tmp) / f"run-{len(results)}-{rep}-{phase}"
                    runs[phase].append(run_once(command, cache, folder))
            results[name] = {"argv": command, **runs}
            print(name, json.dumps({k: [round(r["wall_s"], 2) for r in v]
                                    for k, v in runs.items()}), flush=True)
    (args.out / "startup.json").write_text(json.dumps(results, indent=1))
    rows = ["| command | wall cold s | wall warm s | compiles cold / warm | epochs | epochs s "
            "| checkpoints (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results.values():
        med = {p: {k: statistics.median(x[k] for x in r[p]) for k in r[p][0]} for p in r
               if p != "argv"}
        rows.append(f"| `fnn train {' '.join(r['argv'])}` | {med['cold']['wall_s']:.1f} | "
                    f"{med['warm']['wall_s']:.1f} | {med['cold']['compiles']:.0f} / "
                    f"{med['warm']['compiles']:.0f} | {med['warm']['epochs_run']:.0f} | "
                    f"{med['warm']['epochs_s']:.2f} | {med['warm']['checkpoints']:.0f} "
                    f"({med['warm']['checkpoint_s']:.3f}) |")
    print("\n".join(rows))
    return results


if __name__ == "__main__":
    main()
