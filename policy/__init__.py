"""The policy engine: a pure library that turns (principal, action, policy) into a Decision.

No Docker, no network: the only I/O is reading policy files.
"""

from policy.engine import PolicyEngine, evaluate
from policy.errors import PolicyError, PolicyLoadError
from policy.loader import default_policy_path, load_policy, load_policy_text
from policy.model import ExecLimits, Policy, Profile, SandboxSpec
from policy.types import Action, Allowed, Decision, Denied, Principal

__all__ = [
    "Action",
    "Allowed",
    "Decision",
    "Denied",
    "ExecLimits",
    "Policy",
    "PolicyEngine",
    "PolicyError",
    "PolicyLoadError",
    "Principal",
    "Profile",
    "SandboxSpec",
    "default_policy_path",
    "evaluate",
    "load_policy",
    "load_policy_text",
]
