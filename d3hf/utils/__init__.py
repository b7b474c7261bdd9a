"""Shared helpers: atomic I/O, output folders, seeds, progress, environment records, allocator tuning."""
