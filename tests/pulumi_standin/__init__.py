"""A stand-in for the Pulumi CLI, for tests: see README.md."""
