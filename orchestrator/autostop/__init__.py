"""Idle autostop: stop (or delete) an instance whose agent's reports show it idle (docs/lifecycle.md)."""
