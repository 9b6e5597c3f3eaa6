"""Deployment cost (paper §4.6, Table E6, Figure 5): parameters, FLOPs, peak memory, EffScore.

The deployed path of a method is every expert its checkpoint reads (the feature
constructors a deployment runs on a new sample: the dataset's configured experts, one
modality's for a single-modality run) plus the method's fusion model. A method that reads a
teacher embedding as an input (``deploys_teachers``: AdaCoMed's large branch, the
``<modality>-large`` references) runs that teacher at inference, so the modality's configured
teacher is counted for it (``teachers`` in the JSON). Teachers used only for distillation
(MedMIX) and the offline retrieval stage (the knowledge index and its search) are not part
of any deployed path (paper App. C). For the RAG expert the query encoder and the LLM that
encodes the bridged text are counted; a generative bridge (MAIRA-2, Merlin report, HistGen)
is not, and the table's header says so.

* **Parameters**: the unique parameters of every torch module the components hold.
* **FLOPs**: :class:`torch.utils.flop_counter.FlopCounterMode` over one sample (batch 1) of
  each component's forward pass (matmul / conv / attention FLOPs, the counter's convention:
  2 per multiply–add). Components that are not torch (radiomics features, TF-IDF+SVD,
  catch22) count 0 parameters and 0 FLOPs and are named in the table's header.
* **Peak memory**: the components are held resident together, so the peak is the bytes of all
  their parameters and buffers plus the largest activation peak of one component's forward.
  On CUDA the activation peak is ``torch.cuda.max_memory_allocated`` (after
  ``reset_peak_memory_stats``); on CPU it is the peak of the bytes of live tensors created
  during the forward, from ``torch.profiler``'s memory events (``profile_memory=True``).

EffScore (paper App. E; checked against its Table E6): ``Perf`` is the mean of AUROC, AUPRC,
mF1 and Acc (test split, ``full`` protocol, mean over seeds) and::

    EffScore = (Perf / Perf_MedMIX) / geomean(params / params_MedMIX,
                                              FLOPs / FLOPs_MedMIX,
                                              memory / memory_MedMIX)

so EffScore(MedMIX) = 1. The ``Average`` rows average each column over datasets and
compute EffScore from those averages.

``python -m fusion.efficiency --config … --dataset … --out results/{dataset}/efficiency.json``
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cohorts.manifest import read_manifest
from medmix.cli import add_output_options, add_version_argument, setup_cli_logging
from medmix.config import dataset_paths, is_rag_expert, load_config_arg
from medmix.io import write_text_atomic
from medmix.methods import TEACHER_EXPERT
from medmix.rag_settings import rag_config

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("medmix.fusion.efficiency")

PERF_METRICS = ("auroc", "auprc", "macro_f1", "accuracy")


# -- counting -------------------------------------------------------------------------------


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` as torch's FlopCounterMode counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return int(counter.get_total_flops())


def find_modules(obj: Any, depth: int = 4) -> list[nn.Module]:
    """Top-level torch modules reachable from ``obj`` through attributes, lists and dicts."""
    import torch
    from torch import nn

    found: dict[int, nn.Module] = {}
    seen: set[int] = set()

    def walk(o: Any, d: int) -> None:
        if id(o) in seen or d < 0:
            return
        seen.add(id(o))
        if isinstance(o, nn.Module):
            found[id(o)] = o
            return
        if isinstance(o, str | bytes | int | float | bool | np.ndarray | torch.Tensor) or o is None:
            return
        if isinstance(o, dict):
            for v in o.values():
                walk(v, d - 1)
        elif isinstance(o, list | tuple | set):
            for v in o:
                walk(v, d - 1)
        elif hasattr(o, "__dict__") and not isinstance(o, type):
            for v in vars(o).values():
                walk(v, d - 1)

    walk(obj, depth)
    # keep only modules that are not submodules of another found module
    inner = {id(s) for m in found.values() for s in m.modules() if s is not m}
    return [m for k, m in found.items() if k not in inner]


def _tensors(modules: Iterable[nn.Module]) -> list[Any]:
    out: dict[int, Any] = {}
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            out[id(t)] = t
    return list(out.values())


def count_params(modules: Iterable[nn.Module]) -> int:
    seen: dict[int, int] = {}
    for m in modules:
        for p in m.parameters():
            seen[id(p)] = p.numel()
    return int(sum(seen.values()))


def resident_bytes(modules: Iterable[nn.Module]) -> int:
    storages: dict[int, int] = {}
    for t in _tensors(modules):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
    return int(sum(storages.values()))


def _cpu_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes of CPU tensors allocated by ``fn()`` and still alive, from the public
    ``torch.profiler`` memory events (``profile_memory=True``): every op's own allocations net
    of its frees (``self_cpu_memory_usage``) and the frees between ops, summed in time order.
    Tensors that existed before ``fn()`` (the resident weights) are never allocated inside it,
    so they are not counted; the resolution is one op (a temporary allocated and freed inside
    one kernel is not seen)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with (
        torch.inference_mode(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    current = peak = 0
    for ev in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += int(ev.self_cpu_memory_usage)
        peak = max(peak, current)
    return peak


def activation_peak(
    fn: Callable[[], Any], modules: Iterable[nn.Module] = (), device: str = "cpu"
) -> int:
    """Peak bytes allocated by ``fn()`` beyond what was resident before (public torch APIs:
    ``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated`` on CUDA, the profiler's
    memory events on CPU). ``modules`` is kept for callers; resident tensors are not counted
    on either device."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    return _cpu_peak(fn)


@dataclass
class Cost:
    """The cost of one component (an expert, or a fusion model) on one sample."""

    name: str
    params: int = 0
    flops: int = 0
    resident_bytes: int = 0
    activation_bytes: int = 0
    torch: bool = True
    seconds: float = 0.0
    note: str = ""
    model: str = ""  # the deployed model it runs (an expert used by two modalities is one model)


def measure(name: str, fn: Callable[[], Any], holder: Any, device: str = "cpu") -> Cost:
    """Run ``fn`` once to load lazily built models, then count its FLOPs and memory."""
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        fn()
    seconds = time.perf_counter() - t0
    modules = find_modules(holder)
    if not modules:
        return Cost(name, torch=False, seconds=seconds, note="not a torch model: not counted")
    return Cost(
        name,
        params=count_params(modules),
        flops=count_flops(fn),
        resident_bytes=resident_bytes(modules),
        activation_bytes=activation_peak(fn, modules, device),
        seconds=seconds,
    )


def combine(costs: list[Cost]) -> dict[str, float]:
    """Totals of a deployed path: FLOPs add up over components; parameters and resident
    bytes count each deployed model once (an expert run on two modalities is one model);
    memory = all resident models + the largest activation peak of one component."""
    models: dict[str, Cost] = {}
    for c in costs:
        models.setdefault(c.model or c.name, c)
    return {
        "params": float(sum(c.params for c in models.values())),
        "flops": float(sum(c.flops for c in costs)),
        "memory_bytes": float(
            sum(c.resident_bytes for c in models.values())
            + max((c.activation_bytes for c in costs), default=0)
        ),
    }


# -- EffScore -------------------------------------------------------------------------------


def geomean(values: Iterable[float]) -> float:
    v = [float(x) for x in values]
    if not v or any(x <= 0 for x in v):
        return float("nan")
    return float(math.exp(sum(math.log(x) for x in v) / len(v)))


def perf(metrics: dict[str, float]) -> float:
    """The paper's Perf: the mean of AUROC, AUPRC, mF1 and Acc."""
    return float(np.mean([metrics[m] for m in PERF_METRICS]))


def eff_score(
    perf_value: float,
    cost: dict[str, float],
    perf_ref: float,
    cost_ref: dict[str, float],
) -> float:
    """``(Perf / Perf_ref) / geomean(params, FLOPs, memory ratios to the reference)``."""
    ratios = [cost[k] / cost_ref[k] for k in ("params", "flops", "memory_bytes")]
    return float((perf_value / perf_ref) / geomean(ratios))


# -- components of a dataset's deployed path -------------------------------------------------


def _first_values(
    cfg: dict[str, Any], dataset: str, modality: str, k: int = 1
) -> tuple[list[Any], Path]:
    """Up to ``k`` non-null manifest values of ``modality`` (test split first) and the root."""
    df, meta = read_manifest(dataset_paths(cfg, dataset).manifest)
    df = df[df[modality].notna()]
    order = df["split"].map({"test": 0, "val": 1, "train": 2}).fillna(3)
    df = df.assign(_o=order).sort_values(["_o", "sample_id"])
    root = Path(meta.root)
    if not root.exists():  # a relative root written from another working directory
        root = dataset_paths(cfg, dataset).root / "raw"
    return df[modality].tolist()[:k], root


def expert_cost(
    cfg: dict[str, Any], dataset: str, modality: str, expert: str, device: str = "cpu"
) -> Cost:
    """Cost of one configured expert on one sample of the dataset's manifest."""
    from extractors.registry import config_presets, create_expert

    if is_rag_expert(cfg, expert):
        return rag_cost(cfg, dataset, modality, device)
    with config_presets(cfg["experts"]):  # as the extract CLI does: wrapped experts resolve
        ex = create_expert(expert, **({"device": device} if device != "cpu" else {}))
    values, root = _first_values(cfg, dataset, modality, k=256)
    if not values:
        return Cost(f"{modality}/{expert}", torch=False, note="no sample to measure on")
    if getattr(ex, "requires_fit", False):
        loaded_fit = []
        for v in values:
            try:
                loaded_fit.append(ex.load(v, root))
            except Exception:  # noqa: BLE001 - a bad sample is skipped
                continue
        try:
            ex.fit(loaded_fit)
        except Exception as exc:  # noqa: BLE001 - cannot fit on what is here: not measured
            return Cost(
                f"{modality}/{expert}", torch=False, note=f"not measured (fit failed: {exc})"
            )
    item = None
    for v in values:  # the first sample that loads
        try:
            item = ex.load(v, root)
            break
        except Exception as exc:  # noqa: BLE001 - a bad sample: try the next one
            log.debug("%s/%s: sample not loadable (%s)", modality, expert, exc)
    if item is None:
        return Cost(f"{modality}/{expert}", torch=False, note="no loadable sample: not measured")
    cost = measure(f"{modality}/{expert}", lambda: ex.embed([item]), ex, device)
    cost.model = expert
    return cost


def rag_cost(cfg: dict[str, Any], dataset: str, modality: str, device: str = "cpu") -> Cost:
    """The RAG expert's deployed encoders (query encoder + LLM) on one text of ``k`` docs."""
    from extractors.rag.encoders import build_encoder
    from extractors.rag.softprompt import SoftPromptEncoder

    rag = rag_config({k: v for k, v in (cfg.get("rag") or {}).items() if k != "device"})
    query = build_encoder("rag/query_encoder", rag["query_encoder"], device=device)
    llm = SoftPromptEncoder(rag["llm"], device=device)
    text = _sample_text(cfg, dataset, modality)

    def run() -> None:
        query.encode_queries([text])
        model, tok = llm._load()
        enc = tok([text], return_tensors="pt", truncation=True, max_length=llm.max_length).to(
            device
        )
        model(**enc)

    cost = measure(f"{modality}/rag", run, [query, llm], device)
    cost.note = "query encoder + LLM; retrieval index and bridge not counted"
    cost.model = "rag"
    return cost


def _sample_text(cfg: dict[str, Any], dataset: str, modality: str) -> str:
    """A text of the dataset (the modality's own, or another text modality's) to time RAG on."""
    df, meta = read_manifest(dataset_paths(cfg, dataset).manifest)
    kinds = meta.modalities
    for m in [modality, *kinds]:
        if kinds.get(m) == "text" and df[m].notna().any():
            return str(df[m].dropna().iloc[0])
    return "Findings: no acute cardiopulmonary abnormality. " * 8


def fusion_cost(model: nn.Module, device: str = "cpu") -> Cost:
    """A fusion model on one sample with every expert available."""
    import torch

    spec = model.spec
    model = model.to(device).eval()
    xs = [torch.zeros(1, spec.dims[m][e], device=device) for m, e in spec.flat_experts]
    delta = torch.zeros(1, len(spec.modalities), spec.max_experts, device=device)
    for mi, m in enumerate(spec.modalities):
        delta[0, mi, : len(spec.experts[m])] = 1
    cost = measure(
        f"fusion/{spec.run_method or spec.method}", lambda: model(xs, delta), model, device
    )
    cost.model = cost.name
    return cost


def _teachers(cfg: dict[str, Any], dataset: str) -> dict[str, str]:
    d = cfg["datasets"][dataset]
    return dict(d.get("teachers") or {})


def dataset_efficiency(
    cfg: dict[str, Any],
    dataset: str,
    methods: list[str],
    device: str = "cpu",
    runs_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Costs of every method's deployed path on ``dataset`` (its ``full`` seed-0 checkpoints).

    A method deploys the experts its checkpoint reads (``spec.experts``: a single-modality
    run only its modality's) and, where it reads a teacher cache as an input (expert
    ``teacher``: AdaCoMed, ``<modality>-large``), that modality's configured teacher model.
    """
    from fusion.checkpoint import load_model  # torch: the report imports this module

    paths = dataset_paths(cfg, dataset)
    root = Path(runs_root) if runs_root else paths.root / "runs"
    teachers = _teachers(cfg, dataset)
    measured: dict[tuple[str, str], Cost] = {}
    rag_seen: list[Cost] = []

    def cost_of(m: str, e: str) -> Cost | None:
        if (m, e) in measured:
            return measured[(m, e)]
        name = teachers.get(m) if e == TEACHER_EXPERT else e
        if name is None or name not in cfg["experts"]:
            log.warning("%s: no expert %r configured for %s; not counted", dataset, name or e, m)
            return None
        if is_rag_expert(cfg, name) and rag_seen:
            c = Cost(**{**asdict(rag_seen[0]), "name": f"{m}/{name}"})  # same encoders
        else:
            c = expert_cost(cfg, dataset, m, name, device)
            if is_rag_expert(cfg, name):
                rag_seen.append(c)
        log.info("%s %s: %.3g params, %.3g FLOPs", dataset, c.name, c.params, c.flops)
        measured[(m, e)] = c
        return c

    out: dict[str, Any] = {
        "dataset": dataset,
        "device": device,
        "memory": (
            "cuda max_memory_allocated"
            if device.startswith("cuda")
            else "live tensor bytes (CPU, torch.profiler)"
        ),
        "methods": {},
    }
    for method in methods:
        seed_dirs = sorted((root / "full" / method).glob("seed*/model.safetensors"))
        if not seed_dirs:
            log.warning("%s: no checkpoint of %s; skipped", dataset, method)
            continue
        lm = load_model(seed_dirs[0].parent)
        costs = [c for m, e in lm.spec.flat_experts if (c := cost_of(m, e)) is not None]
        fc = fusion_cost(lm.model, device)
        costs.append(fc)
        out["methods"][method] = {
            **combine(costs),
            "fusion": asdict(fc),
            "components": [c.name for c in costs],
            # teachers it runs at inference (AdaCoMed, <modality>-large), counted above
            "teachers": [
                c.name
                for (m, e), c in measured.items()
                if e == TEACHER_EXPERT and (m, e) in lm.spec.flat_experts
            ],
        }
    out["experts"] = [asdict(c) for c in measured.values()]
    return out


def write_efficiency(
    cfg: dict[str, Any],
    dataset: str,
    methods: list[str],
    out: str | os.PathLike,
    device: str = "cpu",
) -> Path:

    result = dataset_efficiency(cfg, dataset, methods, device)
    return write_text_atomic(out, json.dumps(result, indent=1, sort_keys=True))


# -- the table ------------------------------------------------------------------------------


@dataclass
class EfficiencyRow:
    dataset: str
    method: str
    params: float
    flops: float
    memory_bytes: float
    perf: float
    eff_score: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


def efficiency_rows(
    costs: dict[str, dict[str, Any]],
    perfs: dict[tuple[str, str], float],
    reference: str = "medmix",
) -> list[EfficiencyRow]:
    """Rows per (dataset, method) with EffScore, plus the ``Average`` rows.

    ``costs``: dataset -> the JSON of :func:`dataset_efficiency`; ``perfs``: (dataset,
    method) -> Perf.
    """
    rows: list[EfficiencyRow] = []
    for ds, res in costs.items():
        methods = res.get("methods", {})
        if reference not in methods or (ds, reference) not in perfs:
            log.warning("%s: no %s cost or performance; EffScore undefined", ds, reference)
        ref = methods.get(reference)
        for method, c in methods.items():
            p = perfs.get((ds, method), float("nan"))
            row = EfficiencyRow(ds, method, c["params"], c["flops"], c["memory_bytes"], p)
            if ref is not None and (ds, reference) in perfs:
                row.eff_score = eff_score(p, c, perfs[(ds, reference)], ref)
            rows.append(row)
    datasets = list(costs)
    if len(datasets) > 1:
        methods = [m for m in {r.method: None for r in rows} if all(
            any(r.dataset == d and r.method == m for r in rows) for d in datasets)]  # fmt: skip
        avg: dict[str, EfficiencyRow] = {}
        for m in methods:
            sel = [r for r in rows if r.method == m]
            avg[m] = EfficiencyRow(
                "Average",
                m,
                float(np.mean([r.params for r in sel])),
                float(np.mean([r.flops for r in sel])),
                float(np.mean([r.memory_bytes for r in sel])),
                float(np.mean([r.perf for r in sel])),
            )
        if reference in avg:
            ref = avg[reference]
            rc = {"params": ref.params, "flops": ref.flops, "memory_bytes": ref.memory_bytes}
            for r in avg.values():
                c = {"params": r.params, "flops": r.flops, "memory_bytes": r.memory_bytes}
                r.eff_score = eff_score(r.perf, c, ref.perf, rc)
        rows += list(avg.values())
    return rows


def main(argv: list[str] | None = None) -> int:
    from medmix.cli import positive_int

    parser = argparse.ArgumentParser(prog="python -m fusion.efficiency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_version_argument(parser)
    parser.add_argument("--config", default="config.yaml", help="config file, or inline JSON")
    parser.add_argument("--dataset", required=True, help="dataset name from the config's datasets:")
    parser.add_argument("--methods", nargs="+", required=True,
                        help="fusion methods to cost (their full-protocol runs must exist)")  # fmt: skip
    parser.add_argument(
        "--out", required=True, help="output JSON, e.g. results/{dataset}/efficiency.json"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument(
        "--threads", type=positive_int, default=1, help="torch CPU threads (default 1)"
    )
    add_output_options(parser, progress=False)
    args = parser.parse_args(argv)
    setup_cli_logging(args)
    import torch

    torch.set_num_threads(args.threads)
    cfg = load_config_arg(args.config)
    dataset_paths(cfg, args.dataset)  # an unknown --dataset: one line naming it
    write_efficiency(cfg, args.dataset, args.methods, args.out, args.device)
    return 0


if __name__ == "__main__":
    from medmix.cli import run_cli

    raise SystemExit(run_cli(main))
