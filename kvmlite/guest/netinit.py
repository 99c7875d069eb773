"""The default guest's network: the init's shell functions and udhcpc's script.

The VMM asks for a network with one kernel command-line word (docs/guest.md):

* ``kvmlite.net=dhcp`` — ``eth0`` up, then busybox ``udhcpc`` in the
  foreground with a bounded number of tries; :data:`UDHCPC_SCRIPT` applies
  the lease (address, default route, ``/etc/resolv.conf``);
* ``kvmlite.net=ADDR/PREFIX,GATEWAY[,DNS]`` — the same, fixed;
* absent — nothing but ``lo``.

Only ``eth0`` is configured.  Facts relied on:

* virtio_net registers its netdev from the driver's probe, which runs while
  ``insmod`` registers the driver (no asynchronous probing), and no udev
  renames it in the initramfs; so ``eth0`` normally exists once the modules
  are loaded, and the short wait for it only runs out when there is no NIC.
* udhcpc sends DHCPDISCOVER through an AF_PACKET socket (CONFIG_PACKET) and
  runs its script with ``$1`` = ``deconfig`` (at start and when the lease is
  lost), ``bound``, ``renew``, ``leasefail`` or ``nak``, the lease in the
  environment: ``interface``, ``ip``, ``subnet`` (dotted) and ``mask``
  (prefix length, busybox >= 1.21), ``broadcast``, ``router`` and ``dns``
  (space-separated lists), ``domain`` (networking/udhcp/dhcpc.c:
  fill_envp, udhcp_run_script).
* Debian's busybox-static runs its own applets before anything on PATH
  (FEATURE_SH_STANDALONE), so in the guest ``ip`` is always busybox's.

The applets used: ``ip`` (link, addr, route), ``udhcpc``, ``sleep``.
"""

from __future__ import annotations

UDHCPC_SCRIPT_PATH = "etc/udhcpc/default.script"   # busybox udhcpc's default -s
DHCP_TRIES = 5            # DHCPDISCOVERs before giving up (udhcpc -t)
DHCP_PAUSE = 1            # seconds between them (udhcpc -T)

# Sourced into /init after say() and debug(); setup_network runs after the
# modules are loaded and before the root is mounted.  The variables in
# capitals are constants that the unit tests override.
INIT_FUNCTIONS = r"""
NET_SYSFS=/sys/class/net
NET_ETH0_WAIT=20                 # tries 0.05 s apart
RESOLV_CONF=/etc/resolv.conf
UDHCPC_SCRIPT=/__UDHCPC_SCRIPT__

net_wait_eth0() {
    _tries=0
    while [ ! -e "$NET_SYSFS/eth0" ]; do
        [ $_tries -lt $NET_ETH0_WAIT ] || return 1
        sleep 0.05
        _tries=$((_tries + 1))
    done
}

net_dhcp() {
    set -- -i eth0 -f -q -n -t __DHCP_TRIES__ -T __DHCP_PAUSE__ -s "$UDHCPC_SCRIPT"
    if [ -n "$DEBUG" ]; then udhcpc "$@"; else udhcpc "$@" >/dev/null 2>&1; fi ||
        say "no DHCP lease on eth0"
}

# ADDR/PREFIX,GATEWAY[,DNS...]
net_static() {
    _spec=$1
    _ifs=$IFS; IFS=,; set -- $_spec; IFS=$_ifs
    case "$1" in
        */*) [ $# -ge 2 ] ;;
        *) false ;;
    esac || { say "kvmlite.net=$_spec: expected dhcp or ADDR/PREFIX,GATEWAY[,DNS]"; return 1; }
    ip addr add "$1" dev eth0 || { say "cannot give eth0 the address $1"; return 1; }
    ip route add default via "$2" dev eth0 || { say "cannot route through $2"; return 1; }
    shift 2
    [ $# -eq 0 ] || for _dns; do echo "nameserver $_dns"; done > "$RESOLV_CONF"
}

setup_network() {
    ip link set lo up
    [ -n "$NET" ] || return 0
    net_wait_eth0 || { say "kvmlite.net is set but there is no eth0: no network"; return 0; }
    ip link set eth0 up || { say "cannot bring eth0 up"; return 0; }
    case "$NET" in
        dhcp) net_dhcp ;;
        *) net_static "$NET" ;;
    esac
    debug "network: $NET"
}

# A chrooted command resolves names with the root disk's /etc/resolv.conf:
# cover it with the one written here (a bind mount; the disk is unchanged).
# A symlink is left alone: it may point anywhere outside the chroot.
net_share_resolv_conf() {
    [ -n "$NET" ] && [ -s "$RESOLV_CONF" ] || return 0
    [ -f "$1$RESOLV_CONF" ] && [ ! -L "$1$RESOLV_CONF" ] || return 0
    mount -o bind "$RESOLV_CONF" "$1$RESOLV_CONF"
}
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc event script of the kvmlite guest: applies a DHCP lease to
# $interface (see docs/guest.md).  $1 is the event; the lease is in the
# environment (ip, mask or subnet, broadcast, router, dns, domain).
set -f
RESOLV_CONF=${RESOLV_CONF:-/etc/resolv.conf}

# 255.255.255.0 -> 24
prefix_of() {
    _bits=0
    _ifs=$IFS; IFS=.; set -- $1; IFS=$_ifs
    for _octet; do
        case "$_octet" in
            255) _bits=$((_bits + 8)) ;; 254) _bits=$((_bits + 7)) ;; 252) _bits=$((_bits + 6)) ;;
            248) _bits=$((_bits + 5)) ;; 240) _bits=$((_bits + 4)) ;; 224) _bits=$((_bits + 3)) ;;
            192) _bits=$((_bits + 2)) ;; 128) _bits=$((_bits + 1)) ;;
        esac
    done
    echo $_bits
}

# Idempotent, so a renew that keeps the address does not drop connections.
set_address() {
    _prefix=${mask:-$(prefix_of "${subnet:-255.255.255.255}")}
    case " $(ip -4 -o addr show dev "$interface" 2>/dev/null) " in
        *" inet $ip/$_prefix "*) return 0 ;;
    esac
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$_prefix" ${broadcast:+broadcast "$broadcast"} dev "$interface"
}

set_route() {
    [ -n "$router" ] || return 0
    set -- $router
    ip route replace default via "$1" dev "$interface"
}

set_resolv_conf() {
    [ -n "$dns" ] || return 0
    {
        [ -z "$domain" ] || echo "search $domain"
        for _server in $dns; do echo "nameserver $_server"; done
    } > "$RESOLV_CONF"
}

case "$1" in
    deconfig)
        ip link set "$interface" up
        ip -4 addr flush dev "$interface"
        ;;
    bound|renew)
        set_address && set_route && set_resolv_conf
        ;;
esac
"""


def init_functions() -> str:
    """:data:`INIT_FUNCTIONS` with its constants filled in."""
    return (INIT_FUNCTIONS
            .replace("__UDHCPC_SCRIPT__", UDHCPC_SCRIPT_PATH)
            .replace("__DHCP_TRIES__", str(DHCP_TRIES))
            .replace("__DHCP_PAUSE__", str(DHCP_PAUSE)))
