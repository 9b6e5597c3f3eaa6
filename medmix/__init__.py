"""Shared plumbing for the MedMIX pipeline: atomic writes, config loading, logging."""
