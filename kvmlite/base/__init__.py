"""What device models and the VMM share, beneath both: guest memory access
(``memory``), the event loop that serves notifications (``eventloop``) and
eventfds (``eventfd``).  Nothing here imports from ``kvmlite.devices`` or
``kvmlite.vmm``."""
