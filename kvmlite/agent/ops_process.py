"""The agent's process requests: run, attach, signal, stdin, ps (docs/agent.md).

Each handler serves one stream after its hello and request, from the
stream's own thread; an OSError it lets out becomes the error reply.
"""

from __future__ import annotations

import signal as signals
from typing import Any, Callable

from .config import AgentConfig
from .errors import ProtocolError
from .processes import Process, ProcessTable, Subscriber, parse_run
from .protocol import (ATTACH, ATTACHED, BAD_ARGS, END, OK, PROCESSES, PS, RUN, SIGNAL,
                       STARTED, STDIN, UNEXPECTED, FrameType, batches, dump_json,
                       encode_batch, field)
from .wire import Stream

Handler = Callable[[Stream, dict[str, Any]], None]


class ProcessOps:
    """Process requests over one :class:`ProcessTable`."""

    def __init__(self, table: ProcessTable, config: AgentConfig) -> None:
        self.table = table
        self.config = config

    def handlers(self) -> dict[str, Handler]:
        return {RUN: self.run, ATTACH: self.attach, SIGNAL: self.signal,
                STDIN: self.stdin, PS: self.ps}

    def run(self, stream: Stream, msg: dict[str, Any]) -> None:
        """Start a command; stream its output and exit; feed it in-band stdin."""
        spec = parse_run(msg, self.config)
        proc = self.table.spawn(spec)
        owner = Subscriber(stream, owner=True)
        proc.attach(owner)
        started = owner.send(FrameType.MSG, dump_json({"type": STARTED, "pid": proc.pid}))
        proc.start()
        if not started:
            proc.detach(owner)
            return
        self._serve_owner(stream, proc, owner)

    def _serve_owner(self, stream: Stream, proc: Process, owner: Subscriber) -> None:
        """Read the run stream's STDIN frames until it ends (client gone or exit sent)."""
        try:
            while True:
                frame = stream.read()
                if frame is None:
                    return
                if frame.type is not FrameType.STDIN:
                    raise ProtocolError(UNEXPECTED, "only STDIN frames may follow a run "
                                                    f"request, got {frame.type.name}")
                self._feed(proc, frame.payload)
        finally:
            proc.detach(owner)

    @staticmethod
    def _feed(proc: Process, data: bytes) -> None:
        """In-band stdin: data, or an empty frame for EOF; a closed stdin drops it."""
        if not data:
            proc.close_stdin()
            return
        try:
            proc.write_stdin(data)
        except OSError:          # the command closed its stdin or exited
            pass

    def attach(self, stream: Stream, msg: dict[str, Any]) -> None:
        """Follow a process: its output from now on, then its exit."""
        proc = self.table.get(field(msg, "pid", int))
        sub = Subscriber(stream, owner=False)
        stream.send_message({"type": ATTACHED, **proc.info()})
        exit_msg = proc.attach(sub)
        if exit_msg is not None:
            stream.send_message(exit_msg)
            return
        try:
            frame = stream.read()          # EOF: the client left, or the exit was sent
            if frame is not None:
                raise ProtocolError(UNEXPECTED, "nothing may follow an attach request")
        finally:
            proc.detach(sub)

    def signal(self, stream: Stream, msg: dict[str, Any]) -> None:
        """Send a signal to a process's group (default) or to it alone."""
        proc = self.table.get(field(msg, "pid", int))
        sig = field(msg, "signal", int, int(signals.SIGKILL))
        if sig not in {int(s) for s in signals.valid_signals()} or sig == 0:
            raise ProtocolError(BAD_ARGS, f"signal: no signal {sig}")
        if not proc.signal(sig, field(msg, "group", bool, True)):
            raise ProcessLookupError(3, f"process {proc.pid} has exited")
        stream.send_message({"type": OK})

    def stdin(self, stream: Stream, msg: dict[str, Any]) -> None:
        """Out-of-band stdin: STDIN frames up to an empty one, then EOF if asked."""
        proc = self.table.get(field(msg, "pid", int))
        eof = field(msg, "eof", bool, False)
        if stream.receive_data(FrameType.STDIN, proc.write_stdin):
            if eof:
                proc.close_stdin()
            stream.send_message({"type": OK})

    def ps(self, stream: Stream, msg: dict[str, Any]) -> None:
        """The agent's processes, running ones only unless ``all`` is true."""
        procs = self.table.list(include_exited=field(msg, "all", bool, False))
        items = [dump_json(p.info()) for p in sorted(procs, key=lambda p: p.started_at)]
        for run in batches(items):
            stream.writer.send_raw(encode_batch(PROCESSES, "processes", run))
        stream.send_message({"type": END, "count": len(items)})
