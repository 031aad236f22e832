"""The study's statistical analysis (pure: pandas, statsmodels, scipy, tableone; no web).

``plan`` is the statistical analysis plan's decisions, declared once (thresholds, models,
which time point answers which question); ``dataset`` turns cases into analysis-ready long
tables with their dictionary; ``models`` computes every table of the report; ``figures``
draws its figures; ``report`` assembles them. ``docs/statistical-analysis-plan.md`` is the
plan in prose, and cites the same constants.
"""
