"""The two adapter studies behind docs/benchmarks.md, split by concern.

Shared by both: `sweep` (grid points, config hash, the learning-rate rule), `store` (the results CSV, written
atomically), `pool` (the resumable run loop, in worker processes) and `page` (the generated blocks of a docs page).
Each study has its own package: `pareto` (the ViT transfer study, benchmarks/pareto.py) and `diffusion_transfer`
(the UNet denoising study, benchmarks/diffusion_transfer.py), each with `grid`, `runner`, `analysis` and `markdown`.
"""
