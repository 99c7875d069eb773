"""The control plane: named VMs, their control sockets, and the protocol
the ``kvmlite list/stop/pause/resume/debug/stat`` commands speak (docs/control.md).

* :mod:`.registry` -- names, the runtime directory, live/stale detection;
* :mod:`.protocol` -- protocol v1: JSON lines, limits, error codes;
* :mod:`.ops` -- the operations and their argument checks;
* :mod:`.server` -- the VMM's side (:class:`~.server.ControlServer`);
* :mod:`.client` -- the client side (:class:`~.client.ControlClient`);
* :mod:`.cli`, :mod:`.render` -- what the commands share: options, output.

The operations themselves act on a VM through :mod:`kvmlite.vmm.control`.
"""
