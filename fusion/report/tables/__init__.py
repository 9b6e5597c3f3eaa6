"""The report's tables, one builder per module, each registered with its stem and caption
(:func:`fusion.report.registry.register_table`); :mod:`fusion.report.paper` imports them all."""
