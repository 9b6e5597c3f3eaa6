# Manifest -> one embedding cache per (dataset, modality, expert).
# Rerun one expert: snakemake results/demo-openi/embeddings/frontal/dinov2-tiny.parquet -f


rule extract:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        fit=fit_manifest_input,  # external-validation target: its source's manifest
    output:
        cache=f"{RESULTS}/{{dataset}}/embeddings/{{modality}}/{{expert}}.parquet",
    log:
        f"{LOGS}/{{dataset}}/extract/{{modality}}/{{expert}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/extract/{{modality}}/{{expert}}.tsv"
    wildcard_constraints:
        # the registry's experts; the RAG branch's caches are the rag rule's (rag.smk)
        expert=one_of(EXTRACTED_EXPERTS),
    conda:
        extract_env
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=lambda wc: expert_needs_gpu(wc.expert),
    params:
        config_slice=lambda wc: inline_json(
            extract_slice(config, wc.dataset, wc.modality)
        ),
        cfg=lambda wc, output: slice_file(
            extract_slice(config, wc.dataset, wc.modality)
        ),
        fit=fit_manifest_arg,
    shell:
        "python -m extractors extract --config {params.cfg} --dataset {wildcards.dataset}"
        " --modality {wildcards.modality} --expert {wildcards.expert}"
        " --out {output.cache} {params.fit} > {log} 2>&1"


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
