"""The ``minidl`` command line: ``plugins``, ``summary`` (and more as they land)."""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _cmd_plugins(args) -> int:
    from .plugins import get_plugin_manager

    manager = get_plugin_manager()
    errors = []
    try:
        manager.build_all()
    except Exception as e:  # a name clash: still list what loaded, then fail
        errors.append(str(e))
    plugins = [info.as_dict() for info in manager.plugins.values()]
    if args.json:
        print(json.dumps({"plugins": plugins, "errors": errors}, indent=2, sort_keys=True))
    else:
        for info in plugins:
            status = info["status"] + (f" ({info['error']})" if info["error"] else "")
            print(f"{info['name']}  [{info['package']} {info['version']}]  {status}")
            for kind, names in info["registered"].items():
                if names:
                    print(f"    {kind}: {', '.join(names)}")
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


def _cmd_summary(args) -> int:
    from .builder import build_model
    from .summary import format_table, summarize

    model = build_model(args.model)
    summary = summarize(model, batch=args.batch)
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="minidl", description="minidl: a small plugin-based deep-learning framework")
    parser.add_argument("--version", action="version", version=f"minidl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list plugins, their packages, status and what they register")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_cmd_plugins)

    p = sub.add_parser("summary", help="per-layer output shape, parameters, MACs, device and activation memory")
    p.add_argument("model", help="model YAML file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--batch", type=int, default=1, help="batch size for shapes and activation memory")
    p.set_defaults(run=_cmd_summary)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as e:  # ModelError and friends: the message names file, line and layer
        print(f"minidl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
