"""The client side of `orch`: spec files and the REST API, like kubectl."""
