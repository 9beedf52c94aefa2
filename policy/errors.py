"""Exceptions of the policy package; `PolicyError` is the root."""

__all__ = ["GuardrailViolation", "PolicyError", "PolicyLoadError"]


class PolicyError(Exception):
    """Root of every error the policy package raises."""


class PolicyLoadError(PolicyError):
    """A policy file could not be read, parsed or validated.

    `source` is the file (or `<string>`), `key` the dotted path of the offending key, and
    `rule` the guardrail or schema rule that was broken.
    """

    def __init__(self, source: str, key: str, rule: str, detail: str = "") -> None:
        self.source = source
        self.key = key
        self.rule = rule
        self.detail = detail
        message = f"{source}: {key}: {rule}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class GuardrailViolation(PolicyLoadError):
    """A policy asked for something no policy file may switch on."""
