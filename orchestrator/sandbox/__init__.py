"""Sandbox hosts: real SSH hosts on this machine in namespaces of their own (host.py), and the
manager that makes them for `orch serve --simulate` (manager.py)."""
