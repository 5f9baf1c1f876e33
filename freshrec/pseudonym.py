"""``freshrec pseudonym USER_ID...``: the pseudonyms of user ids under the key the job uses
(``privacy.pseudonymize_users``), for the storefront to map its own ids."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from freshrec_common.privacy import PseudonymKeyError, load_key, pseudonymize
from freshrec_common.settings import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        key = load_key(settings.privacy.key_file)
    except PseudonymKeyError as exc:
        print(f"freshrec pseudonym: {exc}", file=sys.stderr)
        return 2
    for user_id in args.user_ids:
        print(f"{user_id}\t{pseudonymize(key, user_id)}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "pseudonym", help="print the pseudonyms of user ids (privacy.pseudonymize_users)")
    p.add_argument("user_ids", nargs="+", metavar="USER_ID")
    p.set_defaults(func=run)
