"""``python3 -m kvmlite.agent``: run the sandbox agent (docs/agent.md)."""

import sys

from .server import main

sys.exit(main())
