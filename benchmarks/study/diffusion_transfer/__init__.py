"""The UNet denoising study (benchmarks/diffusion_transfer.py): `grid` (methods, budgets, study sizes, counts),
`runner` (results rows, pending runs, fine-tuning one run, the study loop, timing), `analysis` (curves, LoRA's
interpolated front, the headline factor, figures) and `markdown` (its section of docs/benchmarks.md, `analyse`,
`plan`)."""
