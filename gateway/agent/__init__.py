"""What runs inside the sandbox, standard library only, installed read-only in the sandbox image
(gateway/setup/image_recipe.py): the agent (sandbox_agent.py with protocol.py and processes.py, as
/opt/sandbox-gateway/sgw_agent/, started by launcher.py as /opt/sandbox-gateway/agent.py) and the
file helper (file_helper.py, as /opt/sandbox-gateway/files.py)."""
