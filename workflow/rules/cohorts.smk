# Raw cohort -> manifest. The demo adapter generates a synthetic cohort.


rule demo_cohort:
    output:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
    log:
        f"{LOGS}/{{dataset}}/demo_cohort.log",
    benchmark:
        f"{BENCH}/{{dataset}}/demo_cohort.tsv"
    wildcard_constraints:
        dataset=one_of(DEMO_DATASETS),
    conda:
        "../../envs/cohorts.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        spec=lambda wc: config["datasets"][wc.dataset]["demo"],
        evidence=lambda wc: config["datasets"][wc.dataset]["demo"].get(
            "evidence", "additive"
        ),
        out=lambda wc, output: os.path.dirname(output.manifest),
    shell:
        "python -m cohorts demo --kind {params.spec[kind]} --dataset {wildcards.dataset}"
        " --n-patients {params.spec[n_patients]} --seed {params.spec[seed]}"
        " --shift {params.spec[shift]} --evidence {params.evidence} --out {params.out} > {log} 2>&1"


rule adapter_cohort:
    input:
        unpack(adapter_files),
    output:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        summary=report(
            f"{RESULTS}/{{dataset}}/summary.md",
            caption="../report/cohort_summary.rst",
            category="Cohorts",
            labels={"dataset": "{dataset}"},
        ),
        summary_csv=f"{RESULTS}/{{dataset}}/summary.csv",
    log:
        f"{LOGS}/{{dataset}}/adapter_cohort.log",
    benchmark:
        f"{BENCH}/{{dataset}}/adapter_cohort.tsv"
    wildcard_constraints:
        dataset=one_of(ADAPTER_DATASETS),
    conda:
        "../../envs/cohorts.yaml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        adapter=lambda wc: config["datasets"][wc.dataset]["adapter"],
        args=lambda wc: adapter_args(wc.dataset),
        out=lambda wc, output: os.path.dirname(output.manifest),
    shell:
        "python -m cohorts {params.adapter} --dataset {wildcards.dataset} {params.args}"
        " --out {params.out} > {log} 2>&1"
