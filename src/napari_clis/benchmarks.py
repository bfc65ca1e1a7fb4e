"""Benchmarks (``napari-clis bench ...``): filled in below."""


def add_parser(sub):
    pass


def run(args):
    return 0
