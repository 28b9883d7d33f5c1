"""trioshim: a containerd runtime-v2 shim on Trio.

``trioshim.ttrpc`` (the RPC library), ``trioshim.shim`` (the shim framework) and
``trioshim.runc`` (the runc task service, ``containerd-shim-trioshim-v2``).
"""

__version__ = "0.1.0"
