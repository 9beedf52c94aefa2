"""A tool call below the transport: the same for the MCP tools and the embedding API.

`path.py` gives each call its audit context, the policy `Decision` (recorded fail-closed), the
principal's request rate and the tenant's concurrency budget; `service.py` (`ExecutionService`)
runs code and the sandbox tools on it, `file_tools.py` the workspace file tools; `inputs.py`
checks arguments; `results.py` holds the wire models; `explain.py` renders a Decision.
"""
