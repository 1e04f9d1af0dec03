"""Listings: keyset (cursor) pagination over instances and snapshots."""
