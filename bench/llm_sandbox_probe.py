"""Warm calls through llm-sandbox's Docker session, run as a script by an interpreter that has it.

    PYTHON bench/llm_sandbox_probe.py --image IMAGE --socket /var/run/docker.sock --samples N \
        --label key=value ...

It imports nothing of this project (the interpreter may be another venv's): llm-sandbox and the
Docker SDK only. One session on a local image (never pulled: a missing image is an error, and the
session keeps the image when it closes), opened once and kept open; then `samples` timed calls of
`run("print(1)")` (llm-sandbox copies the code into the container and runs `python FILE`) and of
`execute_command("true")`, after three untimed ones each. Prints one JSON document on stdout:
{"version", "container", "rows": {name: {"latencies_ms", "errors"}}}.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

#: What each row runs, and the stdout it must print.
CALLS = {"print(1)": "1\n", "true": ""}


def _timed(call: Callable[[], Any], expected: str, samples: int, warm_up: int) -> dict[str, Any]:
    latencies, errors = [], []
    for index in range(warm_up + samples):
        started = time.perf_counter()
        try:
            output = call()
        except Exception as exc:  # noqa: BLE001 - counted as this row's error
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            continue
        elapsed = (time.perf_counter() - started) * 1000
        if output.exit_code or (output.stdout or "") != expected:
            errors.append(f"exit code {output.exit_code}, stdout {str(output.stdout)[:80]!r}")
        elif index >= warm_up:
            latencies.append(elapsed)
    return {"latencies_ms": latencies, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--socket", default="/var/run/docker.sock")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--warm-up", type=int, default=3)
    parser.add_argument("--label", action="append", default=[], help="key=value on the container")
    args = parser.parse_args(argv)
    base_url = f"unix://{args.socket}"
    os.environ["DOCKER_HOST"] = base_url  # anything that builds its own client talks to the same engine
    import docker  # noqa: PLC0415 - imported by the interpreter that runs this script
    from llm_sandbox import SandboxSession  # noqa: PLC0415

    client = docker.DockerClient(base_url=base_url, timeout=60)
    client.images.get(args.image)  # raises ImageNotFound: no pull, ever
    labels = dict(label.split("=", 1) for label in args.label)
    result: dict[str, Any] = {"version": importlib.metadata.version("llm-sandbox"), "rows": {}}
    with SandboxSession(
        client=client,
        lang="python",
        image=args.image,
        keep_template=True,
        skip_environment_setup=True,
        runtime_configs={"labels": labels, "network_disabled": True},
    ) as session:
        result["container"] = session.container.id
        runs = {"print(1)": lambda: session.run("print(1)"), "true": lambda: session.execute_command("true")}
        for name, expected in CALLS.items():
            result["rows"][name] = _timed(runs[name], expected, args.samples, args.warm_up)
    client.close()
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
