"""Runs: create and execute a scoring run (`execute`), background workers, heartbeats and
cancellation (`jobs`), cost estimates and progress (`progress`), re-scoring from stored
features (`rescore`) and saved selections (`selections`).

May import: `curation.config`, `curation.data`, `curation.engine`, `curation.methods`, and
`curation.review` only lazily where a run refreshes what review built from it (maps, curation).
"""
