"""The ViT transfer study (benchmarks/pareto.py): `grid` (methods, budgets, tasks, counts, data split), `runner`
(results rows, pending runs, training one run, the study loop), `analysis` (curves, Pareto fronts, efficiency
factors, figures) and `markdown` (the tables and claims of docs/benchmarks.md, `analyse`, `plan`)."""
