"""What an agent is started with (``python3 -m kvmlite.agent --help``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .users import Identity, current_identity


@dataclass(frozen=True)
class AgentConfig:
    """The agent's settings; the command line builds one, tests build their own.

    ``workdir``: where commands run and relative paths resolve when a
    request names no directory.  ``env``: values every command's environment
    gets over the defaults (users.base_env), under the request's own.
    ``identity``: who the agent runs as.  ``keep_exited``: how many exited
    background processes stay in the table for a late wait.
    ``handshake_timeout``: seconds a new stream may take to send its hello and
    request.  ``max_streams``: streams served at once; more get ``busy``.
    """

    workdir: str = field(default_factory=os.getcwd)
    env: dict[str, str] = field(default_factory=dict)
    identity: Identity = field(default_factory=current_identity)
    keep_exited: int = 256
    handshake_timeout: float = 30.0
    max_streams: int = 512

    def resolve(self, path: str) -> str:
        """``path`` made absolute against ``workdir`` (never normalised: no '..' games)."""
        return path if os.path.isabs(path) else os.path.join(self.workdir, path)
