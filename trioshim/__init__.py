"""trioshim: a containerd runtime-v2 shim on Trio (ttrpc library, shim framework, runc task service)."""

__version__ = "0.1.0"
