"""Measures the stand-in against Pulumi's own Python Automation API tests: see run_sdk_tests.py."""
