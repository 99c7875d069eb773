"""The default guest: what ``kvmlite setup`` prepares and ``kvmlite run`` boots.

* :mod:`.setup` — ``default_guest()`` (``shares=True``: the 9p-capable guest),
  ``prepare_guest()``, the manifest;
* :mod:`.kernel`, :mod:`.debian` — the kernel: the host's, or a Debian package;
* :mod:`.kmod`, :mod:`.elf` — module dependencies and load order;
* :mod:`.initramfs`, :mod:`.cpio`, :mod:`.busybox`, :mod:`.initscript`,
  :mod:`.exithelper` — the initramfs and its ``/init``;
* :mod:`.netinit` — the init's network setup (``kvmlite.net=``) and udhcpc's script;
* :mod:`.shareinit` — the init's virtio-9p shares (``kvmlite.9p=``), a 9p root,
  the tmpfs overlay (``kvmlite.overlay=1``) and the second stage after ``switch_root``;
* :mod:`.cmdline` — the kernel command-line options the init reads;
* :mod:`.rootfs` — ext4 root disk images.

See docs/guest.md.
"""
