"""The latent-factor signal model shared by all demo cohorts (package docstring: the maths).

For concept ``k`` and modality ``m`` the evidence is ``e[m,k] = a*z[k] + sqrt(1-a^2)*u[m,k]``
(``z`` shared by the modalities, ``u`` private to one). Label logits are additive over
modalities: ``L[t] = b[t] + scale * sum_m sum_k W[t,k] * v[m,k] * e[m,k]``. Renderers see a
quality-degraded copy ``q*e + sqrt(1-q^2)*noise``. ``evidence`` (one of ``EVIDENCE``) picks
how the modalities share the signal; the package docstring says what each setting means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

PATIENT_CORR = 0.8  # correlation of a latent between two samples (studies) of one patient

# How the modalities share the label signal (package docstring, "Evidence settings").
ADDITIVE, REDUNDANT, DOMINANT, INFORMATIVE_MISSINGNESS = (
    "additive",
    "redundant",
    "dominant",
    "informative-missingness",
)
EVIDENCE = (ADDITIVE, REDUNDANT, DOMINANT, INFORMATIVE_MISSINGNESS)
DEFAULT_EVIDENCE = ADDITIVE
REDUNDANT_SHARED = 0.95  # redundant: a, the shared latent's loading in every modality
REDUNDANT_GLOBAL = 0.9  # redundant: every concept loads this much on the one global factor
DOMINANT_POOR_QUALITY = (0.0, 0.35)  # dominant: q of the other modalities (visibly poor copies)


def check_evidence(evidence: str) -> str:
    if evidence not in EVIDENCE:
        raise ValueError(f"unknown evidence setting {evidence!r}; choose from {list(EVIDENCE)}")
    return evidence


def sample_rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent, reproducible stream for (seed, keys): order-independent generation."""
    return np.random.default_rng([int(seed), *map(int, keys)])


@dataclass(frozen=True)
class Concept:
    """A clinical concept and how strongly each modality's view of it enters the labels."""

    name: str
    views: dict[str, float]  # modality -> v[m,k]; modalities absent here do not see it


@dataclass(frozen=True)
class SignalSpec:
    modalities: tuple[str, ...]
    concepts: tuple[Concept, ...]
    labels: tuple[str, ...]
    weights: np.ndarray  # (n_labels, n_concepts): W[t,k]
    prevalence: tuple[float, ...]  # target P(y_t = 1) at shift 0
    shared: float = 0.6  # a: loading of the shared latent in every modality's evidence
    global_corr: float = 0.0  # loading of one cohort-wide "sickness" factor on every z[k]
    scale: float = 1.0
    low_quality: dict[str, float] | None = None  # modality -> P(sample has a poor-quality copy)
    good_quality: tuple[float, float] = (0.92, 1.0)  # q range of ordinary copies
    prevalence_shift: tuple[float, ...] | None = None  # d b[t] / d shift (default +0.6)

    def view(self, modality: str) -> np.ndarray:
        """v[m, :] as a vector over concepts (0 where the modality does not see the concept)."""
        return np.array([c.views.get(modality, 0.0) for c in self.concepts])

    def concept_names(self, modality: str) -> list[str]:
        return [c.name for c in self.concepts if c.views.get(modality, 0.0) > 0]

    def contribution_std(self, modality: str) -> np.ndarray:
        """Standard deviation of one modality's additive share of ``L[t]`` (per label t)."""
        g2, a2 = self.global_corr**2, self.shared**2
        w = self.weights * self.scale * self.view(modality)[None, :]  # (T, K)
        var_z = a2 * (g2 * w.sum(1) ** 2 + (1 - g2) * (w**2).sum(1))
        return np.sqrt(var_z + (1 - a2) * (w**2).sum(1))

    def logit_std(self) -> np.ndarray:
        """Standard deviation of ``L[t] - b[t]`` (the latents are unit Gaussians)."""
        a2 = self.shared**2
        v = np.stack([self.view(m) for m in self.modalities])  # (M, K)
        g2 = self.global_corr**2
        w = self.weights * self.scale
        # shared part: a*z[k]*sum_m v[m,k], with z[k] = g*G + sqrt(1-g^2)*z'[k]
        zload = w * v.sum(0)[None, :] * self.shared
        var_z = g2 * zload.sum(1) ** 2 + (1 - g2) * (zload**2).sum(1)
        var_u = ((w**2) * (1 - a2) * (v**2).sum(0)[None, :]).sum(1)
        return np.sqrt(var_z + var_u)


def _expected_sigmoid(bias: float, std: float, nodes: np.ndarray, weights: np.ndarray) -> float:
    x = bias + np.sqrt(2.0) * std * nodes
    return float((weights / np.sqrt(np.pi) * (1.0 / (1.0 + np.exp(-x)))).sum())


def expected_prevalence(bias: float, std: float) -> float:
    """E[sigmoid(bias + std*Z)] for Z ~ N(0, 1)."""
    nodes, weights = np.polynomial.hermite.hermgauss(64)
    return _expected_sigmoid(bias, std, nodes, weights)


def solve_bias(prevalence: float, std: float) -> float:
    """Bias b with E[sigmoid(b + std*Z)] = prevalence (Gauss-Hermite quadrature + bisection)."""
    nodes, weights = np.polynomial.hermite.hermgauss(64)
    lo, hi = -40.0, 40.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _expected_sigmoid(mid, std, nodes, weights) < prevalence:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass
class Signal:
    """Everything the renderers and the label writer need, one row per sample."""

    evidence: dict[str, np.ndarray]  # modality -> (n, K) observed (quality-degraded) evidence
    clean: dict[str, np.ndarray]  # modality -> (n, K) evidence before quality degradation
    quality: dict[str, np.ndarray]  # modality -> (n,) in (0, 1]; < 0.5 is a visibly poor copy
    contributions: dict[str, np.ndarray]  # modality -> (n, T) its additive share of the logits
    logits: np.ndarray  # (n, T)
    labels: np.ndarray  # (n, T) int8
    sickness: np.ndarray  # (n,) the global factor (drives structured missingness)
    concepts: list[str]
    evidence_setting: str = ADDITIVE
    dominant: np.ndarray | None = None  # dominant: (n,) index into the modalities, else None

    def burden(self, weights: np.ndarray) -> np.ndarray:
        """(n,) fraction of adverse outcomes (``y`` where ``W[t]`` raises the logit, else 1-y)."""
        up = weights.sum(1) >= 0
        return np.where(up[None, :], self.labels, 1 - self.labels).mean(1)


def _patient_mix(
    rng: np.random.Generator, patient_index: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """Unit-variance Gaussians correlated PATIENT_CORR within a patient, independent across."""
    n_pat = int(patient_index.max()) + 1
    per_patient = rng.standard_normal((n_pat, *shape))
    per_sample = rng.standard_normal((len(patient_index), *shape))
    return PATIENT_CORR * per_patient[patient_index] + np.sqrt(1 - PATIENT_CORR**2) * per_sample


def sample_signal(
    spec: SignalSpec,
    patient_index: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    shift: float = 0.0,
    evidence: str = DEFAULT_EVIDENCE,
) -> Signal:
    """Draw latents, evidence, quality and labels for samples of the given patients.

    ``evidence`` (``EVIDENCE``): ``additive`` draws exactly what it always drew; ``redundant``
    and ``dominant`` rescale the logits so that their standard deviation (hence the Bayes
    difficulty and the bias b[t]) equals the additive one; ``informative-missingness`` draws
    the additive signal (the plan then drops modalities by label, base.evidence_missingness).
    """
    setting = check_evidence(evidence)
    target_std = spec.logit_std()  # the additive setting's, kept by every setting
    if setting == REDUNDANT:
        spec = replace(
            spec, shared=REDUNDANT_SHARED, global_corr=max(spec.global_corr, REDUNDANT_GLOBAL)
        )
    pidx = np.asarray(patient_index, dtype=int)
    n, k_n, t_n = len(pidx), len(spec.concepts), len(spec.labels)
    g = _patient_mix(rng, pidx, ())
    z = spec.global_corr * g[:, None] + np.sqrt(1 - spec.global_corr**2) * _patient_mix(
        rng, pidx, (k_n,)
    )
    a = spec.shared
    clean, evidence, quality, contrib = {}, {}, {}, {}
    logits = np.zeros((n, t_n))
    for m in spec.modalities:
        u = _patient_mix(rng, pidx, (k_n,))
        e = a * z + np.sqrt(1 - a**2) * u
        v = spec.view(m)
        e = e * (v > 0)  # unseen concepts carry no evidence
        c = spec.scale * (e * v[None, :]) @ spec.weights.T
        p_low = (spec.low_quality or {}).get(m, 0.0)
        low = rng.random(n) < p_low
        q = np.where(low, rng.uniform(0.0, 0.35, n), rng.uniform(*spec.good_quality, n))
        noisy = q[:, None] * e + np.sqrt(1 - q[:, None] ** 2) * rng.standard_normal((n, k_n))
        clean[m], evidence[m], quality[m], contrib[m] = e, noisy * (v > 0), q, c
        logits += c
    dominant = None
    if setting == REDUNDANT:  # aligned views add up coherently: back to the additive spread
        ratio = target_std / spec.logit_std()
        contrib = {m: c * ratio[None, :] for m, c in contrib.items()}
        logits = sum(contrib.values())
    elif setting == DOMINANT:
        dominant, logits = _dominant(spec, rng, clean, evidence, quality, contrib, target_std)
    dshift = np.array(spec.prevalence_shift or (0.6,) * t_n)
    std = target_std
    bias = np.array([solve_bias(p, sd) for p, sd in zip(spec.prevalence, std, strict=True)])
    logits += bias[None, :] + shift * dshift[None, :]
    # y = 1[L + logistic noise > 0] is y ~ Bernoulli(sigmoid(L)); the cut is then moved to
    # the sample quantile so the cohort's prevalence is exactly the expected one (less noise
    # in small cohorts: ccRCC has few negatives)
    noisy_logits = logits + rng.logistic(size=(n, t_n))
    labels = np.zeros((n, t_n), np.int8)
    for t in range(t_n):
        target = expected_prevalence(bias[t] + shift * dshift[t], std[t])
        k = int(round(target * n))  # number of positives
        order = np.argsort(-noisy_logits[:, t], kind="stable")
        labels[order[:k], t] = 1
    return Signal(
        evidence,
        clean,
        quality,
        contrib,
        logits,
        labels,
        g,
        [c.name for c in spec.concepts],
        evidence_setting=setting,
        dominant=dominant,
    )


def _dominant(
    spec: SignalSpec,
    rng: np.random.Generator,
    clean: dict[str, np.ndarray],
    evidence: dict[str, np.ndarray],
    quality: dict[str, np.ndarray],
    contrib: dict[str, np.ndarray],
    target_std: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One modality per sample carries the labels; the others become visibly poor copies.

    Rewrites ``evidence``, ``quality`` and ``contrib`` in place; returns the dominant modality
    index per sample and the logits without bias, ``target_std * c[d,t] / sd(c[d,t])``.
    """
    n = len(next(iter(clean.values())))
    dom = rng.integers(0, len(spec.modalities), n)
    logits = np.zeros((n, len(spec.labels)))
    for j, m in enumerate(spec.modalities):
        on = dom == j
        sd = spec.contribution_std(m)
        # a modality that cannot see label t at all (sd 0) leaves it to the logistic noise
        gain = np.divide(target_std, sd, out=np.zeros_like(sd), where=sd > 0)
        contrib[m] = np.where(on[:, None], contrib[m] * gain[None, :], 0.0)
        logits += contrib[m]
        q = np.where(on, rng.uniform(*spec.good_quality, n), rng.uniform(*DOMINANT_POOR_QUALITY, n))
        e, seen = clean[m], spec.view(m) > 0
        noise = rng.standard_normal(e.shape)
        evidence[m] = (q[:, None] * e + np.sqrt(1 - q[:, None] ** 2) * noise) * seen
        quality[m] = q
    return dom, logits
