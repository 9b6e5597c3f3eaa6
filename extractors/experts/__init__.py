"""Importing this package registers every built-in expert (see ``extractors.registry``).

Offline experts: ``image`` (dinov2), ``texture`` (texture-glcm-lbp and its deprecated alias
image-radiomics), ``text``, ``timeseries``, ``volume`` (ct-slicer) and ``slide`` (slide-tiles);
the last two wrap an inner image expert (``pooled``). Foundation-model experts (the paper's
committee, ``config/paper.yaml``), all configured with the same source keys (``fm_source``):
``fm_image`` (biomedclip, dinov3, hf-vision; DINOv2 is ``image.dinov2``), ``fm_text``
(gatortron, qwen2, medcpt-query, medcpt-article, hf-text; all-MiniLM is ``text.minilm``),
``fm_timeseries`` (chronos, moirai), ``fm_volume`` (merlin, radfm; RadFM's encoder is
``radfm_vit``), ``fm_onellm`` (onellm: OneLLM's universal encoder and projection, the ``onellm``
row of Table 1; its modules, checkpoint reading and inputs are ``onellm_model``,
``onellm_checkpoint`` and ``onellm_inputs``). Their heavy packages are imported only when a
model loads.
"""

from extractors.experts import (  # noqa: F401
    fm_image,
    fm_onellm,
    fm_text,
    fm_timeseries,
    fm_volume,
    image,
    slide,
    text,
    texture,
    timeseries,
    volume,
)
