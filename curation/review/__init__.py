"""What a curator looks at and decides after scoring: Explore's data (`explore`), UMAP maps
(`maps`), pins, excludes and the curated selection (`curate`), run comparison (`compare`),
the held-out check (`check`; its measures are `curation.methods.heldout`, which `auto` shares), export and dataset cards (`export`,
trainer formats in `trainers`) and Markdown-safe text (`mdsafe`).

May import everything below it: `curation.data`, `curation.engine`, `curation.methods`,
`curation.runs`. Never `curation.bench`.
"""
