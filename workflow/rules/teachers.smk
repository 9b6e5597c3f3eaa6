# Manifest -> one teacher cache per (dataset, modality) (DESIGN §3.2, §4): the large model of
# the modality, named by the dataset's `teachers: {modality: expert}`. MedMIX distils from it
# (training only); AdaCoMed and the <modality>-large references read it as an input.
# Same entry point and cache format as the experts (rule extract).
# Rerun one teacher: snakemake results/demo-openi/teachers/report.parquet -f


def teacher_expert(dataset, modality):
    teachers = config["datasets"][dataset].get("teachers") or {}
    if modality not in teachers:
        raise ValueError(
            f"dataset {dataset}: no teacher for modality {modality!r} (datasets.{dataset}.teachers)"
        )
    return teachers[modality]


def teacher_slice(dataset, modality):
    """The config one teacher extraction depends on: the modality and its teacher preset."""
    name = teacher_expert(dataset, modality)
    dcfg = dict(config["datasets"][dataset])
    dcfg["modalities"] = {modality: [name]}
    dcfg["teachers"] = {modality: name}
    keep = {k: config[k] for k in ("results", "extraction") if k in config}
    return {**keep, "datasets": {dataset: dcfg}, "experts": expert_closure(config, name)}


def teacher_env(wildcards):
    """The teacher expert's own conda env where it needs one (EXPERT_ENVS), else extract.yaml."""
    name = teacher_expert(wildcards.dataset, wildcards.modality)
    for spec in expert_closure(config, name).values():
        if spec.get("type") in EXPERT_ENVS:
            return os.path.join(workflow.basedir, EXPERT_ENVS[spec["type"]])
    return os.path.join(workflow.basedir, "envs/extract.yaml")


rule extract_teacher:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
    output:
        cache=f"{RESULTS}/{{dataset}}/teachers/{{modality}}.parquet",
    params:
        cfg=lambda wc: inline_json(teacher_slice(wc.dataset, wc.modality)),
        expert=lambda wc: teacher_expert(wc.dataset, wc.modality),
    log:
        f"{LOGS}/{{dataset}}/extract_teacher/{{modality}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/extract_teacher/{{modality}}.tsv"
    conda:
        teacher_env
    threads: 1
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=lambda wc: expert_needs_gpu(teacher_expert(wc.dataset, wc.modality)),
    shell:
        "python -m extractors extract --config {params.cfg} --dataset {wildcards.dataset}"
        " --modality {wildcards.modality} --expert {params.expert}"
        " --out {output.cache} > {log} 2>&1"
