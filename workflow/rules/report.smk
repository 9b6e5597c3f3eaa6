# Metrics -> Table 1 and its figures (the paper's other tables and figures: `paper_tables` in
# protocols.smk); `snakemake --report results/report.html` gathers them with their captions.
# Tables go into the report as HTML (shown inline), figures as PNG; every table is also
# written as Markdown, CSV and LaTeX, every figure as SVG and PDF, with its provenance (data,
# experts) in the sidecar <figure>.txt.


rule tables:
    input:
        metrics=expand(f"{RESULTS}/{{dataset}}/metrics.parquet", dataset=TRAIN_DATASETS),
    output:
        # the report shows HTML inline (Markdown would only be offered as a download)
        html=report(
            f"{RESULTS}/tables/main.html",
            caption="../report/main_table.rst",
            category="Tables",
        ),
        md=f"{RESULTS}/tables/main.md",
        csv=f"{RESULTS}/tables/main.csv",
        tex=f"{RESULTS}/tables/main.tex",
    log:
        f"{LOGS}/tables.log",
    benchmark:
        f"{BENCH}/tables.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        header=shlex.quote(table_header()),
        header_file=lambda wc, output: text_file(table_header()),
        out_dir=lambda wc, output: os.path.dirname(output.html),
    shell:
        "python -m fusion.render tables --metrics {input.metrics} --out-dir {params.out_dir}"
        ' --header "$(cat {params.header_file})" > {log} 2>&1'


rule figures:
    input:
        metrics=expand(f"{RESULTS}/{{dataset}}/metrics.parquet", dataset=TRAIN_DATASETS),
    output:
        auroc=report(
            f"{RESULTS}/figures/main_auroc.png",
            caption="../report/main_auroc.rst",
            category="Figures",
        ),
        auroc_svg=f"{RESULTS}/figures/main_auroc.svg",
        auroc_pdf=f"{RESULTS}/figures/main_auroc.pdf",
        auroc_about=f"{RESULTS}/figures/main_auroc.txt",
        weights=report(
            f"{RESULTS}/figures/fusion_weights.png",
            caption="../report/fusion_weights.rst",
            category="Figures",
        ),
        weights_svg=f"{RESULTS}/figures/fusion_weights.svg",
        weights_pdf=f"{RESULTS}/figures/fusion_weights.pdf",
        weights_about=f"{RESULTS}/figures/fusion_weights.txt",
    log:
        f"{LOGS}/figures.log",
    benchmark:
        f"{BENCH}/figures.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        header=shlex.quote(table_header()),
        header_file=lambda wc, output: text_file(table_header()),
        predictions=lambda wc: train_medmix_predictions(),
        predictions_file=lambda wc, output: args_file(train_medmix_predictions()),
        out_dir=lambda wc, output: os.path.dirname(output.auroc),
    shell:
        "python -m fusion.render figures --metrics {input.metrics} --out-dir {params.out_dir}"
        " --predictions $(cat {params.predictions_file})"
        ' --header "$(cat {params.header_file})" > {log} 2>&1'
