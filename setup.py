"""Install: `pip install --no-build-isolation -e .` (torch must be installed first)."""

from setuptools import setup

setup()
