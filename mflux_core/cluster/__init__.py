"""The studio over several machines or GPUs: the engine as a Ray Serve deployment (optional extra `cluster`).

`replica` runs on every replica (its own ModelManager), `engine` in the front process beside the page and the APIs,
`wire` is what travels between them. Nothing here is imported unless the studio starts with `--cluster`.
"""

import os

# `ray start` (Ray 2.60) protects a cluster with the token in ~/.ray/auth_token, and a driver sends it only in token
# mode, read when Ray is imported: hence here, before any module of this package imports ray.
os.environ.setdefault("RAY_AUTH_MODE", "token")
