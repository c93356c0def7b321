"""medidd.privacy: DP for gradient matching (:mod:`.dp`), membership-inference maths
(:mod:`.mia`), the memorisation audit (:mod:`.memorisation`) and the PHI scan (:mod:`.phi`).

Submodules are imported explicitly (``from medidd.privacy.dp import DPConfig``) so that Opacus,
an optional extra, is only needed by code that asks for DP.
"""
