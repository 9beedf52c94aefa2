"""The only code that knows Docker.

`base.py` is the `Backend` protocol the broker needs and the `Executor` protocol for running
commands; `docker_engine.py` implements the backend with docker-py (the one module that imports
`docker`) through the socket proxy; `ops.py` makes every Docker call a span and an audit event on
a fair, bounded worker pool; `agent_channel.py` (with `agent_calls.py`, `frames.py`) and
`docker_exec.py` are the two executors; `create_body.py` is the exact create request a sandbox is
made from, which the socket proxy checks; `commands.py` turns code into argv.
"""
