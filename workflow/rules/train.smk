# Caches -> one training job per (dataset, method, protocol), all seeds in one process.
# A method reads its modalities' expert caches; teacher caches (results/{dataset}/teachers/)
# are inputs too when it distils (MedMIX with fusion.lambda_kd > 0) or reads the large models
# (adacomed, <modality>-large). OneLLM without its weights reads nothing and is marked
# unavailable in its summary.json.
#
# With fusion.select on, the hyper-parameters of a neural method (not linear-probe, not a
# *-large row, not one that cannot run here) are first chosen on the validation split, once
# per (dataset, method), on the full-protocol data (rule select_fusion); every train job of
# that method, under any protocol, reads the chosen values (its `selection` input).

from medmix.config import select_methods, with_select


rule select_fusion:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        caches=train_inputs,
    output:
        json=f"{RESULTS}/{{dataset}}/selection/{{method}}.json",
    log:
        f"{LOGS}/{{dataset}}/select/{{method}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/select/{{method}}.tsv"
    conda:
        "../../envs/fusion.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        # the train slice plus fusion.select (the grid)
        config_slice=lambda wc: inline_json(
            with_select(train_slice(wc.dataset), config)
        ),
        cfg=lambda wc, output: slice_file(with_select(train_slice(wc.dataset), config)),
    shell:
        "python -m fusion select --config {params.cfg} --dataset {wildcards.dataset}"
        " --method {wildcards.method} --out {output.json} --threads {threads} > {log} 2>&1"


rule train:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        caches=train_inputs,
        selection=lambda wc: [
            str(dataset_paths(config, wc.dataset).selection(m))
            for m in select_methods(config, wc.dataset)
            if m == wc.method and not method_inputs(config, wc.dataset, m).unavailable
        ],
    output:
        summary=f"{RESULTS}/{{dataset}}/runs/{{protocol}}/{{method}}/summary.json",
    log:
        f"{LOGS}/{{dataset}}/train/{{protocol}}/{{method}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/train/{{protocol}}/{{method}}.tsv"
    wildcard_constraints:
        # a protocol setting only: runs/ablation/ and runs/external-*/ are other rules'
        protocol=SETTING_REGEX,
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
        selection=lambda wc, input: (
            f" --selection {input.selection}" if input.selection else ""
        ),
    shell:
        "python -m fusion train --config {params.cfg} --dataset {wildcards.dataset}"
        " --method {wildcards.method} --protocol {wildcards.protocol}"
        " --out {params.out} --threads {threads}{params.selection} > {log} 2>&1"
