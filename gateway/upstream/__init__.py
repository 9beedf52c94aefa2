"""Code mode's upstream MCP servers: the operator's upstreams file (`config`), the gateway's
long-lived clients to them (`clients`), and the Python modules `tools generate` writes for the
sandbox (`codegen`)."""

from gateway.upstream.clients import ToolsChanged, Upstreams
from gateway.upstream.codegen import GenerationReport, generate
from gateway.upstream.config import UpstreamConfig, load_upstreams, load_upstreams_text
from gateway.upstream.results import UpstreamResult, UpstreamTool
from gateway.upstream.transport import MAX_RESULT_BYTES

__all__ = [
    "MAX_RESULT_BYTES",
    "GenerationReport",
    "ToolsChanged",
    "UpstreamConfig",
    "UpstreamResult",
    "UpstreamTool",
    "Upstreams",
    "generate",
    "load_upstreams",
    "load_upstreams_text",
]
