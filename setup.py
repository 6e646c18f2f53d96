"""Shim for tools that need setup.py (Beam's --setup_file on Dataflow); metadata lives in pyproject.toml."""

from setuptools import setup

setup()
