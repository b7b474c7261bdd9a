"""Downstream evaluation: protocols, resumable training, and the fixed image sets compared against."""
