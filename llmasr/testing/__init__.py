"""Helpers that build tiny, random-weight model directories in the on-disk formats real models use.

Used by the test-suite, the demo and recipe checks; nothing here downloads anything.
"""
