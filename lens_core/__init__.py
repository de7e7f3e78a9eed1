"""LENS pipeline."""
