"""``gslb ca init | issue``: the mesh CA on the command line.

```
gslb ca init  --dir /etc/gslb/mesh --trust-domain mesh.example.com
gslb ca issue --dir /etc/gslb/mesh --cluster eu-west --hours 24
```

``cryptography`` is imported only when a ``ca`` command runs, so ``gslb serve`` starts no slower.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_ca_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = subparsers.add_parser("ca", help="mesh CA for cluster-link gateways")
    sub = ca.add_subparsers(dest="ca_command", required=True)

    init = sub.add_parser("init", help="create the root key and certificate")
    init.add_argument("--dir", required=True, type=Path, help="CA directory (ca.pem, ca.key)")
    init.add_argument("--trust-domain", required=True, help="SPIFFE trust domain, e.g. mesh.example.com")
    init.add_argument("--days", type=int, default=3650, help="root validity in days (default 3650)")
    init.add_argument("--force", action="store_true", help="replace an existing CA")

    issue = sub.add_parser("issue", help="issue a gateway certificate for one cluster")
    issue.add_argument("--dir", required=True, type=Path, help="CA directory made by 'gslb ca init'")
    issue.add_argument("--cluster", required=True, help="cluster name (one DNS label)")
    issue.add_argument("--hours", type=float, default=24.0, help="validity in hours (default 24)")
    issue.add_argument("--intermediate", action="store_true", help="sign through a per-cluster intermediate CA")
    issue.add_argument("--out", type=Path, help="output directory (default DIR/clusters/NAME)")


def cmd_ca(args: argparse.Namespace) -> int:
    from clusterlink.ca import init_ca, issue
    from clusterlink.identity import load_cert_info

    try:
        if args.ca_command == "init":
            ca = init_ca(args.dir, args.trust_domain, days=args.days, force=args.force)
            print(f"CA for trust domain {ca.trust_domain}: certificate {ca.cert}, key {ca.key}")
            return 0
        files = issue(args.dir, args.cluster, hours=args.hours, intermediate=args.intermediate, out=args.out)
        info = load_cert_info(files.cert)
    except (ValueError, OSError) as exc:
        print(f"gslb ca {args.ca_command}: {exc}", file=sys.stderr)
        return 1
    print(f"{', '.join(info.spiffe)} valid until {info.not_after:%Y-%m-%d %H:%M:%S} UTC: "
          f"certificate {files.cert}, key {files.key}, trust bundle {files.ca}")
    return 0
