"""Out-of-core training: peak memory and speed of MedMIX on memory-mapped float16 embeddings.

A synthetic cohort (4 modalities × 3 experts × 768-d, 3 binary tasks, 70/15/15 split, ~20 %
of the modalities missing, 5 % failed experts; the shape of ``bench/train_speed.py``'s; the
per-row noise comes from a pool of 65,536 rows per expert, rotated per chunk) is
written ONCE to ``--workdir`` as one float16 ``.npy`` per expert, in chunks (never whole in
memory): N = 1,000,000 × 12 experts is ~18 GB of disk, checked before writing. Smaller N use
the first N rows of the same files; fewer experts the first modalities' files.

Each configuration then runs in its own process (so each peak RSS is its own): the rows are
opened as memmaps (:class:`fusion.feature_store.FeatureRows`, exactly what
:func:`fusion.data.load_fusion_data` builds from caches), the train statistics are fitted in
chunks, MedMIX is trained for ``--max-steps`` steps with the config's ``fusion:`` defaults
(every seed at once, as the pipeline does), and a chunked validation pass runs over up to
``--eval-rows`` val rows. Printed per configuration:

* open: fitting the statistics + building the trainer (its per-row statistics pass), seconds;
* train: seed-samples/s over the steps (gathers from the memmap, forward, backward, step);
* eval: rows/s of the validation pass;
* peak RSS (``ru_maxrss``): mapped file pages count while resident, so a file larger than
  256 MB has its pages handed back every 4096 rows read (``madvise(MADV_DONTNEED)``; they stay
  in the page cache): at most ~256 MB of each expert's file is resident.

``--in-memory N``: also runs that N with the rows loaded in memory as standardised float32
tensors (the pre-memmap layout), for the memmap-vs-memory throughput ratio.

    python bench/train_memory.py [--workdir /tmp/medmix-train-memory] [--n 1000000]
        [--experts 12] [--max-steps 200] [--in-memory 100000] [--seeds 0 1 2 3 4]
        [--cohort-n 1000000]

On a machine shared with other jobs every timing moves with the load; compare ratios
within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusion.data import FusionData, Standardization  # noqa: E402
from fusion.feature_store import FeatureRows, MappedArray, fit_stats  # noqa: E402
from fusion.losses import kd_lambda  # noqa: E402
from fusion.registry import MethodPlan  # noqa: E402
from fusion.trainer import SeedTrainer  # noqa: E402
from medmix.hparams import FusionHParams  # noqa: E402

MODALITIES = ["frontal", "lateral", "note", "ehr"]
EXPERTS = ["biomed", "general", "rag"]
DIM = 768
CHUNK = 65536
LATENT = 8


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _latent(n: int, a: int, b: int) -> np.ndarray:
    """Rows a..b of the (n, LATENT) latent: one generator per chunk, so any chunk is cheap."""
    return np.random.default_rng([n, a]).standard_normal((b - a, LATENT), dtype=np.float32)


def build_cohort(workdir: Path, n: int) -> Path:
    """The synthetic cohort under ``workdir/n{n}`` (written once; a ``done.json`` marks it)."""
    out = workdir / f"n{n}"
    if (out / "done.json").exists():
        return out
    need = n * len(MODALITIES) * len(EXPERTS) * DIM * 2 * 1.02
    workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise SystemExit(
            f"{workdir}: {free / 1e9:.1f} GB free, the N = {n:,} cohort needs {need / 1e9:.1f} "
            "GB; give --workdir on a larger disk or a smaller --n"
        )
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12345)
    weights = rng.standard_normal((len(MODALITIES), len(EXPERTS), LATENT, DIM)).astype(np.float32)
    weights /= math.sqrt(LATENT)
    have = np.random.default_rng([n, 1]).random((n, len(MODALITIES))) > 0.2
    failed = np.random.default_rng([n, 2]).random((n, len(MODALITIES), len(EXPERTS))) < 0.05
    delta = (have[:, :, None] & ~failed).astype(np.uint8)
    np.save(out / "delta.npy", delta)
    y = np.zeros((n, 3), np.float32)
    for a in range(0, n, CHUNK):
        z = _latent(n, a, min(a + CHUNK, n))
        noise = np.random.default_rng([n, a, 3]).standard_normal((len(z), 3))
        y[a : a + len(z)] = (z[:, :3] + 0.5 * z[:, 3:6] + 0.5 * noise > 0).astype(np.float32)
    np.save(out / "y.npy", y)
    t = time.perf_counter()
    for mi, m in enumerate(MODALITIES):
        for ei, e in enumerate(EXPERTS):
            # noise from a per-expert pool of CHUNK rows, rotated per chunk (cheap to make)
            pool = np.random.default_rng([mi, ei]).standard_normal((CHUNK, DIM), dtype=np.float32)
            path = out / f"{m}-{e}.npy"
            arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, DIM))
            offset = arr.offset
            del arr  # written through a file handle below: no dirty mapped pages
            with open(path, "r+b") as fh:
                fh.seek(offset)
                for a in range(0, n, CHUNK):
                    b = min(a + CHUNK, n)
                    x = _latent(n, a, b) @ weights[mi, ei]
                    x += np.roll(pool, a // CHUNK * 7919, axis=0)[: b - a]
                    x *= delta[a:b, mi, ei, None]
                    fh.write(x.astype(np.float16).tobytes())
            print(f"  wrote {path.name} ({time.perf_counter() - t:.0f}s)", flush=True)
    (out / "done.json").write_text(json.dumps({"n": n, "dim": DIM}))
    return out


def open_data(cohort: Path, n: int, n_experts: int, in_memory: bool) -> FusionData:
    """FusionData over the first ``n`` rows and ``n_experts`` experts of the cohort files."""
    n_mod = max(1, math.ceil(n_experts / len(EXPERTS)))
    mods = MODALITIES[:n_mod]
    delta = np.load(cohort / "delta.npy", mmap_mode="r")[:n, :n_mod]
    y = torch.from_numpy(np.array(np.load(cohort / "y.npy", mmap_mode="r")[:n]))
    split = np.array(["train"] * int(0.7 * n) + ["val"] * int(0.15 * n), dtype=object)
    split = np.concatenate([split, np.array(["test"] * (n - len(split)), dtype=object)])
    train = np.flatnonzero(split == "train")
    xs, mean, std = [], {}, {}
    for mi, m in enumerate(mods):
        mean[m], std[m] = {}, {}
        for ei, e in enumerate(EXPERTS):
            mapped = MappedArray(cohort / f"{m}-{e}.npy")
            ok = np.asarray(delta[:, mi, ei]) > 0
            mu, sd = fit_stats(mapped, train[ok[train]])  # rows < n: the first n only
            rows = FeatureRows(
                torch.from_numpy(mapped.array[:n]), torch.from_numpy(mu), torch.from_numpy(sd),
                mapped=mapped,
            )  # fmt: skip
            if in_memory:  # the pre-memmap layout: standardised float32, zero where missing
                mask = torch.from_numpy(ok)
                dense = torch.empty(n, DIM)
                for a in range(0, n, CHUNK):
                    idx = torch.arange(a, min(a + CHUNK, n))
                    rows.rows(idx, mask[a : a + CHUNK], out=dense[a : a + CHUNK])
                rows.release()
                rows = FeatureRows.from_dense(dense)
            xs.append(rows)
            mean[m][e], std[m][e] = mu, sd
    return FusionData(
        dataset=f"synthetic-{n}",
        task_type="binary",
        label_names=["task0", "task1", "task2"],
        class_names=None,
        modalities=mods,
        experts={m: list(EXPERTS) for m in mods},
        dims={m: dict.fromkeys(EXPERTS, DIM) for m in mods},
        sample_ids=np.arange(n).astype(str).astype(object),
        split=split,
        x=xs,
        delta=torch.from_numpy(np.array(delta, dtype=np.float32)),
        y=y,
        standardization=Standardization(mean, std),
    )


def run_one(args: argparse.Namespace) -> dict:
    """One configuration, in this process: open, train ``max_steps`` steps, validate."""
    torch.set_num_threads(args.threads)
    section = dict(yaml.safe_load(args.config.read_text()).get("fusion") or {})
    hp = FusionHParams.from_config(section)
    cohort = args.workdir / f"n{args.cohort_n}"
    n = args.n[0]
    t0 = time.perf_counter()
    data = open_data(cohort, n, args.experts[0], args.one == "memory")
    t_stats = time.perf_counter() - t0
    seeds = args.seeds
    plan = MethodPlan("medmix", "medmix", list(data.modalities))
    trainer = SeedTrainer([data] * len(seeds), plan, hp, seeds, torch.device("cpu"))
    t_open = time.perf_counter() - t0
    rss_open = peak_rss_gb()
    train_idx = data.split_index("train")
    bs = min(hp.batch_size, len(train_idx))
    order = seeds[:1] if hp.batch_order == "shared" else seeds
    gens = [torch.Generator().manual_seed(s) for s in order]
    perms = torch.stack([train_idx[torch.randperm(len(train_idx), generator=g)] for g in gens])
    perms = perms.expand(len(seeds), -1)
    steps = min(args.max_steps, len(train_idx) // bs)
    trainer.skeleton.train()
    lam = kd_lambda(1, hp.warmup_epochs, hp.lambda_kd)
    trainer._step(perms[:, :bs], lam)  # warm-up step (allocations), not timed
    t = time.perf_counter()
    for k in range(1, steps + 1):
        trainer._step(perms[:, k * bs : (k + 1) * bs], lam)
    t_train = time.perf_counter() - t
    val = data.split_index("val")[: args.eval_rows]
    t = time.perf_counter()
    trainer.val_losses(val)
    t_eval = time.perf_counter() - t
    return {
        "mode": args.one,
        "n": n,
        "experts": len(data.x),
        "seeds": len(seeds),
        "batch": bs,
        "steps": steps,
        "open_s": round(t_open, 2),
        "stats_s": round(t_stats, 2),
        "train_s": round(t_train, 2),
        "seed_samples_per_s": round(steps * bs * len(seeds) / t_train, 1),
        "eval_rows_per_s": round(len(val) / t_eval, 1),
        "eval_rows": len(val),
        "rss_after_open_gb": round(rss_open, 3),
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", type=Path, default=Path("/tmp/medmix-train-memory"))
    p.add_argument("--n", type=int, nargs="+", default=[1_000_000])
    p.add_argument("--experts", type=int, nargs="+", default=[12], help="3, 6 or 12")
    p.add_argument("--in-memory", type=int, nargs="*", default=[100_000],
                   help="these N also run with the rows in memory (float32)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--eval-rows", type=int, default=50_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--config", type=Path, default=REPO / "config.yaml")
    p.add_argument("--one", choices=["memmap", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--cohort-n", type=int,
                   help="use (or build) the cohort of this N (default: the largest N asked)")  # fmt: skip
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args)), flush=True)
        return 0
    cohort_n = max([args.cohort_n or 0, *args.n, *args.in_memory])
    t = time.perf_counter()
    build_cohort(args.workdir, cohort_n)
    print(f"cohort N = {cohort_n:,} ready under {args.workdir} ({time.perf_counter() - t:.0f}s)")
    runs = [("memmap", n, e) for n in args.n for e in args.experts]
    runs += [("memory", n, e) for n in args.in_memory for e in args.experts]
    runs += [("memmap", n, e) for n in args.in_memory for e in args.experts if n not in args.n]
    results = []
    for mode, n, e in sorted(set(runs), key=lambda r: (r[1], r[2], r[0])):
        cmd = [sys.executable, __file__, "--one", mode, "--cohort-n", str(cohort_n),
               "--workdir", str(args.workdir), "--n", str(n), "--experts", str(e),
               "--max-steps", str(args.max_steps), "--eval-rows", str(args.eval_rows),
               "--threads", str(args.threads), "--config", str(args.config),
               "--seeds", *map(str, args.seeds)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"{mode} N={n} experts={e}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(
            f"{r['mode']:7s} N={r['n']:>9,} experts={r['experts']:2d}: open {r['open_s']:7.1f}s "
            f"(stats {r['stats_s']:.1f}s) | train {r['seed_samples_per_s']:8.0f} seed-samples/s "
            f"({r['steps']} steps × {r['batch']} × {r['seeds']} seeds, {r['train_s']:.1f}s) | "
            f"eval {r['eval_rows_per_s']:7.0f} rows/s | peak RSS {r['peak_rss_gb']:.2f} GB",
            flush=True,
        )
    by = {(r["mode"], r["n"], r["experts"]): r for r in results}
    for n in args.in_memory:
        for e in args.experts:
            a, b = by.get(("memmap", n, e)), by.get(("memory", n, e))
            if a and b:
                ratio = a["seed_samples_per_s"] / b["seed_samples_per_s"]
                print(f"N={n:,} experts={e}: memmap / in-memory training throughput = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
