# Manifest -> one teacher cache per (dataset, modality): the large model of
# the modality, named by the dataset's `teachers: {modality: expert}`. MedMIX distils from it
# (training only); AdaCoMed and the <modality>-large references read it as an input.
# Same entry point and cache format as the experts (rule extract).
# Rerun one teacher: snakemake results/demo-openi/teachers/report.parquet -f


rule extract_teacher:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.parquet",
        fit=fit_manifest_input,  # external-validation target: its source's manifest
    output:
        cache=f"{RESULTS}/{{dataset}}/teachers/{{modality}}.parquet",
    log:
        f"{LOGS}/{{dataset}}/extract_teacher/{{modality}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/extract_teacher/{{modality}}.tsv"
    conda:
        teacher_env
    threads: 1
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=lambda wc: expert_needs_gpu(teacher_expert(wc.dataset, wc.modality)),
    params:
        config_slice=lambda wc: inline_json(teacher_slice(wc.dataset, wc.modality)),
        cfg=lambda wc, output: slice_file(teacher_slice(wc.dataset, wc.modality)),
        expert=lambda wc: teacher_expert(wc.dataset, wc.modality),
        fit=fit_manifest_arg,
    shell:
        "python -m extractors extract --config {params.cfg} --dataset {wildcards.dataset}"
        " --modality {wildcards.modality} --expert {params.expert}"
        " --out {output.cache} {params.fit} > {log} 2>&1"
