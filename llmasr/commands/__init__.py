"""The commands layer: each verb's argument parser and `main(argv)`, thin over the library.

A command parses its arguments, calls library functions (llmasr.train, llmasr.export, llmasr.data ...) and
prints. Nothing in the library imports this package or llmasr.cli (tests/test_layers.py enforces it).
"""
