# Helpers of the RAG rules (rag.smk): settings slices, bridge inputs, GPU requests.
from medmix.config import section
from medmix.extract_shards import without_shard_settings
from medmix.rag_settings import GENERATIVE_BRIDGES, rag_config

RAG = rag_config({k: v for k, v in section(config, "rag").items() if k != "device"})
RAG_DEVICE = str(
    section(config, "rag").get("device", "cpu")
)  # "auto" is resolved on the node
KB = RAG["knowledge"]["name"]
KB_DIR = f"{RESULTS}/knowledge/{KB}"


def rag_slice(*keys, dataset=None):
    """The rag settings a rule depends on (edits elsewhere do not rerun it)."""
    rag = section(config, "rag")
    out = {"results": RESULTS, "rag": {k: rag[k] for k in keys if k in rag}}
    if dataset is not None:
        dcfg = config["datasets"][dataset]  # teachers are not the rag branch's business
        out["datasets"] = {dataset: {k: v for k, v in dcfg.items() if k != "teachers"}}
        out["extraction"] = section(config, "extraction")
    return without_shard_settings(out)


def rag_embed_slice(dataset):
    """The settings of one rag embedding job (rule rag)."""
    keys = (
        "knowledge",
        "k",
        "query_encoder",
        "llm",
        "device",
        "batch_size",
        "shard_size",
    )
    return rag_slice(*keys, dataset=dataset)


def rag_bridge_spec(dataset, modality):
    """The bridge pinned by name (rag.bridges.<modality>), else the nearest-report bridge whose
    image_expert is configured for this modality, else None (decided from the manifest's kind).
    """
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
            raise ValueError(
                f"rag.bridges.{wc.modality}: nearest-report needs image_expert"
            )
        inputs["image_cache"] = (
            f"{RESULTS}/{wc.dataset}/embeddings/{wc.modality}/{expert}.parquet"
        )
        src = fit_source(wc.dataset)
        if src:  # an external target takes its reports from the source's training split
            inputs["fit_manifest"] = f"{RESULTS}/{src}/manifest.parquet"
            inputs["fit_image_cache"] = (
                f"{RESULTS}/{src}/embeddings/{wc.modality}/{expert}.parquet"
            )
    return inputs


def rag_bridge_image_args(wc, input):
    """The nearest-report bridge's image cache, and for an external target the source's
    manifest and image cache (its report library)."""
    if "image_cache" not in input.keys():
        return ""
    args = f"--image-cache {input.image_cache}"
    if "fit_manifest" in input.keys():
        args += f" --fit-manifest {input.fit_manifest} --fit-image-cache {input.fit_image_cache}"
    return args


def rag_bridge_gpu(wc):
    if not RAG_DEVICE.startswith(("cuda", "auto")):
        return 0
    spec = rag_bridge_spec(wc.dataset, wc.modality)
    if spec is not None:
        return int(spec.get("type") in GENERATIVE_BRIDGES)
    return int(
        any(s.get("type") in GENERATIVE_BRIDGES for s in RAG["bridges"].values())
    )


def rag_gpu(wc=None):
    return int(RAG_DEVICE.startswith(("cuda", "auto")))
