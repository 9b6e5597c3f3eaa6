# The RAG expert (paper App. B, DESIGN §4): knowledge index and projection (once, shared by all
# datasets) -> bridge (dataset, modality) -> rag embedding (dataset, modality) + provenance.
# Rerun one: snakemake results/demo-openi/embeddings/report/rag.parquet -f

from extractors.rag.expert import rag_config

RAG = rag_config({k: v for k, v in config.get("rag", {}).items() if k != "device"})
RAG_DEVICE = str(config.get("rag", {}).get("device", "cpu"))  # "auto" is resolved on the node
KB = RAG["knowledge"]["name"]
KB_DIR = f"{RESULTS}/knowledge/{KB}"
GENERATIVE_BRIDGES = ("maira2", "merlin", "histgen")

# embeddings/{modality}/rag.parquet is this family's output, not the generic extract rule's.
ruleorder: rag > extract


def rag_slice(*keys, dataset=None):
    """The rag settings a rule depends on, as inline JSON (edits elsewhere do not rerun it)."""
    rag = config.get("rag", {})
    out = {"results": RESULTS, "rag": {k: rag[k] for k in keys if k in rag}}
    if dataset is not None:
        out["datasets"] = {dataset: config["datasets"][dataset]}
        out["extraction"] = config.get("extraction", {})
    return inline_json(out)


def rag_bridge_spec(dataset, modality):
    """The bridge pinned by name (rag.bridges.<modality>), else the nearest-report bridge whose
    image_expert is configured for this modality, else None (decided from the manifest's kind)."""
    bridges = RAG["bridges"]
    if modality in bridges:
        return bridges[modality]
    experts = config["datasets"][dataset]["modalities"][modality]
    for spec in bridges.values():
        if spec.get("type") == "nearest-report" and spec.get("image_expert") in experts:
            return spec
    return None


def rag_bridge_inputs(wc):
    inputs = {"manifest": f"{RESULTS}/{wc.dataset}/manifest.parquet"}
    spec = rag_bridge_spec(wc.dataset, wc.modality)
    if spec is not None and spec.get("type") == "nearest-report":
        expert = spec.get("image_expert")
        if not expert:
            raise ValueError(f"rag.bridges.{wc.modality}: nearest-report needs image_expert")
        inputs["image_cache"] = f"{RESULTS}/{wc.dataset}/embeddings/{wc.modality}/{expert}.parquet"
    return inputs


def rag_bridge_gpu(wc):
    if not RAG_DEVICE.startswith(("cuda", "auto")):
        return 0
    spec = rag_bridge_spec(wc.dataset, wc.modality)
    if spec is not None:
        return int(spec.get("type") in GENERATIVE_BRIDGES)
    return int(any(s.get("type") in GENERATIVE_BRIDGES for s in RAG["bridges"].values()))


def rag_gpu(wc=None):
    return int(RAG_DEVICE.startswith(("cuda", "auto")))


rule knowledge_index:
    input:
        [RAG["knowledge"]["source"]] if os.path.isfile(RAG["knowledge"]["source"]) else [],
    output:
        index=f"{KB_DIR}/index.faiss",
        docs=f"{KB_DIR}/docs.parquet",
        meta=f"{KB_DIR}/index.json",
    params:
        cfg=rag_slice("knowledge", "article_encoder", "index", "device"),
        out=KB_DIR,
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
    params:
        cfg=rag_slice("knowledge", "llm", "projection", "device"),
        index_dir=KB_DIR,
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
    shell:
        "python -m extractors.rag project --config {params.cfg} --index-dir {params.index_dir}"
        " --out {output.projection} > {log} 2>&1"


rule bridge:
    input:
        unpack(rag_bridge_inputs),
    output:
        bridge=f"{RESULTS}/{{dataset}}/bridge/{{modality}}.parquet",
    params:
        cfg=lambda wc: rag_slice("bridges", "device", dataset=wc.dataset),
        image_cache=lambda wc, input: f"--image-cache {input.image_cache}" if "image_cache" in input.keys() else "",
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
    params:
        cfg=lambda wc: rag_slice("knowledge", "k", "query_encoder", "llm", "device", "batch_size", "shard_size", dataset=wc.dataset),
        index_dir=KB_DIR,
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
    shell:
        "python -m extractors.rag embed --config {params.cfg} --dataset {wildcards.dataset}"
        " --modality {wildcards.modality} --bridge {input.bridge} --index-dir {params.index_dir}"
        " --projection {input.projection} --out {output.cache} --provenance {output.provenance}"
        " > {log} 2>&1"
