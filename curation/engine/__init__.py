"""The scoring engine: models (`model`: tokenising and batching; `models`: named models and
loading; `tiny`: the offline demo model; `settings`: the model and warmup dataclasses, free of
torch), the LoRA warmup (`warmup`), training and
validation objectives (`objectives`), per-example gradients (`grads`), random projections
(`projection`), the on-disk feature format (`features`) and the workspace feature store
(`featuresets`), influence scoring (`influence`), ranking and budgets (`select`), sampling
for NICE (`generation`), sharding (`distributed`) and projection fidelity (`fidelity`).

May import: `curation.errors`, `curation.workspace`, `curation.data`, and itself. It knows no
selection method by name and nothing about runs.
"""
