"""Importing this package registers every built-in expert (see ``extractors.registry``).

Offline experts: ``image``, ``text``, ``timeseries``, ``volume``, ``slide``. Foundation-model
experts (the paper's committee, ``config/paper.yaml``): ``fm_image`` (biomedclip, dinov3,
hf-vision; DINOv2 is ``image.dinov2``), ``fm_text`` (gatortron, qwen2, medcpt-query,
medcpt-article, hf-text; all-MiniLM is ``text.minilm``), ``fm_timeseries`` (chronos, moirai),
``fm_volume`` (merlin, radfm), ``fm_onellm`` (onellm: OneLLM's universal encoder and projection,
the ``onellm`` row of Table 1). Their heavy packages are imported only when a model loads.
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
    timeseries,
    volume,
)
