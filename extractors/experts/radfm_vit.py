"""RadFM's 3-D ViT vision encoder (Wu et al. 2023): its architecture and its checkpoint.

The modules are re-implemented with the module names of RadFM's ``vit_3d.py`` (``vision_encoder``
of its ``embedding_layer``), so that the released weights load as they are; torch is imported
when a model is built. :func:`load_radfm_vision` reads the vision-encoder tensors from RadFM's
full ``pytorch_model.bin`` (under ``torch.load(weights_only=True)``) or from the safetensors file
that :func:`radfm_export` writes (``python -m extractors.radfm_export``). The
expert that uses them, ``radfm``, is in :mod:`extractors.experts.fm_volume`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from extractors.loading import LoadingError, WeightsNotFound, load_state_dict

RADFM_VIT = {
    "image_size": 512,
    "frames": 512,
    "image_patch_size": 32,
    "frame_patch_size": 4,
    "dim": 768,
    "depth": 12,
    "heads": 8,
    "dim_head": 64,
    "mlp_dim": 2048,
    "channels": 3,
}
RADFM_PREFIX = "embedding_layer.vision_encoder."


def build_radfm_vit(cfg: dict[str, Any]) -> Any:
    """RadFM's 3-D ViT (module names as in RadFM's ``vit_3d.py``, so its weights load)."""
    import torch
    from torch import nn

    class PositionEmbeddingLearned3d(nn.Module):
        def __init__(self, num_pos_feats: int, h: int, w: int, d: int) -> None:
            super().__init__()
            self.h_patch_num, self.w_patch_num, self.d_patch_num = h, w, d
            self.row_embed = nn.Embedding(h, num_pos_feats)
            self.col_embed = nn.Embedding(w, num_pos_feats)
            self.dep_embed = nn.Embedding(d, num_pos_feats)
            for e in (self.row_embed, self.col_embed, self.dep_embed):
                nn.init.uniform_(e.weight)

        def forward(self, b: int, h: int, w: int, d: int, x: Any) -> Any:
            i = (torch.arange(h, device=x.device) + 1) * (self.h_patch_num // h) - 1
            j = (torch.arange(w, device=x.device) + 1) * (self.w_patch_num // w) - 1
            k = (torch.arange(d, device=x.device) + 1) * (self.d_patch_num // d) - 1
            xe = self.row_embed(i)[:, None, None].expand(h, w, d, -1)
            ye = self.col_embed(j)[None, :, None].expand(h, w, d, -1)
            ze = self.dep_embed(k)[None, None, :].expand(h, w, d, -1)
            pos = torch.cat([xe, ye, ze], dim=-1).reshape(1, h * w * d, -1)
            return pos.expand(b, -1, -1)

    class PreNorm(nn.Module):
        def __init__(self, dim: int, fn: nn.Module) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(dim)
            self.fn = fn

        def forward(self, x: Any) -> Any:
            return self.fn(self.norm(x))

    class FeedForward(nn.Module):
        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.GELU(),
                nn.Dropout(0.0),
                nn.Linear(hidden, dim),
                nn.Dropout(0.0),
            )

        def forward(self, x: Any) -> Any:
            return self.net(x)

    class Attention(nn.Module):
        def __init__(self, dim: int, heads: int, dim_head: int) -> None:
            super().__init__()
            inner = dim_head * heads
            self.heads = heads
            self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
            self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

        def forward(self, x: Any) -> Any:
            b, n, _ = x.shape
            q, k, v = (
                t.reshape(b, n, self.heads, -1).transpose(1, 2)
                for t in self.to_qkv(x).chunk(3, dim=-1)
            )
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return self.to_out(out.transpose(1, 2).reshape(b, n, -1))

    class Transformer(nn.Module):
        def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int) -> None:
            super().__init__()
            self.layers = nn.ModuleList(
                nn.ModuleList(
                    [
                        PreNorm(dim, Attention(dim, heads, dim_head)),
                        PreNorm(dim, FeedForward(dim, mlp_dim)),
                    ]
                )
                for _ in range(depth)
            )

        def forward(self, x: Any) -> Any:
            for attn, ff in self.layers:
                x = attn(x) + x
                x = ff(x) + x
            return x

    class Patchify(
        nn.Module
    ):  # einops Rearrange('b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)')
        def __init__(self, p1: int, p2: int, pf: int) -> None:
            super().__init__()
            self.p = (p1, p2, pf)

        def forward(self, x: Any) -> Any:
            b, c, hh, ww, ff = x.shape
            p1, p2, pf = self.p
            x = x.reshape(b, c, hh // p1, p1, ww // p2, p2, ff // pf, pf)
            x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
            return x.reshape(b, (hh // p1) * (ww // p2) * (ff // pf), p1 * p2 * pf * c)

    class ViT3D(nn.Module):
        def __init__(self, c: dict[str, Any]) -> None:
            super().__init__()
            p, pf, dim = c["image_patch_size"], c["frame_patch_size"], c["dim"]
            patch_dim = c["channels"] * p * p * pf
            self.patch, self.frame_patch = p, pf
            self.to_patch_embedding = nn.Sequential(
                Patchify(p, p, pf),
                nn.LayerNorm(patch_dim),
                nn.Linear(patch_dim, dim),
                nn.LayerNorm(dim),
            )
            self.pos_embedding = PositionEmbeddingLearned3d(
                dim // 3, c["image_size"] // p, c["image_size"] // p, c["frames"] // pf
            )
            self.transformer = Transformer(dim, c["depth"], c["heads"], c["dim_head"], c["mlp_dim"])

        def forward(self, video: Any) -> Any:
            b, _, h, w, d = video.shape
            x = self.to_patch_embedding(video)
            x = x + self.pos_embedding(
                b, h // self.patch, w // self.patch, d // self.frame_patch, x
            )
            return self.transformer(x)

    if cfg["dim"] % 3:
        raise ValueError("radfm: dim must be divisible by 3 (three learned position embeddings)")
    return ViT3D(cfg)


def load_radfm_vision(
    checkpoint: str | None, expert: str, prefix: str = RADFM_PREFIX
) -> dict[str, Any]:
    """The vision-encoder tensors of a RadFM checkpoint (full model or a `python -m extractors.radfm_export` file)."""
    if not checkpoint:
        raise WeightsNotFound(
            f"expert {expert!r}: RadFM needs `checkpoint:` (a local file); see fm_volume.py"
        )
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise WeightsNotFound(
            f"expert {expert!r}: RadFM checkpoint {path} not found. Download RadFM's pytorch_model.bin and set "
            "`checkpoint:` to it (or to the safetensors written by `python -m extractors.radfm_export "
            "pytorch_model.bin radfm_vit3d.safetensors`)."
        )
    state = load_state_dict(path, expert=expert)
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not out and any(k.startswith("to_patch_embedding.") for k in state):
        out = dict(state)  # already exported
    if not out:
        raise LoadingError(f"expert {expert!r}: no {prefix}* tensors in {path}")
    return out


def radfm_export(src: str, dst: str) -> Path:
    """Write RadFM's vision-encoder tensors from ``src`` (pytorch_model.bin) to a safetensors file."""
    from safetensors.torch import save_file

    state = load_radfm_vision(src, "radfm-export")
    save_file(
        {k: v.contiguous() for k, v in state.items()}, dst, metadata={"source": Path(src).name}
    )
    return Path(dst)
