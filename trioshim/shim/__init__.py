"""The shim framework: actions, root nursery, plugins, publisher, reaper, signals, log."""
