"""The PEFT few-parameter baselines beside SuperLoRA on whole-qkv targets (benchmarks/peft_baselines.py):
`matching` (target layers, budget-to-config matching, PEFT configs, SuperLoRA whole-qkv points), `plan` (the
matched configs checked against PEFT's own counts, and their markdown), `training` (one PEFT or SuperLoRA run),
`runner` (results rows, the per-point lr sweep's pending runs, the study loop), `analysis` (chosen-lr summaries,
bootstrap intervals, the best method per budget, the figure) and `markdown` (the tables of docs/benchmarks.md,
`analyse`)."""
