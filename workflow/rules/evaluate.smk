# Runs -> one long metrics table per dataset: the main grid (full protocol, every method), the
# protocol settings, the ablations and the external evaluations of the config (paper.smk).


rule evaluate:
    input:
        summaries=lambda wc: all_run_inputs(wc.dataset),
    output:
        metrics=f"{RESULTS}/{{dataset}}/metrics.parquet",
    log:
        f"{LOGS}/{{dataset}}/evaluate.log",
    benchmark:
        f"{BENCH}/{{dataset}}/evaluate.tsv"
    conda:
        "../../envs/fusion.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        config_slice=lambda wc: inline_json(dataset_slice(config, wc.dataset)),
        cfg=lambda wc, output: slice_file(dataset_slice(config, wc.dataset)),
    shell:
        "python -m fusion evaluate --config {params.cfg} --dataset {wildcards.dataset}"
        " --out {output.metrics} > {log} 2>&1"
