"""Child process that runs the pyinfra deploys: ``python -m careflow_ha.pyinfra_deploys``.

pyinfra runs on gevent and patches the standard library for it, so it runs in
its own process (as ansible-playbook does), never inside the CLI or pytest.
Secrets arrive in the environment (CAREFLOW_*), never on the command line.
Exit codes: 0 done, 2 bad inventory (one line on stderr), 1 a host failed.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from careflow_ha.errors import CareflowError  # noqa: E402
from careflow_ha.pyinfra_deploys.deploy import deploy_cluster  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m careflow_ha.pyinfra_deploys")
    parser.add_argument("-i", "--inventory", type=Path, required=True)
    parser.add_argument("-e", "--extra-var", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ssh-config", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="report what would change; change nothing")
    parser.add_argument("--result", type=Path, required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    extra = {}
    for item in args.extra_var:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: -e {item!r} must be KEY=VALUE", file=sys.stderr)
            return 2
        extra[key] = value
    try:
        result = deploy_cluster(args.inventory, extra, args.ssh_config, dry_run=args.dry_run)
    except CareflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    args.result.write_text(result.to_json())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
