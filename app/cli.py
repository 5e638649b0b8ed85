"""The `tiermem` command: serve, check-config, bench."""

from __future__ import annotations

import argparse
import logging
import sys

from app.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiermem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="overrides TIERMEM_HOST")
    serve.add_argument("--port", type=int, help="overrides TIERMEM_PORT")
    sub.add_parser("check-config", help="validate TIERMEM_* settings and print them")
    # The benchmark parses its own options, --help included.
    sub.add_parser(
        "bench",
        help="HTTP latency against the 50 ms target (--help for options)",
        add_help=False,
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from benchmarks.latency import main as bench

        return bench(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"tiermem: invalid configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "check-config":
        print(settings.model_dump_json(indent=2))
        return 0
    return _serve(settings, args.host, args.port)


def _serve(settings: object, host: str | None, port: int | None) -> int:
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    assert isinstance(settings, Settings)
    bind_host = host or settings.host
    bind_port = port or settings.port
    print(f"tiermem listening on http://{bind_host}:{bind_port}", flush=True)
    uvicorn.run(
        create_app(settings),
        host=bind_host,
        port=bind_port,
        log_level=settings.log_level.lower(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
