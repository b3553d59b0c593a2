"""``precedents serve DIR``: run the explorer on 127.0.0.1 and print the URL that carries the access token."""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import socket
import sys
from pathlib import Path

from .._validation import PrecedentsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="folder written by precedents demo/explain (holding explorer/), or the bundle")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="required to bind an address other than loopback (anyone who can reach it and has "
                             "the token can read the data and post decisions)")
    parser.add_argument("--db", default=None, help="SQLite file of review decisions (default DIR/review.sqlite)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .app import create_app
    except ImportError as err:
        raise PrecedentsError(f"precedents serve needs the serve extra ({err.name} is missing): "
                              "pip install 'precedents[serve]'.") from err
    loopback = _is_loopback(args.host)
    if not loopback and not args.allow_remote:
        raise PrecedentsError(f"--host {args.host} is not a loopback address: the explorer would be reachable from "
                              "other machines. Add --allow-remote if that is what you want.")
    if not 0 <= args.port <= 65535:
        raise PrecedentsError(f"--port must lie in 0..65535, got {args.port}.")
    token = secrets.token_urlsafe(32)
    app = create_app(Path(args.dir), db=args.db, token=token, check_host=loopback)
    family = socket.AF_INET6 if ":" in args.host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit TCP_NODELAY: a response written in two parts (headers, body) is not held back
    # by Nagle's algorithm waiting for the client's delayed ACK (a 40 ms stall per request otherwise)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((args.host.strip("[]"), args.port))
    except OSError as err:
        raise PrecedentsError(f"cannot bind {args.host}:{args.port} ({err.strerror}); try --port 0.") from err
    sock.listen(128)
    port = sock.getsockname()[1]
    shown = f"[{args.host.strip('[]')}]" if family == socket.AF_INET6 else args.host
    ex = app.state.explorer
    if not loopback:
        print(f"WARNING: serving on {args.host}, reachable from other machines; the token is the only protection "
              "and travels unencrypted over plain HTTP.", file=sys.stderr, flush=True)
    print(f"precedents serve: {ex.bundle.manifest['title']} ({ex.bundle.n_test} test points, "
          f"{ex.bundle.n_train} training examples; decisions in {ex.store.path})", flush=True)
    print(f"open http://{shown}:{port}/?token={token}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="precedents serve", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except PrecedentsError as err:
        print(f"precedents serve: error: {err}", file=sys.stderr)
        return 2
