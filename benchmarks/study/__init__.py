"""The adapter studies behind docs/benchmarks.md, split by concern.

Shared: `sweep` (grid points, config hash, the learning-rate rule), `store` (the results CSV, written atomically),
`pool` (the resumable run loop, in worker processes) and `page` (the generated blocks of a docs page and their
figures). Each study has its own package: `pareto` (the ViT transfer study, benchmarks/pareto.py) and
`diffusion_transfer` (the UNet denoising study, benchmarks/diffusion_transfer.py), each with `grid`, `runner`,
`analysis` and `markdown`; and `peft` (PEFT's few-parameter methods beside SuperLoRA on whole qkv,
benchmarks/peft_baselines.py), with `matching`, `plan`, `training`, `runner`, `analysis` and `markdown`.
"""
