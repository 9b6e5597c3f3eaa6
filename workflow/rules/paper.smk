# Helpers for the paper grid (protocols, ablations, external validation, efficiency): which run
# folders each dataset's metrics table collects, and which tables / figures `paper_tables`
# writes. The lists come from the torch-free plan layer (medmix.plan), which the renderer
# reads too, so the workflow and the renderer agree.
# Include after common.smk.

from medmix.ablation_plan import ablation_variants
from medmix.plan import (
    efficiency_methods,
    external_methods,
    external_pairs,
    external_protocol,
    paper_outputs,
    protocol_methods,
    training_datasets,
)
from medmix.plan import run_header as describe_run
from medmix.config import is_activated, section
from medmix.outputs import FIGURE, FIGURE_FORMATS, TABLE, TABLE_FORMATS, output_entry
from medmix.protocol_names import expand_settings, is_test_only

TRAIN_DATASETS = training_datasets(config)
PAPER = paper_outputs(config)
EXTERNAL = external_pairs(config)


def paper_slice(dataset, *keep, datasets=()):
    """The config a paper-grid job depends on: the dataset's slice without the
    paper sections it does not read (so editing the protocol grid does not rerun it), plus the
    other ``datasets`` it reads (an external target) and the teachers' expert presets.
    """
    cfg = dataset_slice(config, dataset)  # drops every PAPER_SECTIONS key
    cfg.update({k: config[k] for k in keep if k in config})
    for ds in datasets:
        other = dataset_slice(config, ds)
        cfg["datasets"] = {**cfg["datasets"], **other["datasets"]}
        cfg["experts"] = {**cfg["experts"], **other["experts"]}
    for name in (config["datasets"][dataset].get("teachers") or {}).values():
        if name in config["experts"]:
            cfg["experts"] = {**cfg["experts"], **expert_closure(config, name)}
    return cfg


def table_header():
    """The header line of Table 1: the trained datasets (not external-only targets)."""
    return f"Test split, mean ± std over {len(config['seeds'])} seeds. " + describe_run(
        config, TRAIN_DATASETS
    )


def protocol_settings(dataset):
    """Every protocol setting of the config's protocols: section for this dataset."""
    return expand_settings(
        section(config, "protocols"), list(config["datasets"][dataset]["modalities"])
    )


def train_protocol_settings(dataset):
    """Settings that corrupt training data: one train job per (dataset, method, setting)."""
    return [s for s in protocol_settings(dataset) if not is_test_only(s)]


def test_protocol_settings(dataset):
    """Test-only settings: evaluated on the full run's checkpoints, one job per method."""
    return [s for s in protocol_settings(dataset) if is_test_only(s)]


def _summary(dataset, protocol, method):
    return str(
        dataset_paths(config, dataset).run_dir(protocol, method) / "summary.json"
    )


def protocol_runs(dataset):
    methods = runnable(dataset, protocol_methods(config))
    out = [
        _summary(dataset, s, m)
        for s in train_protocol_settings(dataset)
        for m in methods
    ]
    if test_protocol_settings(dataset):
        out += [f"{RESULTS}/{dataset}/test_time/{m}.json" for m in methods]
    return out


def ablation_runs(dataset):
    if not is_activated(config, "ablations"):
        return []
    return [
        _summary(dataset, v.protocol, v.method)
        for v in ablation_variants(config, dataset)
    ]


def external_runs(dataset):
    return [
        _summary(src, external_protocol(tgt), m)
        for src, tgt in EXTERNAL
        if src == dataset
        for m in runnable(dataset, external_methods(config))
    ]


def all_run_inputs(dataset):
    """Everything one dataset's metrics table is collected from (runs or markers), deduplicated."""
    files = run_summaries(dataset) + protocol_runs(dataset) + ablation_runs(dataset)
    files += external_runs(dataset)
    return list(dict.fromkeys(files))


def runnable(dataset, methods):
    """``methods`` minus the ones that cannot run here (e.g. OneLLM without its weights)."""
    return [m for m in methods if not method_inputs(config, dataset, m).unavailable]


def run_input_files(dataset, method):
    """The caches (and teacher caches) a run of ``method`` on ``dataset`` reads."""
    got = method_inputs(config, dataset, method)
    files = [str(p) for experts in got.caches.values() for p in experts.values()]
    return files + [str(p) for p in got.teachers.values()]


def external_target_caches(wildcards):
    return run_input_files(wildcards.target, wildcards.method)


def dataset_caches(wildcards):
    """Every expert cache of the dataset, and the teacher caches MedMIX distils from."""
    paths = cache_paths(config, wildcards.dataset)
    files = [str(p) for experts in paths.values() for p in experts.values()]
    return list(dict.fromkeys(files + run_input_files(wildcards.dataset, "medmix")))


def efficiency_inputs(wildcards):
    methods = runnable(wildcards.dataset, efficiency_methods(config))
    return [_summary(wildcards.dataset, "full", m) for m in methods]


def efficiency_device():
    return str(section(config, "efficiency").get("device", "cpu"))


def efficiency_files():
    if not is_activated(config, "efficiency"):
        return []
    return [f"{RESULTS}/{ds}/efficiency.json" for ds in TRAIN_DATASETS]


def train_medmix_predictions():
    """MedMIX's full-protocol predictions of the trained datasets (the fusion-weights figure)."""
    files = []
    for ds in TRAIN_DATASETS:
        run = dataset_paths(config, ds).run_dir("full", "medmix")
        files += [
            str(run / f"seed{s}" / "predictions.parquet") for s in config["seeds"]
        ]
    return files


def paper_table_files():
    return [
        f"{RESULTS}/tables/{t}.{ext}" for t in PAPER["tables"] for ext in TABLE_FORMATS
    ]


def paper_figure_files():
    return [
        f"{RESULTS}/figures/{f}.{ext}"
        for f in PAPER["figures"]
        for ext in FIGURE_FORMATS
    ]


def paper_outputs_flagged():
    """The paper rule's outputs: HTML tables (the report shows them inline; Markdown would
    only be offered as a download) and PNG figures go into the report."""
    out = []
    for t in PAPER["tables"]:
        cap = f"../report/{output_entry(t, TABLE).caption}"
        page = report(
            f"{RESULTS}/tables/{t}.html",
            caption=cap,
            category="Tables",
            subcategory="Paper",
        )
        out.append(page)
        out += [f"{RESULTS}/tables/{t}.{ext}" for ext in TABLE_FORMATS if ext != "html"]
    for f in PAPER["figures"]:
        cap = f"../report/{output_entry(f, FIGURE).caption}"
        png = report(
            f"{RESULTS}/figures/{f}.png",
            caption=cap,
            category="Figures",
            subcategory="Paper",
        )
        out.append(png)
        out += [
            f"{RESULTS}/figures/{f}.{ext}" for ext in FIGURE_FORMATS if ext != "png"
        ]
    return out


def paper_targets():
    """Everything the paper grid produces: Table 1 + its figures and every paper output."""
    return final_outputs() + paper_table_files() + paper_figure_files()
