"""Helpers shared by the layers: input checks, enums, embedded datasets, batch handling."""
