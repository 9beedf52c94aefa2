"""The broker and its parts: one sandbox per principal, made only from an allowed Decision.

`broker.py` is the facade the request path calls. Behind it: `registry.py` (who has which sandbox,
locks, quotas), `containers.py` (the Docker verbs on sandboxes; the one place a sandbox is
removed), `adoption.py` (the start-up sweep, adopting a principal's sandbox after a restart),
`pool.py` and `pool_keeper.py` (warm pools), `execution.py` (a command's run and what it did to
its sandbox), `model.py` (`Sandbox`) and `naming.py` (names and labels on the engine).
"""
