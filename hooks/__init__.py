"""Deployer hook files: each exports ``handlers = HookSet(...)``; enable in config."""
