"""Running untrusted reward code (NICE's unit-test rewards): `isolate` starts a jailed Python
process with limits and namespaces, `runner` is the source that runs inside it.

May import: `curation.errors` only (the runner imports nothing of the project).
"""
