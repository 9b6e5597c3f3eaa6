"""Paper-ready tables and figures from the per-dataset metrics tables.

``python -m fusion.render tables --metrics results/*/metrics.parquet --out-dir results/tables``
``python -m fusion.render figures --metrics ... --predictions ... --out-dir results/figures``
``python -m fusion.render paper --config <json> --tables-dir results/tables --figures-dir results/figures``

``tables`` / ``figures`` write the main comparison (Table 1: ``main.*``, ``main_auroc``,
``fusion_weights``). ``paper`` writes every other table and figure of the paper's section 4
and appendices E/F that the config asks for (:func:`medmix.plan.paper_outputs` lists them;
the workflow declares exactly those files):

=================  =====================================================================
``experts``        Table E1: the expert committee per dataset and modality
``train_drop_one`` Table E2: one modality dropped in training at rate r
``test_drop_one``  Table E3: one modality dropped at test time
``train_random``   Table E4: every modality dropped at random in training, rate p
``test_random``    Table E5: random drop at test time
``structured``     beyond the paper: missing-not-at-random and replayed missingness
``efficiency``     Table E6: parameters, FLOPs, peak memory, Perf, EffScore
``ablation``       Table E7: structural ablations
``per_task``       Table E8: per-task results of multi-task datasets
``external``       Table 2: external validation
=================  =====================================================================

Figures: ``drop_one_{dataset}`` (Figure 2 / F1–F4), ``random_drop_{dataset}`` (Figure 3 /
F5–F8), ``ablation`` (Figure 4), ``pareto`` (Figure 5) and, beyond the paper,
``weights_{dataset}``: the distributions of MedMIX's router weights α and fusion weights β
per modality under each protocol.

Every table cell is mean ± std over seeds (test split; ``external`` for Table 2), the best
value per column within its group (a dataset, or a dataset × setting) in bold, and a header
line says which data and experts produced it; mean ± std is printed with three decimals.
The ``*-Large`` teacher references (a foundation model alone) sit in a block of their own and
are never ranked. Each table is written as ``.md``, ``.tex``, ``.csv`` (separate mean / std
columns, no blanking) and ``.html`` (the form the Snakemake report shows inline).

The modules, one job each:

- :mod:`~fusion.report.table_model`: the one table model (every table, Table 1 included);
- :mod:`~fusion.report.table_render`: one renderer per format (md, tex, csv, html);
- :mod:`~fusion.report.registry`: ``@register_table(stem, caption=..., inputs=...)`` and
  ``@register_figure(stem_pattern, inputs=...)``; the commands dispatch through it;
- :mod:`~fusion.report.tables`: one builder per table (:mod:`~fusion.report.tables.main`:
  Table 1 with its paired-bootstrap Δ AUROC columns);
- :mod:`~fusion.report.figures`: one drawing function per figure, in the house style of
  :mod:`~fusion.report.style` (journal column width, text ≥ 8 pt, a chance line on AUROC axes,
  PNG, SVG and PDF, the provenance in a sidecar ``<stem>.txt``);
- :mod:`~fusion.report.cells`: the metrics read and summarised over seeds;
- :mod:`~fusion.report.paper` and :mod:`~fusion.report.cli`: the commands.

To add a table: a module in ``tables/`` with a builder returning a
:class:`~fusion.report.table_model.Table`, decorated with ``@register_table``, imported in
:mod:`fusion.report.paper`; its stem in :func:`medmix.plan.paper_outputs`. A figure likewise
in ``figures/`` with ``@register_figure``.
"""
