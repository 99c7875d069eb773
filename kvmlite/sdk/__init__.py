"""The sandbox SDK (docs/sdk.md): ``from kvmlite import Sandbox``."""

from kvmlite.agent.errors import (AgentConnectionError, CommandExitError, CommandTimeoutError,  # noqa: F401
                                  SandboxError)
from kvmlite.sdk.sandbox import Sandbox, SandboxInfo  # noqa: F401

__all__ = ["AgentConnectionError", "CommandExitError", "CommandTimeoutError", "Sandbox", "SandboxError", "SandboxInfo"]
