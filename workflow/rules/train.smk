# Caches -> one training job per (dataset, method, protocol), all seeds in one process.
# A method reads its modalities' expert caches; teacher caches (results/{dataset}/teachers/)
# are inputs too when it distils (MedMIX with fusion.lambda_kd > 0) or reads the large models
# (adacomed, <modality>-large). OneLLM without its weights reads nothing and is marked
# unavailable in its summary.json.


rule train:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        caches=train_inputs,
    output:
        summary=f"{RESULTS}/{{dataset}}/runs/{{protocol}}/{{method}}/summary.json",
    log:
        f"{LOGS}/{{dataset}}/train/{{protocol}}/{{method}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/train/{{protocol}}/{{method}}.tsv"
    conda:
        "../../envs/fusion.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        config_slice=lambda wc: inline_json(train_slice(wc.dataset)),
        cfg=lambda wc, output: slice_file(train_slice(wc.dataset)),
        out=lambda wc, output: os.path.dirname(output.summary),
    shell:
        "python -m fusion train --config {params.cfg} --dataset {wildcards.dataset}"
        " --method {wildcards.method} --protocol {wildcards.protocol}"
        " --out {params.out} --threads {threads} > {log} 2>&1"
