# Manifest -> one embedding cache per (dataset, modality, expert).
# Rerun one expert: snakemake results/demo-openi/embeddings/frontal/dinov2-tiny.parquet -f
#
# With `extraction.shards: N > 1` (or `shards_by_expert`) a cache is built by N extract_shard
# jobs, each embedding a contiguous block of the manifest into a part file, and one
# extract_gather job, which assembles the usual cache (byte-identical to rule extract's) and
# judges max_failed_fraction on it. The parts stay (a hidden folder beside the cache), so a
# gather can rerun (a new max_failed_fraction) without extracting again; deleting them reruns
# nothing while the cache is up to date. A failed or killed shard job reruns alone (plus the
# gather). docs/cluster.md explains it.

from medmix.extract_shards import (
    cache_parts,
    check_shard_settings,
    extract_job_slice,
    part_path,
    shard_count,
    shard_job_slice,
)

check_shard_settings(config)
SHARDED_EXPERTS = [e for e in EXTRACTED_EXPERTS if shard_count(config, e) > 1]
UNSHARDED_EXPERTS = [e for e in EXTRACTED_EXPERTS if e not in SHARDED_EXPERTS]
CACHE = f"{RESULTS}/{{dataset}}/embeddings/{{modality}}/{{expert}}.parquet"


rule extract:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        fit=fit_manifest_input,  # external-validation target: its source's manifest
    output:
        cache=CACHE,
    log:
        f"{LOGS}/{{dataset}}/extract/{{modality}}/{{expert}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/extract/{{modality}}/{{expert}}.tsv"
    wildcard_constraints:
        # the registry's experts; the RAG branch's caches are the rag rule's (rag.smk); a
        # sharded expert's caches are extract_gather's
        expert=one_of(UNSHARDED_EXPERTS),
    conda:
        extract_env
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=lambda wc: expert_needs_gpu(wc.expert),
    params:
        config_slice=lambda wc: inline_json(
            extract_job_slice(config, wc.dataset, wc.modality)
        ),
        cfg=lambda wc, output: slice_file(
            extract_job_slice(config, wc.dataset, wc.modality)
        ),
        fit=fit_manifest_arg,
    shell:
        "python -m extractors extract --config {params.cfg} --dataset {wildcards.dataset}"
        " --modality {wildcards.modality} --expert {wildcards.expert}"
        " --out {output.cache} {params.fit} > {log} 2>&1"


# One part of a sharded cache: the same job as rule extract, on part {part} of {parts}.
rule extract_shard:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        fit=fit_manifest_input,
    output:
        part=part_path(CACHE, "{part}", "{parts}"),
    log:
        f"{LOGS}/{{dataset}}/extract/{{modality}}/{{expert}}.{{part}}-of-{{parts}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/extract/{{modality}}/{{expert}}.{{part}}-of-{{parts}}.tsv"
    wildcard_constraints:
        expert=one_of(SHARDED_EXPERTS),
        part="[1-9][0-9]*",
        parts="[1-9][0-9]*",
    conda:
        extract_env
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=lambda wc: expert_needs_gpu(wc.expert),
    params:
        config_slice=lambda wc: inline_json(
            shard_job_slice(config, wc.dataset, wc.modality)
        ),
        cfg=lambda wc, output: slice_file(
            shard_job_slice(config, wc.dataset, wc.modality)
        ),
        fit=fit_manifest_arg,
    shell:
        "python -m extractors extract --config {params.cfg} --dataset {wildcards.dataset}"
        " --modality {wildcards.modality} --expert {wildcards.expert}"
        " --shard {wildcards.part}/{wildcards.parts} --out {output.part} {params.fit}"
        " > {log} 2>&1"


# The parts of a sharded cache -> the cache (checked: all present, one plan, this manifest).
rule extract_gather:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        parts=lambda wc: cache_parts(config, wc.dataset, wc.modality, wc.expert),
    output:
        cache=CACHE,
    log:
        f"{LOGS}/{{dataset}}/extract/{{modality}}/{{expert}}.gather.log",
    benchmark:
        f"{BENCH}/{{dataset}}/extract/{{modality}}/{{expert}}.gather.tsv"
    wildcard_constraints:
        expert=one_of(SHARDED_EXPERTS),
    conda:
        extract_env
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config_slice=lambda wc: inline_json(
            extract_job_slice(config, wc.dataset, wc.modality)
        ),
        cfg=lambda wc, output: slice_file(
            extract_job_slice(config, wc.dataset, wc.modality)
        ),
        parts=lambda wc, input: args_file(input.parts),
    shell:
        "python -m extractors gather --config {params.cfg} --dataset {wildcards.dataset}"
        " --modality {wildcards.modality} --expert {wildcards.expert}"
        " --parts $(cat {params.parts}) --out {output.cache} > {log} 2>&1"


# Expert and teacher caches -> one table of ok / missing / failed samples per cache, one
# section per dataset (failures are counted in the run's summary table). The caches
# are those the configured runs read (medmix.plan.run_caches).

from medmix.plan import run_caches

SAMPLE_STATUS = [
    f"{RESULTS}/tables/sample_status.{ext}" for ext in ("md", "csv", "html")
]


rule sample_status:
    input:
        caches=lambda wc: run_caches(config, "expert"),
        teachers=lambda wc: run_caches(config, "teacher"),
    output:
        md=SAMPLE_STATUS[0],
        csv=SAMPLE_STATUS[1],
        html=report(
            SAMPLE_STATUS[2],
            caption="../report/sample_status.rst",
            category="Tables",
        ),
    log:
        f"{LOGS}/sample_status.log",
    benchmark:
        f"{BENCH}/sample_status.tsv"
    conda:
        "../../envs/extract.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        caches=lambda wc, input: args_file(input.caches),
        teachers=lambda wc, input: args_file(input.teachers),
    shell:
        "python -m extractors.status --caches $(cat {params.caches})"
        " --teachers $(cat {params.teachers})"
        " --md {output.md} --csv {output.csv} --html {output.html} > {log} 2>&1"
