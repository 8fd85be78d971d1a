"""Kubelet settings every distribution renders alike: the kernel parameters kernel protection
needs, and the reservations of constrained gateway devices."""

from __future__ import annotations

# Kubelet reservations for constrained gateway devices (<= 1 GiB RAM): keep room for the OS
# and the distribution itself, and evict pods before the kernel OOM killer has to act.
GATEWAY_SYSTEM_RESERVED = {"cpu": "100m", "memory": "128Mi"}
GATEWAY_KUBE_RESERVED = {"cpu": "100m", "memory": "256Mi"}
GATEWAY_EVICTION_HARD = {"memory.available": "100Mi", "nodefs.available": "10%", "imagefs.available": "15%"}

# What the kubelet checks under protect-kernel-defaults (CIS hardening guide, host level).
KERNEL_PARAMS = {
    "vm.panic_on_oom": "0",
    "vm.overcommit_memory": "1",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
}
SYSCTL_FILE = "/etc/sysctl.d/90-kubelet.conf"


def render_sysctl() -> str:
    """The sysctl drop-in that keeps KERNEL_PARAMS across reboots."""
    return "# Kernel parameters the kubelet requires with protect-kernel-defaults (CIS).\n" + "".join(
        f"{k}={v}\n" for k, v in KERNEL_PARAMS.items()
    )


def sysctl_lines() -> str:
    """Install-script lines setting KERNEL_PARAMS now (needs the ``sysctl`` library)."""
    return "".join(f"ensure_sysctl {k} {v}\n" for k, v in KERNEL_PARAMS.items())
