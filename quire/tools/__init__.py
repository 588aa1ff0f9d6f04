"""Thin wrappers over external programs. The only package that imports plumbum."""
