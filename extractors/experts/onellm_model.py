"""OneLLM's encoder and universal projection as PyTorch modules, and their architecture.

The modules are plain PyTorch with OneLLM's module tree and parameter names
(``model/LLM/onellm.py`` of github.com/csuhan/OneLLM, the ``Transformer`` class; the CLIP tower
is open_clip's ``VisionTransformer``), so the release checkpoint loads into them
(:mod:`extractors.experts.onellm_checkpoint`). torch is imported when the first model is built
(:func:`build_encoder`), so importing this module stays light. The architecture is OneLLM-7B's
(:data:`DEFAULT_ARCH`); an expert's ``config:`` overrides it (:func:`build_arch`). The expert
that uses them is :mod:`extractors.experts.fm_onellm`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

ONELLM_MODALS = ("image", "video", "audio", "point", "rgbd", "rgbn", "fmri", "imu")
IMAGE_LIKE = ("image", "video", "rgbd", "rgbn")  # tokenised by CLIP's own patch conv
OWN_POSITIONS = ("audio", "point", "fmri", "imu")  # modalities with their own positional table

# OneLLM-7B: OpenAI CLIP ViT-L/14 (open_clip 'ViT-L-14', pretrained='openai': QuickGELU),
# LLaMA-2-7B's config/llama2/7B.json (dim 4096, multiple_of 256, norm_eps 1e-5), 3 projection
# experts of 8 blocks with 16 heads at the CLIP width, 30 resample tokens, and the tokenizer
# shapes of model/LLM/onellm.py.
DEFAULT_ARCH: dict[str, Any] = {
    "clip_width": 1024,
    "clip_layers": 24,
    "clip_heads": 16,
    "clip_patch": 14,
    "clip_image_size": 224,
    "clip_output_dim": 768,
    "llm_dim": 4096,
    "multiple_of": 256,
    "norm_eps": 1e-5,
    "num_experts": 3,
    "num_resample_layers": 8,
    "resample_heads": 16,
    "resample_tokens": 30,
    "imu_channels": 6,
    "imu_kernel": 10,
    "imu_length": 400,
    "audio_tokens": 1212,
    "fmri_in": 15724,
    "fmri_tokens": 8,
    "vocab_size": 32000,
}


def build_arch(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``DEFAULT_ARCH`` with the ``config:`` overrides (unknown keys are an error)."""
    cfg = dict(config or {})
    unknown = sorted(set(cfg) - set(DEFAULT_ARCH))
    if unknown:
        raise ValueError(
            f"onellm: unknown architecture keys {unknown}; known: {sorted(DEFAULT_ARCH)}"
        )
    arch = {**DEFAULT_ARCH, **cfg}
    if arch["clip_image_size"] % arch["clip_patch"]:
        raise ValueError("onellm: clip_image_size must be a multiple of clip_patch")
    if arch["clip_width"] % arch["resample_heads"] or arch["clip_width"] % arch["clip_heads"]:
        raise ValueError("onellm: clip_width must be divisible by clip_heads and resample_heads")
    return arch


def build_encoder(arch: Mapping[str, Any], modals: Iterable[str], text: bool = False) -> Any:
    """The OneLLM encoder modules (torch imported here, so the module imports without torch)."""
    return _modules().OneLLMEncoder(dict(arch), tuple(modals), text=text)


# -- the torch modules (built on first use) ----------------------------------------------------

_MODULES: Any = None


def _modules() -> Any:
    global _MODULES
    if _MODULES is None:
        _MODULES = _define_modules()
    return _MODULES


def _define_modules() -> Any:  # noqa: C901 - one namespace of small module classes
    import types

    import torch
    import torch.nn.functional as F
    from torch import nn

    # ---- open_clip's VisionTransformer (OpenAI ViT-L/14: QuickGELU, pre-norm blocks) -----
    class QuickGELU(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(1.702 * x)

    class LayerNorm(nn.LayerNorm):
        """open_clip's LayerNorm: computed in fp32, cast back (for fp16 weights)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            dtype = x.dtype
            x = F.layer_norm(
                x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
            )
            return x.to(dtype)

    class ResidualAttentionBlock(nn.Module):
        def __init__(self, width: int, heads: int) -> None:
            super().__init__()
            self.ln_1 = LayerNorm(width)
            self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
            self.ln_2 = LayerNorm(width)
            self.mlp = nn.Sequential(
                OrderedDict(
                    [
                        ("c_fc", nn.Linear(width, width * 4)),
                        ("gelu", QuickGELU()),
                        ("c_proj", nn.Linear(width * 4, width)),
                    ]  # fmt: skip
                )
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.ln_1(x)
            x = x + self.attn(y, y, y, need_weights=False)[0]
            return x + self.mlp(self.ln_2(x))

    class CLIPTransformer(nn.Module):
        def __init__(self, width: int, layers: int, heads: int) -> None:
            super().__init__()
            self.resblocks = nn.ModuleList(
                [ResidualAttentionBlock(width, heads) for _ in range(layers)]
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D)
            for block in self.resblocks:
                x = block(x)
            return x

    class VisionTransformer(nn.Module):
        def __init__(self, a: dict[str, Any]) -> None:
            super().__init__()
            w, p, s = a["clip_width"], a["clip_patch"], a["clip_image_size"]
            scale = w**-0.5
            self.conv1 = nn.Conv2d(3, w, kernel_size=p, stride=p, bias=False)
            self.class_embedding = nn.Parameter(scale * torch.randn(w))
            self.positional_embedding = nn.Parameter(scale * torch.randn((s // p) ** 2 + 1, w))
            self.ln_pre = LayerNorm(w)
            self.transformer = CLIPTransformer(w, a["clip_layers"], a["clip_heads"])
            self.ln_post = LayerNorm(w)
            # CLIP's output projection: in the checkpoint, unused (OneLLM keeps every token)
            self.proj = nn.Parameter(scale * torch.randn(w, a["clip_output_dim"]))

    class CLIP(nn.Module):
        """``clip`` of OneLLM's Transformer with only its ``visual`` tower (the text tower is
        set to None there; its remaining tensors are not built)."""

        def __init__(self, a: dict[str, Any]) -> None:
            super().__init__()
            self.visual = VisionTransformer(a)

    # ---- OneLLM's LLaMA-style blocks of the projection experts ---------------------------
    class RMSNorm(nn.Module):
        def __init__(self, dim: int, eps: float) -> None:
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            xf = x.float()
            out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return out.type_as(x) * self.weight

    class Attention(nn.Module):
        """Non-causal, no rotary embedding (the resampler calls it with freqs_cis=None, mask=None)."""

        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.n_heads, self.head_dim = heads, dim // heads
            self.wq = nn.Linear(dim, heads * self.head_dim, bias=False)
            self.wk = nn.Linear(dim, heads * self.head_dim, bias=False)
            self.wv = nn.Linear(dim, heads * self.head_dim, bias=False)
            self.wo = nn.Linear(heads * self.head_dim, dim, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape
            q, k, v = (
                f(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
                for f in (self.wq, self.wk, self.wv)
            )
            out = F.scaled_dot_product_attention(q, k, v)
            return self.wo(out.transpose(1, 2).reshape(b, n, -1))

    class FeedForward(nn.Module):
        def __init__(self, dim: int, hidden_dim: int, multiple_of: int) -> None:
            super().__init__()
            hidden_dim = int(2 * hidden_dim / 3)
            hidden_dim = multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)
            self.w1 = nn.Linear(dim, hidden_dim, bias=False)
            self.w2 = nn.Linear(hidden_dim, dim, bias=False)
            self.w3 = nn.Linear(dim, hidden_dim, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))

    class TransformerBlock(nn.Module):
        def __init__(self, dim: int, heads: int, multiple_of: int, eps: float) -> None:
            super().__init__()
            self.attention = Attention(dim, heads)
            self.feed_forward = FeedForward(dim, 4 * dim, multiple_of)
            self.attention_norm = RMSNorm(dim, eps)
            self.ffn_norm = RMSNorm(dim, eps)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x + self.attention(self.attention_norm(x))
            return h + self.feed_forward(self.ffn_norm(h))

    class Mlp(nn.Module):
        def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
            super().__init__()
            self.fc1 = nn.Linear(in_features, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, out_features)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.act(self.fc1(x)))

    class OneLLMEncoder(nn.Module):
        """The encoder/projection part of OneLLM's ``Transformer`` (model/LLM/onellm.py), same
        attribute names, for the modalities in ``modals`` (the point tokenizer is not built)."""

        def __init__(self, a: dict[str, Any], modals: tuple[str, ...], text: bool = False) -> None:
            super().__init__()
            bad = [m for m in modals if m not in ONELLM_MODALS or m == "point"]
            if bad:
                raise ValueError(
                    f"onellm: cannot build modality heads {bad} (point needs pointnet2)"
                )
            self.arch, self.modals, self.text = dict(a), tuple(modals), bool(text)
            w, d = a["clip_width"], a["llm_dim"]
            if text:
                self.tok_embeddings = nn.Embedding(a["vocab_size"], d)
            self.clip = CLIP(a)
            self.resample_layers = nn.ModuleDict()
            for expert in range(a["num_experts"]):
                self.resample_layers[str(expert)] = nn.ModuleList(
                    [
                        TransformerBlock(w, a["resample_heads"], a["multiple_of"], a["norm_eps"])
                        for _ in range(a["num_resample_layers"])
                    ]  # fmt: skip
                )
            self.conv1 = nn.ModuleDict()
            self.positional_embedding = nn.ParameterDict()
            self.resample_tokens = nn.ParameterDict()
            self.clip_proj1 = nn.ModuleDict()
            self.clip_proj2 = nn.ModuleDict()
            self.routers = nn.ModuleDict()
            self.start_tag = nn.ParameterDict()
            self.end_tag = nn.ParameterDict()
            for m in self.modals:
                if m == "audio":
                    self.conv1[m] = nn.Conv2d(1, w, kernel_size=(16, 16), stride=(10, 10))
                    self.positional_embedding[m] = nn.Parameter(
                        0.02 * torch.randn(a["audio_tokens"] + 1, w)
                    )
                elif m == "fmri":
                    self.conv1[m] = nn.Linear(a["fmri_in"], a["fmri_tokens"] * w)
                    self.positional_embedding[m] = nn.Parameter(
                        0.02 * torch.randn(a["fmri_tokens"] + 1, w)
                    )
                elif m == "imu":
                    self.conv1[m] = nn.Conv1d(
                        a["imu_channels"], w, kernel_size=a["imu_kernel"], bias=False
                    )
                    n = a["imu_length"] - a["imu_kernel"] + 1
                    self.positional_embedding[m] = nn.Parameter(0.02 * torch.randn(n + 1, w))
                self.routers[m] = Mlp(w, w * 4, a["num_experts"])
                self.resample_tokens[m] = nn.Parameter(
                    0.02 * torch.randn(1, a["resample_tokens"], w)
                )
                self.clip_proj1[m] = nn.Sequential(nn.Linear(w, w), nn.LayerNorm(w))
                self.clip_proj2[m] = nn.Sequential(nn.Linear(w, d), nn.LayerNorm(d))
                self.start_tag[m] = nn.Parameter(torch.rand(1, 1, d))
                self.end_tag[m] = nn.Parameter(torch.rand(1, 1, d))

        def owned_prefixes(self) -> list[str]:
            out = ["clip.visual", "resample_layers"] + (["tok_embeddings"] if self.text else [])
            for m in self.modals:
                out += [f"{name}.{m}" for name in ("resample_tokens", "clip_proj1", "clip_proj2",
                                                   "routers", "start_tag", "end_tag")]  # fmt: skip
                if m in OWN_POSITIONS:
                    out += [f"conv1.{m}", f"positional_embedding.{m}"]
            return out

        def tokenize(self, x: torch.Tensor, modal: str) -> torch.Tensor:
            """Frames -> (N, width, tokens) patch/time tokens (OneLLM's encode_image head)."""
            if modal in IMAGE_LIKE:
                x = self.clip.visual.conv1(x)
            elif modal in ("audio", "imu"):
                x = self.conv1[modal](x)
            elif modal == "fmri":
                x = self.conv1[modal](x).reshape(x.size(0), self.arch["clip_width"], -1)
            else:
                raise ValueError(f"onellm: no tokenizer for {modal!r}")
            return x.reshape(x.shape[0], x.shape[1], -1)

        def clip_encode(self, x: torch.Tensor, modal: str) -> torch.Tensor:
            """OneLLM's clip_encode_image: every token after ln_post, no CLIP projection."""
            v = self.clip.visual
            x = x.permute(0, 2, 1)
            cls = v.class_embedding.to(x.dtype) + torch.zeros(
                x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device
            )
            x = torch.cat([cls, x], dim=1)
            pos = (
                self.positional_embedding[modal]
                if modal in OWN_POSITIONS
                else v.positional_embedding
            )
            x = v.ln_pre(x + pos.to(x.dtype))
            return v.ln_post(v.transformer(x))

        def project(self, feats: torch.Tensor, modal: str) -> torch.Tensor:
            """The universal projection module: (B, L, width) -> (B, resample_tokens, llm_dim)."""
            b = feats.shape[0]
            feats = self.clip_proj1[modal](feats)
            queries = self.resample_tokens[modal]
            feats = torch.cat([queries.repeat(b, 1, 1).to(feats.dtype), feats], dim=1)
            weights = self.routers[modal](feats).sigmoid()
            weights = weights / weights.sum(dim=-1, keepdim=True)
            n = queries.size(1)
            out = 0
            for e in range(self.arch["num_experts"]):
                h = feats
                for layer in self.resample_layers[str(e)]:
                    h = layer(h)
                out = out + h[:, :n] * weights[:, :n, e, None]
            return self.clip_proj2[modal](out)

        def encode(
            self, x: torch.Tensor, modal: str, counts: list[int] | None = None
        ) -> torch.Tensor:
            """Frames of B samples (``counts`` frames each; default one) -> (B, tokens, llm_dim).

            A sample's CLIP tokens are averaged over its frames before the projection, as
            OneLLM's encode_image does over a video's T frames."""
            feats = self.clip_encode(self.tokenize(x, modal), modal)
            if counts is not None and any(c != 1 for c in counts):
                feats = torch.stack([f.mean(dim=0) for f in torch.split(feats, list(counts))])
            return self.project(feats, modal)

    return types.SimpleNamespace(
        OneLLMEncoder=OneLLMEncoder,
        VisionTransformer=VisionTransformer,
        TransformerBlock=TransformerBlock,
        RMSNorm=RMSNorm,
    )
