"""Importing this package registers every built-in expert (see ``extractors.registry``)."""

from extractors.experts import image, slide, text, timeseries, volume  # noqa: F401
