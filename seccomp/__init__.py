"""The seccomp profiles a policy can name (`sandbox.seccomp: NAME` is `NAME.json` here).

The JSON files are package data: `gateway.backend.create_body` reads them with importlib.resources,
so an installed wheel carries them. `build_profile.py` builds `sandbox.json`; README.md says what
each rule refuses and why.
"""
