"""kvmlite's sandbox agent, its wire protocol and the host's client.

The agent (``python3 -m kvmlite.agent``) runs inside a sandbox guest with
the host's own python3, serves commands and files over virtio-vsock, and
uses the standard library only: nothing here imports the rest of kvmlite.
The host talks to it through :class:`kvmlite.agent.client.AgentClient`.
See docs/agent.md.
"""

AGENT_VERSION = "0.1.0"
