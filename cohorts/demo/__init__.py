"""Synthetic demo cohorts (docstring filled in below)."""

from cohorts.demo.generate import KINDS, generate_cohort

__all__ = ["KINDS", "generate_cohort"]
