# The paper grid beyond Table 1: missing-modality protocols, ablations, external
# validation, efficiency, and the `paper_tables` target. Needs paper.smk (helpers).
#
# Train-time protocol settings (train_drop_one-*, train_random-*, mnar-*, ...) are ordinary
# runs of the `train` rule: runs/{setting}/{method}/summary.json, one job per
# (dataset, method, setting) running all seeds. Test-only settings leave the trained model
# unchanged, so one `test_protocols` job per (dataset, method) evaluates the full run's
# checkpoints under all of them.


rule test_protocols:
    input:
        full=f"{RESULTS}/{{dataset}}/runs/full/{{method}}/summary.json",
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        caches=train_inputs,
    output:
        done=f"{RESULTS}/{{dataset}}/test_time/{{method}}.json",
    log:
        f"{LOGS}/{{dataset}}/test_protocols/{{method}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/test_protocols/{{method}}.tsv"
    conda:
        "../../envs/fusion.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        config_slice=lambda wc: inline_json(paper_slice(wc.dataset)),
        cfg=lambda wc, output: slice_file(paper_slice(wc.dataset)),
        settings=lambda wc: " ".join(test_protocol_settings(wc.dataset)),
        settings_file=lambda wc, output: args_file(test_protocol_settings(wc.dataset)),
    shell:
        "python -m fusion.protocols test --config {params.cfg} --dataset {wildcards.dataset}"
        " --method {wildcards.method} --settings $(cat {params.settings_file})"
        " --done {output.done}"
        " --threads {threads} > {log} 2>&1"


rule ablation:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        caches=dataset_caches,
    output:
        summary=f"{RESULTS}/{{dataset}}/runs/ablation/{{variant}}/summary.json",
    log:
        f"{LOGS}/{{dataset}}/ablation/{{variant}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/ablation/{{variant}}.tsv"
    wildcard_constraints:
        variant="[a-z0-9_]+",
    conda:
        "../../envs/fusion.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        config_slice=lambda wc: inline_json(paper_slice(wc.dataset, "ablations")),
        cfg=lambda wc, output: slice_file(paper_slice(wc.dataset, "ablations")),
        out=lambda wc, output: os.path.dirname(output.summary),
    shell:
        "python -m fusion ablation train --config {params.cfg} --dataset {wildcards.dataset}"
        " --variant {wildcards.variant} --out {params.out} --threads {threads} > {log} 2>&1"


rule external_eval:
    input:
        full=f"{RESULTS}/{{dataset}}/runs/full/{{method}}/summary.json",
        manifest=f"{RESULTS}/{{target}}/manifest.parquet",
        caches=external_target_caches,
    output:
        summary=f"{RESULTS}/{{dataset}}/runs/external-{{target}}/{{method}}/summary.json",
    log:
        f"{LOGS}/{{dataset}}/external/{{target}}/{{method}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/external/{{target}}/{{method}}.tsv"
    wildcard_constraints:
        target="[a-z0-9][a-z0-9_-]*",
    conda:
        "../../envs/fusion.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config_slice=lambda wc: inline_json(
            paper_slice(wc.dataset, datasets=(wc.target,))
        ),
        cfg=lambda wc, output: slice_file(
            paper_slice(wc.dataset, datasets=(wc.target,))
        ),
        out=lambda wc, output: os.path.dirname(output.summary),
    shell:
        "python -m fusion external --config {params.cfg} --source {wildcards.dataset}"
        " --target {wildcards.target} --method {wildcards.method} --out {params.out}"
        " --threads {threads} > {log} 2>&1"


rule efficiency:
    input:
        runs=efficiency_inputs,
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        caches=dataset_caches,
    output:
        json=f"{RESULTS}/{{dataset}}/efficiency.json",
    log:
        f"{LOGS}/{{dataset}}/efficiency.log",
    benchmark:
        f"{BENCH}/{{dataset}}/efficiency.tsv"
    conda:
        "../../envs/extract.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=int(efficiency_device().startswith("cuda")),
    params:
        config_slice=lambda wc: inline_json(paper_slice(wc.dataset)),
        cfg=lambda wc, output: slice_file(paper_slice(wc.dataset)),
        methods=lambda wc: " ".join(runnable(wc.dataset, efficiency_methods(config))),
        device=efficiency_device(),
    shell:
        "python -m fusion.efficiency --config {params.cfg} --dataset {wildcards.dataset}"
        " --methods {params.methods} --device {params.device} --out {output.json}"
        " --threads {threads} > {log} 2>&1"


rule paper_tables:
    input:
        metrics=expand(f"{RESULTS}/{{dataset}}/metrics.parquet", dataset=TRAIN_DATASETS),
        efficiency=efficiency_files(),
        main=final_outputs(),
    output:
        paper_outputs_flagged(),
    log:
        f"{LOGS}/paper_tables.log",
    benchmark:
        f"{BENCH}/paper_tables.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config_slice=inline_json(config),
        cfg=lambda wc, output: slice_file(config),
        tables=lambda wc, output: os.path.dirname(output[0]),
        figures=lambda wc, output: os.path.join(
            os.path.dirname(os.path.dirname(output[0])), "figures"
        ),
    shell:
        "python -m fusion.render paper --config {params.cfg} --tables-dir {params.tables}"
        " --figures-dir {params.figures} > {log} 2>&1"
