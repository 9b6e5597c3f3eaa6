# Raw cohort -> manifest (DESIGN §3.1). The demo adapter generates a synthetic cohort.


rule demo_cohort:
    output:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
    params:
        spec=lambda wc: config["datasets"][wc.dataset]["demo"],
        out=lambda wc, output: os.path.dirname(output.manifest),
    log:
        f"{LOGS}/{{dataset}}/demo_cohort.log",
    benchmark:
        f"{BENCH}/{{dataset}}/demo_cohort.tsv"
    conda:
        "../../envs/cohorts.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m cohorts demo --kind {params.spec[kind]} --dataset {wildcards.dataset}"
        " --n-patients {params.spec[n_patients]} --seed {params.spec[seed]}"
        " --shift {params.spec[shift]} --out {params.out} > {log} 2>&1"
