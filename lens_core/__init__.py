"""LENS pipeline."""

__version__ = "0.1.0"  # pyproject.toml's [project] version (tests/test_package_map.py compares them)
