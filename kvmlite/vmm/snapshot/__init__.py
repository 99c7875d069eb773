"""Snapshot, restore and fork of a VM (docs/snapshot.md)."""
