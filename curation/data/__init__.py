"""The data layer: reading user files (`io`), the database (`store`, `migrations`), importing
pools and preference sets (`imports`), queries and edits over them (`catalog`), preference
pair checks (`pairs`) and the embedded demo (`demo`).

May import: `curation.errors`, `curation.workspace`, and itself. Nothing here loads a model.
"""
