"""Synthetic demo cohorts that imitate the paper's three benchmarks, in real file formats.

``generate_cohort(kind, out_dir, n_patients, seed, dataset, shift=0.0)`` writes raw files under
``out_dir/raw/`` and the manifest (docs/design.md §3.1) at ``out_dir/manifest.parquet`` with
``meta.root = str(out_dir / "raw")``; ``python -m cohorts demo ...`` is its command line.
Output is byte-identical for equal arguments (per-sample random streams keyed by seed,
sample index and modality; PNG, TIFF, gzip and Parquet writers carry no timestamps).

Cohort kinds
------------
``openi``  frontal + lateral chest radiograph (PNG, 8-bit, 256 px) and a radiology report;
           15 findings, multi-label, long-tailed (``normal`` = none of the other 14); about
           20 % of patients have a second study; split 0.65/0.15/0.20 by patient.
``mimic``  frontal + lateral CXR, an ICU admission note, and the first 48 h of 46 clinical
           variables (one Parquet per stay: ``hour`` + 46 float columns with gaps); binary
           outcomes mortality / long_stay / readmission (~16 / 33 / 22 %); split 0.72/0.13/0.15.
``ccrcc``  contrast CT (NIfTI int16 HU, 64 x 64 x 32, RAS affine), an H&E whole-slide image
           (tiled pyramidal TIFF, 0.5-4 um/px, OpenSlide ``openslide.mpp-x``), an oncology
           note; 12-month vital status (1 = alive, ~88 %); split 0.7/0.1/0.2.

Generative model (``signal.py``)
--------------------------------
Each cohort has clinical *concepts* k (OpenI: one per finding; MIMIC: resp, cardiac, renal,
infection, chronic, social, trajectory, support; ccRCC: burden, necrosis, metastasis, grade,
performance). Every modality m that observes concept k gets its own evidence

    e[m,k] = a * z[k] + sqrt(1 - a^2) * u[m,k]

with z[k] shared by all modalities (itself loading on one cohort-wide "sickness" factor, so
labels correlate) and u[m,k] private to the modality; latents of two samples of one patient
correlate 0.8. Label logits are *additive over modalities*, with no interactions:

    L[t] = b[t] + scale * sum_m sum_k W[t,k] * v[m,k] * e[m,k],   y[t] ~ Bernoulli(sigmoid(L[t]))

(drawn as y = 1[L + logistic noise > c], with c the sample quantile that makes the cohort's
prevalence exactly the expected one: small cohorts such as ccRCC keep their ~12 % negatives)

so each modality holds its own share of the signal (the private u) plus a redundant share
(the shared z), late fusion of per-modality logits is the right model, and all modalities
together beat any single one. b[t] is solved (Gauss-Hermite) to hit the target prevalence.
``v[m,k]`` says how much modality m sees of concept k (0 = not at all); which modality sees
what follows clinical sense (e.g. only the EHR sees the 48 h trajectory, only the note the
social situation, the lateral view hardly shows scoliosis, WSI shows grade, CT burden).

What each modality renders from its evidence, and which expert aspect sees it:

* CXR (``cxr.py``): global intensity / shape (heart size, effusion, hyperinflated dark
  lungs, perihilar edema haze, lobar consolidation, spine curvature) -> intensity and
  shape statistics; local texture and small objects (nodules, calcified granulomas,
  reticular fibrosis, plate atelectasis, patchy opacities, pneumothorax line, lines and a
  pacemaker, hiatal hernia air-fluid level) -> texture features and patch-level ViT tokens.
* Notes (``notes.py``): positive mentions graded by severity words, hedged mentions near the
  threshold, and pertinent negatives for low evidence ("no pleural effusion", "effusion has
  resolved") that contain the finding word, so bag-of-words/TF-IDF is partly misled while a
  sentence encoder reads the negation. Wording varies over templates and synonyms.
* EHR (``ehr.py``): concept evidence moves variable *levels* (heart rate, pressures,
  lactate, creatinine, WBC...), *trends* over 48 h (``trajectory``: falling pressure,
  rising lactate/creatinine) and *variability* (fever spikes, heart-rate variability) ->
  summary statistics and catch22 dynamics. Vitals ~hourly, GCS every 2-4 h, labs every
  6-24 h (more often when sick), blood gases mostly in respiratory failure; empty hours are
  absent rows; the series stops at discharge.
* CT (``ct.py``): tumour size (burden) and necrotic, heterogeneous core (necrosis) on one
  kidney at a random depth, elongated in z so several of 8 uniform axial slices cut it;
  liver metastases as hypodense spots.
* WSI (``wsi.py``): grade -> nuclear density, size and hyperchromasia, less clear
  cytoplasm; necrosis -> necrotic patches. Colour / texture density of 2 um/px tissue tiles.

Sample-specific quality: per sample and modality, ~10-15 % of copies are poor (quality
q in (0, 0.35)); the renderer then sees ``q*e + sqrt(1-q^2)*noise`` (weak signal) and shows
it visibly: washed-out, blurred, noisy radiographs; non-contrast noisy CT with streaks;
faded out-of-focus slides; short uninformative notes; sparse EHR with artefacts. A
sample-specific fusion weight can learn to trust the other modalities there.

Missingness (structured, never all modalities; 30-70 % of samples lack at least one):
OpenI - lateral view missing more often for sicker patients (portable AP), reports of one
site mostly missing, a few lateral-only studies. MIMIC - lateral missing for sicker
patients, fewer films for the less sick, one site's notes not linked, no EHR extract for
stays under 12 h. ccRCC - no slide for non-surgical (metastatic or frail) patients, CT done
elsewhere for one site's referrals, some notes not linked.

Shift (``shift`` > 0, for external-validation cohorts): label biases move (higher MIMIC
risks, more OpenI findings, lower ccRCC survival), radiograph exposure/gamma/noise change,
CT calibration offset, noise and weaker enhancement, H&E stain vectors change, EHR device
calibration and reference ranges move, and notes switch to alternative vocabulary
(abbreviations, synonyms) with probability ``min(0.85, 0.6 * shift)``.

Evidence settings (``evidence``, config ``demo: {evidence: ...}``, CLI ``--evidence``)
-----------------------------------------------------------------------------------
How the modalities share the label signal; each setting favours a different kind of fusion.
``redundant`` and ``dominant`` rescale the logits so that their spread (hence the Bayes
difficulty and the bias b[t]) is that of ``additive``; label prevalences are the same in all.

``additive``  (default; the model above, output byte-identical to the generator without the
           setting) independent private evidence u plus a shared part z, logits additive
           over modalities: late fusion of per-modality logits is the right model.
``redundant``  the modalities are views of one latent: a = 0.95 and every concept loads 0.9
           on the global factor, so e[m,k] of any two modalities correlate ~0.9 and any
           one good modality predicts about as well as all of them (fusion adds little).
``dominant``  per sample one modality d, drawn uniformly, carries the labels:
           L[t] = b[t] + sd_t * c[d,t] / sd(c[d,t]) (c[d,t] its additive share, sd_t the
           additive logit spread); the other modalities are rendered as visibly poor copies
           (quality q in (0, 0.35): mostly noise) and d is always present. A sample-specific
           weight that reads the copies' quality should win; a fixed average dilutes d.
``informative-missingness``  the additive signal, and on top of the kind's own missingness
           every modality is dropped with probability logistic(-2 + 1.5 s), s the
           standardised fraction of adverse outcomes of the sample (MIMIC: deaths, long stays,
           readmissions; OpenI: findings; ccRCC: death): sicker samples lose modalities more
           often, so the missingness pattern itself predicts the labels.

A non-default setting is recorded in the manifest's ``meta.extra["evidence"]``.
"""

from cohorts.demo.generate import DEFAULT_EVIDENCE, EVIDENCE, KINDS, generate_cohort

__all__ = ["DEFAULT_EVIDENCE", "EVIDENCE", "KINDS", "generate_cohort"]
