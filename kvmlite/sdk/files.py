"""``sandbox.files``: E2B's ``Filesystem`` over the agent client.

File operations run as the agent (root in the guest); files written get
the mode the agent gives them.  Paths are the guest's."""

from __future__ import annotations

from typing import IO, Any, Literal

from kvmlite.agent.client import AgentClient, FileStream
from kvmlite.agent.results import EntryInfo


class Filesystem:
    """``read``, ``write``, ``list``, ``exists``, ``get_info``, ``remove``,
    ``rename``, ``make_dir``."""

    def __init__(self, agent: AgentClient) -> None:
        self._agent = agent

    def read(self, path: str, format: Literal["text", "bytes", "stream"] = "text") -> str | bytes | FileStream:
        """The file's contents: text (UTF-8, undecodable bytes replaced),
        bytes, or a stream of chunks for large files."""
        return self._agent.read(path, format=format)

    def write(self, path: str, data: str | bytes | IO[Any]) -> EntryInfo:
        """Write (create or replace) ``path``; missing parent directories are made."""
        return self._agent.write(path, data)

    def list(self, path: str, depth: int = 1) -> list[EntryInfo]:
        return self._agent.list(path, depth=depth)

    def exists(self, path: str) -> bool:
        return self._agent.exists(path)

    def get_info(self, path: str) -> EntryInfo:
        return self._agent.get_info(path)

    def remove(self, path: str) -> None:
        """Remove a file, or a directory with everything in it."""
        self._agent.remove(path)

    def rename(self, old_path: str, new_path: str) -> EntryInfo:
        return self._agent.rename(old_path, new_path)

    def make_dir(self, path: str) -> bool:
        """Make ``path`` and its parents; False when it already existed."""
        return self._agent.make_dir(path)
