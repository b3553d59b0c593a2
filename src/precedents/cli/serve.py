"""``precedents serve DIR``: the local web explorer over an explorer bundle (see :mod:`precedents.serve`)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..serve.command import run as serve

    return serve(args)
