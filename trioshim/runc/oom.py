"""The OOM watcher moved to the shared layer, :mod:`trioshim.shim.cgroups.oom` (the wasm shim
uses it too); this name stays for the code that imports it from here."""

from trioshim.shim.cgroups.oom import OOMWatcher, open_oom_watcher

__all__ = ["OOMWatcher", "open_oom_watcher"]
