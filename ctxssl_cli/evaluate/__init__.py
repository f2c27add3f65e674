"""Evaluation on cached embeddings (SPEC §4): the numbers, tables and plots of `ctxssl evaluate`.

- metrics.py   R² (sklearn and paper variants), retrieval ranks -> MRR / H@k, weighted-kNN top-1
- probes.py    fixed evaluation pairs, the R² pair probes, the linear classification probe
- factors.py   the R² probe of each factor of an action schema, and how reports name factors and modes
- report.py    report.json / report.md, rich tables
- plots.py     R² and retrieval against context length (PNG)
- pipeline.py  the protocol end to end (embeddings once -> every metric -> one report dict)
- baseline.py  the same report for a baseline run (SimCLR, VICReg, EquiMod, SIE, SEN): on h, MRR via the predictor
- compare.py   several runs' reports side by side with the paper's Table 1 (`ctxssl compare`)

Import from the submodules; this package imports nothing, so that loading one piece (say, metrics in a
test) does not pull in matplotlib.
"""
