"""`jobq keys create|list|revoke`: manage API keys in PostgreSQL (DATABASE_URL)."""

from __future__ import annotations

import argparse
import json

from app.auth import keys
from app.config import Settings
from app.db import make_engine, make_session_factory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`keys ACTION [NAME] [--scope read|submit] [--json]`."""
    parser.add_argument("action", choices=["create", "list", "revoke"])
    parser.add_argument("name", nargs="?", help="key name (create, revoke)")
    parser.add_argument("--scope", choices=list(keys.SCOPES), default="submit")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Create (prints the key once), list, or revoke keys."""
    engine = make_engine(settings.database_url, pool_size=1)
    sessions = make_session_factory(engine)
    try:
        if args.action == "list":
            rows = [
                {
                    "name": k.name,
                    "scope": k.scope,
                    "created_at": k.created_at.isoformat(),
                    "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                }
                for k in keys.list_keys(sessions)
            ]
            if args.json:
                print(json.dumps(rows))
            for r in [] if args.json else rows:
                state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
                print(f"{r['name']:<24} {r['scope']:<7} {r['created_at']}  {state}")
            return 0
        if not args.name:
            print(f"jobq keys {args.action}: a NAME is required")
            return 2
        if args.action == "create":
            key = keys.create_key(sessions, args.name, args.scope)
            if args.json:
                print(json.dumps({"name": args.name, "scope": args.scope, "key": key}))
            else:
                print(key)
                print(f"# {args.scope} key {args.name!r}: shown once, store it now")
            return 0
        keys.revoke_key(sessions, args.name)
        print(f"revoked {args.name!r}")
        return 0
    finally:
        engine.dispose()
