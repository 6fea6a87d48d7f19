"""`diffinv bench`: methods × triplet datasets → B′ images, per-triplet scores, summaries, report.

datasets.py  shapes / folder / InstructPix2Pix triplets
methods.py   method specs: the registered methods (`method.METHODS`), Difference Inversion's variants, sets
build.py     each spec's config, model and words, and the method built through the registry
metrics.py   directional scores (CLIP, DINOv2, any embedder), similarity to a ground truth
run.py       the resumable, shardable runner
results.py   results.jsonl, run.json, the run directory's lock and the work claims (torch-free)
report.py    summary.md / summary.csv / report.html with 95 % intervals (torch-free)
plots.py     loss curves as SVG (torch-free)
command.py   `diffinv bench run` / `diffinv bench report` from parsed arguments
"""
