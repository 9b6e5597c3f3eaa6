# Manifest -> one embedding cache per (dataset, modality, expert) (DESIGN §3.2).
# Rerun one expert: snakemake results/demo-openi/embeddings/frontal/dinov2-tiny.parquet -f


rule extract:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        fit=fit_manifest_input,  # external-validation target: its source's manifest
    output:
        cache=f"{RESULTS}/{{dataset}}/embeddings/{{modality}}/{{expert}}.parquet",
    params:
        cfg=lambda wc: inline_json(extract_slice(config, wc.dataset, wc.modality)),
        fit=fit_manifest_arg,
    log:
        f"{LOGS}/{{dataset}}/extract/{{modality}}/{{expert}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/extract/{{modality}}/{{expert}}.tsv"
    conda:
        extract_env
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=lambda wc: expert_needs_gpu(wc.expert),
    shell:
        "python -m extractors extract --config {params.cfg} --dataset {wildcards.dataset}"
        " --modality {wildcards.modality} --expert {wildcards.expert}"
        " --out {output.cache} {params.fit} > {log} 2>&1"
