"""Fusion training speed: MedMIX, all seeds in one process, against this CPU's matmul limit.

A synthetic cohort of N samples (4 modalities × 3 experts × 768-d embeddings, 3 binary tasks,
70/15/15 split, ~20 % of the modalities missing) is built in memory ONCE and shared by every
seed (and would be by every method: :func:`fusion.data.load_fusion_data_cached` does the
same for real caches). For each N it trains MedMIX with the config's ``fusion:`` defaults
(d = 64, bottleneck 32, batch 128, …; ``--batch-size`` overrides) for one epoch, every seed at once (vectorised over the
seed axis with ``torch.func.vmap``; ``--sequential`` trains the seeds one after another for
comparison), and prints:

* samples/s: training samples processed per second over the epoch, all seeds counted
  (``seed-samples/s``) and per seed — gathering minibatches, forward, backward, clipping and
  the optimiser step included (validation excluded);
* achieved GFLOP/s: the matrix-multiply FLOPs of one training step, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (what the CPU actually executes: forward and
  backward), times the steps, over the epoch's wall time;
* the machine's matmul GFLOP/s, measured here with the same thread count (the best of
  several float32 2048² and 4096² products — the physical limit this CPU reaches), and the
  achieved fraction of it (target: ≥ 50 % at N = 100k) — per wall-clock second and per CPU
  second of the process (``time.process_time``; on a machine shared with other jobs the
  wall-clock figures move with the load, the CPU-time figures much less);
* peak resident memory of the process.

    python bench/train_speed.py [--n 10000 100000] [--seeds 0 1 2 3 4] [--threads 1]
                                [--max-steps K] [--sequential] [--batch-size B] [--config F]

On a machine shared with other jobs every number moves with the load; the matmul limit is
re-measured right before each training run to keep the ratio fair.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusion.data import FusionData, Standardization  # noqa: E402
from fusion.losses import kd_lambda  # noqa: E402
from fusion.registry import MethodPlan  # noqa: E402
from fusion.trainer import SeedTrainer  # noqa: E402
from medmix.hparams import FusionHParams  # noqa: E402

MODALITIES = ["frontal", "lateral", "note", "ehr"]
EXPERTS = ["biomed", "general", "rag"]
DIM = 768


def synthetic_data(n: int, seed: int = 0) -> FusionData:
    """N samples, 4 modalities × 3 experts × 768-d, 3 binary tasks; standardised-like."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 8, generator=g)
    logits = latent[:, :3] + 0.5 * latent[:, 3:6]
    y = (logits + 0.5 * torch.randn(n, 3, generator=g) > 0).float()
    have = torch.rand(n, len(MODALITIES), generator=g) > 0.2
    delta = torch.zeros(n, len(MODALITIES), len(EXPERTS))
    xs = []
    for mi in range(len(MODALITIES)):
        for ei in range(len(EXPERTS)):
            w = torch.randn(8, DIM, generator=g) / math.sqrt(8)
            x = latent @ w + torch.randn(n, DIM, generator=g)
            ok = have[:, mi] & (torch.rand(n, generator=g) > 0.05)
            x[~ok] = 0
            xs.append(x.contiguous())
            delta[:, mi, ei] = ok.float()
    split = np.array(["train"] * int(0.7 * n) + ["val"] * int(0.15 * n))
    split = np.concatenate([split, np.array(["test"] * (n - len(split)))]).astype(object)
    zeros = {m: {e: np.zeros(DIM, np.float32) for e in EXPERTS} for m in MODALITIES}
    ones = {m: {e: np.ones(DIM, np.float32) for e in EXPERTS} for m in MODALITIES}
    return FusionData(
        dataset=f"synthetic-{n}",
        task_type="binary",
        label_names=["task0", "task1", "task2"],
        class_names=None,
        modalities=list(MODALITIES),
        experts={m: list(EXPERTS) for m in MODALITIES},
        dims={m: dict.fromkeys(EXPERTS, DIM) for m in MODALITIES},
        sample_ids=np.array([f"s{i}" for i in range(n)], dtype=object),
        split=split,
        x=xs,
        delta=delta,
        y=y,
        standardization=Standardization(zeros, ones),
    )


def matmul_gflops(threads: int, repeats: int = 5) -> tuple[float, float]:
    """Best float32 GEMM rate (GFLOP/s) at ``threads`` threads: (per wall second, per CPU
    second of this process)."""
    torch.set_num_threads(threads)
    best_wall = best_cpu = 0.0
    for size in (2048, 4096):
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        for _ in range(repeats if size == 2048 else 2):
            t, c = time.perf_counter(), time.process_time()
            a @ b
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            best_wall = max(best_wall, 2 * size**3 / wall / 1e9)
            best_cpu = max(best_cpu, 2 * size**3 * threads / max(cpu, 1e-9) / 1e9)
    return best_wall, best_cpu


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def step_flops(trainer: SeedTrainer, idx: torch.Tensor, lam: float) -> int:
    """The matmul FLOPs of one training step (the timed steps' λ: this step also records the
    replayed step, :class:`fusion.seed_stack.StepReplay`, a one-time cost left out of the
    timing like the data and the trainer)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer._step(idx, lam)
    return counter.get_total_flops()


def run_epoch(data: FusionData, hp: FusionHParams, seeds: list[int], max_steps: int | None) -> dict:
    trainer = SeedTrainer([data] * len(seeds), MethodPlan("medmix", "medmix", MODALITIES), hp,
                          seeds, torch.device("cpu"))  # fmt: skip
    train_idx = data.split_index("train")
    n_train = len(train_idx)
    bs = min(hp.batch_size, n_train)
    # the trainer's own rule: every seed its own order, or all seeds the first seed's
    order = seeds[:1] if hp.batch_order == "shared" else seeds
    gens = [torch.Generator().manual_seed(s) for s in order]
    perms = torch.stack([train_idx[torch.randperm(n_train, generator=g)] for g in gens])
    perms = perms.expand(len(seeds), -1)
    lam = kd_lambda(1, hp.warmup_epochs, hp.lambda_kd)
    trainer.skeleton.train()
    flops = step_flops(trainer, perms[:, :bs], lam)
    steps = (
        math.ceil(n_train / bs) if max_steps is None else min(max_steps, math.ceil(n_train / bs))
    )
    t0, c0 = time.perf_counter(), time.process_time()
    samples = 0
    for k in range(steps):
        idx = perms[:, k * bs : (k + 1) * bs]
        trainer._step(idx, lam)
        samples += idx.shape[1]
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    full_batches = samples // bs
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "steps": steps,
        "samples": samples,
        "flops": flops * full_batches + flops * (samples - full_batches * bs) / bs,
        "flops_per_step": flops,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--config", type=Path, default=REPO / "config.yaml",
                   help="hyper-parameters from this config's fusion: section (default: the demo's)")  # fmt: skip
    p.add_argument("--batch-size", type=int, help="override the config's fusion.batch_size")
    p.add_argument("--batch-order", choices=["per_seed", "shared"],
                   help="override the config's fusion.batch_order")  # fmt: skip
    p.add_argument("--max-steps", type=int, help="stop the epoch after this many steps")
    p.add_argument("--sequential", action="store_true", help="also train the seeds one by one")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    section = dict(yaml.safe_load(args.config.read_text()).get("fusion") or {})
    if args.batch_size is not None:
        section["batch_size"] = args.batch_size
    if args.batch_order is not None:
        section["batch_order"] = args.batch_order
    hp = FusionHParams.from_config(section)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPU(s); "
          f"MedMIX d={hp.d}, bottleneck={hp.adapter_bottleneck}, batch={hp.batch_size}, "
          f"batch order {hp.batch_order}, "
          f"seeds={args.seeds}; 4 modalities x 3 experts x {DIM}-d")  # fmt: skip
    for n in args.n:
        t = time.perf_counter()
        data = synthetic_data(n)
        print(f"\nN = {n:,}: data built once in {time.perf_counter() - t:.1f}s "
              f"({sum(x.shape[0] * x.shape[1] for x in data.x) * 4 / 1e9:.2f} GB, shared by all seeds)")  # fmt: skip
        modes = [("vectorised", [args.seeds])]
        if args.sequential:
            modes.append(("sequential", [[s] for s in args.seeds]))
        for name, batches in modes:
            limit_wall, limit_cpu = matmul_gflops(args.threads)
            secs = cpu = flops = samples = 0.0
            steps = 0
            for seeds in batches:
                r = run_epoch(data, hp, seeds, args.max_steps)
                secs += r["seconds"]
                cpu += r["cpu_seconds"]
                flops += r["flops"]
                samples += r["samples"] * len(seeds)
                steps += r["steps"]
            again = matmul_gflops(args.threads, repeats=2)
            limit_wall, limit_cpu = max(limit_wall, again[0]), max(limit_cpu, again[1])
            gf = flops / secs / 1e9
            gf_cpu = flops * args.threads / max(cpu, 1e-9) / 1e9
            print(
                f"  {name:10s}: {samples / secs:9.0f} seed-samples/s ({samples / secs / len(args.seeds):7.0f} "
                f"per seed) over {steps} steps, {secs:7.1f}s wall | {flops / steps / 1e9:.3f} GFLOP/step\n"
                f"  {'':10s}  wall: achieved {gf:6.2f} GFLOP/s = {100 * gf / limit_wall:5.1f}% of matmul "
                f"{limit_wall:.1f} GFLOP/s\n"
                f"  {'':10s}  CPU time ({cpu:.1f}s): {gf_cpu:6.2f} GFLOP/s = {100 * gf_cpu / limit_cpu:5.1f}% of "
                f"matmul {limit_cpu:.1f} GFLOP/s | peak RSS {peak_rss_gb():.2f} GB"
            )  # fmt: skip
        del data
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
