"""The report's figures, one family per module, each registered with its stem pattern
(:func:`fusion.report.registry.register_figure`) and drawn in the house style of
:mod:`fusion.report.style`; :mod:`fusion.report.paper` imports them all."""
