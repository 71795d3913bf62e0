"""Placeholder while this command is being written; it registers nothing yet."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    del subparsers
