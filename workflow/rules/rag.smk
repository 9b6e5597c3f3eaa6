# The RAG expert (paper App. B): knowledge index and projection (once, shared by all
# datasets) -> bridge (dataset, modality) -> rag embedding (dataset, modality) + provenance.
# Rerun one: snakemake results/demo-openi/embeddings/report/rag.parquet -f


rule knowledge_index:
    input:
        [RAG["knowledge"]["source"]]
        if os.path.isfile(RAG["knowledge"]["source"])
        else [],
    output:
        index=f"{KB_DIR}/index.faiss",
        docs=f"{KB_DIR}/docs.parquet",
        meta=f"{KB_DIR}/index.json",
    log:
        f"{LOGS}/knowledge/{KB}/index.log",
    benchmark:
        f"{BENCH}/knowledge/{KB}/index.tsv"
    conda:
        "../../envs/rag.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=rag_gpu(),
    params:
        config_slice=inline_json(
            rag_slice("knowledge", "article_encoder", "index", "device")
        ),
        cfg=lambda wc, output: slice_file(
            rag_slice("knowledge", "article_encoder", "index", "device")
        ),
        out=lambda wc, output: os.path.dirname(output.index),
    shell:
        "python -m extractors.rag index --config {params.cfg} --out-dir {params.out}"
        " --threads {threads} > {log} 2>&1"


rule rag_projection:
    input:
        index=f"{KB_DIR}/index.faiss",
        docs=f"{KB_DIR}/docs.parquet",
        meta=f"{KB_DIR}/index.json",
    output:
        projection=f"{KB_DIR}/projection.safetensors",
    log:
        f"{LOGS}/knowledge/{KB}/projection.log",
    benchmark:
        f"{BENCH}/knowledge/{KB}/projection.tsv"
    conda:
        "../../envs/rag.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=rag_gpu(),
    params:
        config_slice=inline_json(rag_slice("knowledge", "llm", "projection", "device")),
        cfg=lambda wc, output: slice_file(
            rag_slice("knowledge", "llm", "projection", "device")
        ),
        index_dir=lambda wc, input: os.path.dirname(input.index),
    shell:
        "python -m extractors.rag project --config {params.cfg} --index-dir {params.index_dir}"
        " --out {output.projection} > {log} 2>&1"


rule bridge:
    input:
        unpack(rag_bridge_inputs),
    output:
        bridge=f"{RESULTS}/{{dataset}}/bridge/{{modality}}.parquet",
    log:
        f"{LOGS}/{{dataset}}/bridge/{{modality}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/bridge/{{modality}}.tsv"
    conda:
        "../../envs/rag.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=rag_bridge_gpu,
    params:
        config_slice=lambda wc: inline_json(
            rag_slice("bridges", "device", dataset=wc.dataset)
        ),
        cfg=lambda wc, output: slice_file(
            rag_slice("bridges", "device", dataset=wc.dataset)
        ),
        image_cache=rag_bridge_image_args,
    shell:
        "python -m extractors.rag bridge --config {params.cfg} --dataset {wildcards.dataset}"
        " --modality {wildcards.modality} --manifest {input.manifest} {params.image_cache}"
        " --out {output.bridge} > {log} 2>&1"


rule rag:
    input:
        bridge=f"{RESULTS}/{{dataset}}/bridge/{{modality}}.parquet",
        index=f"{KB_DIR}/index.faiss",
        docs=f"{KB_DIR}/docs.parquet",
        meta=f"{KB_DIR}/index.json",
        projection=f"{KB_DIR}/projection.safetensors",
    output:
        cache=f"{RESULTS}/{{dataset}}/embeddings/{{modality}}/rag.parquet",
        provenance=f"{RESULTS}/{{dataset}}/embeddings/{{modality}}/rag.provenance.parquet",
    log:
        f"{LOGS}/{{dataset}}/rag/{{modality}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/rag/{{modality}}.tsv"
    conda:
        "../../envs/rag.yaml"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=rag_gpu,
    params:
        config_slice=lambda wc: inline_json(rag_embed_slice(wc.dataset)),
        cfg=lambda wc, output: slice_file(rag_embed_slice(wc.dataset)),
        index_dir=lambda wc, input: os.path.dirname(input.index),
    shell:
        "python -m extractors.rag embed --config {params.cfg} --dataset {wildcards.dataset}"
        " --modality {wildcards.modality} --bridge {input.bridge} --index-dir {params.index_dir}"
        " --projection {input.projection} --out {output.cache} --provenance {output.provenance}"
        " > {log} 2>&1"
