"""The seeds of one job stacked: parameters with a leading seed axis, and their minibatches.

With ``vectorize_seeds`` the seeds are trained *together* (:class:`fusion.trainer.SeedTrainer`):
their parameters are stacked along a leading seed axis (:class:`SeedStack`) and one step runs
every seed's own minibatch (:class:`fusion.seed_inputs.SeedInputs`) through ``torch.func.vmap``. The optimiser
(:class:`StackAdamW`, fused multi-tensor AdamW) and the per-seed gradient clipping work on the
stacked tensors directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_unflatten

from fusion.optim import AdamW, dense_view

if TYPE_CHECKING:
    from medmix.hparams import FusionHParams


class SeedStack:
    """S copies of a module's parameters, stacked: ``params[name]`` is a leaf ``(S, *shape)``.

    Gradients are left to autograd (``.grad`` is reset to None before each backward, so the
    computed gradient tensor is stored as is, never copied into a buffer); the optimiser's
    fused multi-tensor step and the per-seed gradient clipping work on the stacked tensors.
    Persistent buffers (e.g. M3Care's reference bank) are stacked in ``buffers``.
    """

    def __init__(
        self,
        modules: list[nn.Module],
        groups: dict[str, list[str]],
        device: torch.device,
        seed_inner: frozenset[str] = frozenset(),
    ) -> None:
        template = modules[0]
        named = [dict(m.named_parameters()) for m in modules]
        self.groups = groups
        self.params: dict[str, torch.Tensor] = {}
        for names in groups.values():
            for n in names:
                ts = [nm[n].detach() for nm in named]
                if (
                    n in seed_inner
                ):  # (S, K, ...) whose memory is (K, S, ...): see medmix._SharedInputProduct
                    t = torch.stack(ts, dim=1).to(device).contiguous().transpose(0, 1).detach()
                else:
                    t = torch.stack(ts).to(device).contiguous()
                self.params[n] = t.requires_grad_(True)
        non_persistent = {
            f"{mod_name}.{b}" if mod_name else b
            for mod_name, mod in template.named_modules()
            for b in mod._non_persistent_buffers_set
        }
        self.buffers = {
            n: torch.stack([dict(m.named_buffers())[n].detach() for m in modules]).to(device)
            for n, _ in template.named_buffers()
            if n not in non_persistent
        }
        self.best = {n: p.detach().clone() for n, p in self.params.items()}
        self.best_buffers = {n: b.clone() for n, b in self.buffers.items()}

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params.values() if p.grad is not None]

    @torch.no_grad()
    def clip_(self, max_norm: float) -> torch.Tensor:
        """Per-seed gradient-norm clipping (as ``clip_grad_norm_`` does for one model)."""
        grads = self.grads()
        norms = [
            torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1, dtype=torch.float32)
            if g.is_contiguous()
            else torch.linalg.vector_norm(dense_view(g), dim=tuple(range(2, g.ndim)) or None).norm(
                dim=0
            )
            for g in grads
        ]
        norm = torch.linalg.vector_norm(torch.stack(norms, dim=1), dim=1)
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        if bool((coef < 1.0).any()):
            for g in grads:
                g.mul_(coef.view(-1, *[1] * (g.ndim - 1)).to(g.dtype))
        return norm

    @torch.no_grad()
    def finite_seeds(self) -> list[bool]:
        """Per seed: whether every one of its parameters is finite (one sync for all)."""
        ok = None
        for p in self.params.values():
            seed_ok = torch.isfinite(p).reshape(p.shape[0], -1).all(dim=1)
            ok = seed_ok if ok is None else ok & seed_ok
        return [] if ok is None else ok.tolist()

    @torch.no_grad()
    def save_best(self, s: int) -> None:
        for n, p in self.params.items():
            self.best[n][s].copy_(p[s])
        for n, b in self.buffers.items():
            self.best_buffers[n][s].copy_(b[s])

    @torch.no_grad()
    def restore_best(self) -> None:
        for n, p in self.params.items():
            p.copy_(self.best[n])
        for n, b in self.buffers.items():
            b.copy_(self.best_buffers[n])

    @torch.no_grad()
    def state_dict_of(self, s: int, prefix: str = "") -> dict[str, torch.Tensor]:
        """Seed ``s``'s parameters and persistent buffers, names under ``prefix`` (stripped)."""
        out = {}
        for store in (self.params, self.buffers):
            for n, t in store.items():
                if n.startswith(prefix):
                    out[n[len(prefix) :]] = t[s].detach().clone()
        return out


class StackAdamW(AdamW):
    """AdamW over the stacked parameters of a :class:`SeedStack` (groups as configured)."""

    def __init__(self, stack: SeedStack, hp: FusionHParams) -> None:
        groups = [
            {
                "params": [stack.params[n] for n in names],
                "lr": hp.router_lr if g.startswith("router") else hp.lr,
                "weight_decay": 0.0 if g.endswith("_nodecay") else hp.weight_decay,
                "name": g,
            }
            for g, names in stack.groups.items()
        ]
        super().__init__(groups, betas=hp.betas, eps=hp.eps)


class StepReplay:
    """A training step's forward and backward (every seed, through ``vmap``) replayed from
    the recorded list of the ATen operations they run: the same operations with the same
    arguments in the same order (bit-identical results, the same random draws), without the
    per-operation cost of ``vmap``, ``functional_call`` and the autograd engine (several
    hundred small operations a step).

    ``fn(params, buffers, *args) -> (total, task, kd)``. The first call with a new signature
    (shapes, strides, dtypes of the tensors, the non-tensor arguments) runs ``fn`` and
    ``torch.autograd.grad(total, params)`` once under ``make_fx``, with the random state put
    back afterwards (the recording draws nothing), and splits the recorded graph where the
    backward starts: the forward graph returns the outputs and the tensors the backward reads,
    the backward graph takes those and the gradient of ``total``. ``fn`` must not branch on
    tensor values (what ``vmap`` requires anyway): a branch would be recorded as taken.
    """

    def __init__(self, fn) -> None:
        self.fn = fn
        self.graphs: dict = {}

    def __call__(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], *args):
        """``(total, task, kd)``: ``total`` carries the gradient to ``params``."""
        flat, spec = tree_flatten((params, buffers, args))
        key = (spec, *(_signature(x) for x in flat))
        graphs = self.graphs.get(key)
        if graphs is None:
            graphs = self.graphs[key] = self._record(flat, spec)
        box: list[torch.Tensor] = []
        total = _Replay.apply(graphs, box, *flat)
        return total, *box

    def _record(self, flat: list, spec) -> _Graphs:
        where = [i for i, x in enumerate(flat) if isinstance(x, torch.Tensor)]
        diff = [i for i in where if flat[i].requires_grad]

        def joint(*tensors):
            *inputs, tangent = tensors
            values = list(flat)
            for i, t in zip(where, inputs, strict=True):
                values[i] = t
            params, buffers, args = tree_unflatten(values, spec)
            with torch.enable_grad():
                total, task, kd = self.fn(params, buffers, *args)
                grads = torch.autograd.grad(
                    total, [values[i] for i in diff], tangent, allow_unused=True
                )
            return total, task, kd, *grads

        tensors = [flat[i] for i in where]
        probe = tensors[0]
        state = torch.get_rng_state()
        try:
            seeds = next(iter(tree_unflatten(flat, spec)[0].values())).shape[0]
            with _disable_current_modes():  # (a FLOP counter counts the replayed operations)
                gm = make_fx(joint)(*tensors, torch.ones(seeds, device=probe.device))
        finally:
            torch.set_rng_state(state)
        return _Graphs.split(gm, len(tensors), where, diff, len(flat))


def _signature(x):
    if isinstance(x, torch.Tensor):
        return (tuple(x.shape), x.stride(), x.dtype, x.device, x.requires_grad)
    return (type(x), x)


class _Graphs:
    """The recorded step split in two: ``forward(*tensors) -> (total, task, kd, *saved)``,
    ``backward(*saved, grad_total) -> gradients of the differentiable inputs``."""

    def __init__(self, forward, backward, where, diff, n_flat) -> None:
        # the generated code itself, not Module.__call__ (no module hooks, e.g. a FLOP counter's)
        self.forward, self.backward = forward.forward, backward.forward
        self.where, self.diff, self.n_flat = where, diff, n_flat

    @classmethod
    def split(cls, gm: torch.fx.GraphModule, n_in: int, where, diff, n_flat) -> _Graphs:
        graph = gm.graph
        nodes = list(graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]
        tangent = inputs[n_in]
        output = next(n for n in nodes if n.op == "output")
        outs = list(output.args[0])
        # the backward starts at the first operation that reads the gradient of ``total``
        on_tangent = {tangent}
        start = None
        for i, n in enumerate(nodes):
            if n.op != "call_function":
                continue
            if any(a in on_tangent for a in n.all_input_nodes):
                on_tangent.add(n)
                if start is None:
                    start = i
        if start is None:
            start = nodes.index(output)
        forward_nodes = [n for n in nodes[:start] if n.op != "placeholder" or n is not tangent]
        backward_nodes = [n for n in nodes[start:] if n.op not in ("placeholder", "output")]
        in_forward = set(forward_nodes)
        saved: list[torch.fx.Node] = []
        for n in [*backward_nodes, *[o for o in outs[3:] if o is not None]]:
            for a in [n] if n in in_forward else n.all_input_nodes:
                if a in in_forward and a not in saved:
                    saved.append(a)
        for o in outs[:3]:
            if o not in in_forward:
                raise RuntimeError("StepReplay: an output is computed in the backward")
        fwd = torch.fx.Graph()
        env: dict = {}
        for n in forward_nodes:
            env[n] = fwd.node_copy(n, lambda a: env[a])
        fwd.output((*[env[o] for o in outs[:3]], *[env[n] for n in saved]))
        bwd = torch.fx.Graph()
        env = {}
        for n in saved:
            env[n] = bwd.placeholder(n.name)
        env[tangent] = bwd.placeholder("tangent")
        for n in backward_nodes:
            env[n] = bwd.node_copy(n, lambda a: env[a])
        bwd.output(tuple(None if o is None else env[o] for o in outs[3:]))
        return cls(
            torch.fx.GraphModule(gm, fwd), torch.fx.GraphModule(gm, bwd), where, diff, n_flat
        )


class _Replay(torch.autograd.Function):
    """The recorded forward as one autograd node whose backward is the recorded backward."""

    @staticmethod
    def forward(ctx, graphs: _Graphs, box: list, *flat):
        tensors = [flat[i] for i in graphs.where]
        total, task, kd, *saved = graphs.forward(*tensors)
        ctx.graphs = graphs
        ctx.save_for_backward(*saved)
        box.extend((task.detach(), kd.detach()))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        graphs: _Graphs = ctx.graphs
        grads = graphs.backward(*ctx.saved_tensors, grad_total)
        out: list = [None] * graphs.n_flat
        for i, g in zip(graphs.diff, grads, strict=True):
            out[i] = g
        return None, None, *out


__all__ = ["SeedStack", "StackAdamW", "StepReplay"]
