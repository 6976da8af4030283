"""Two versions of sealgate side by side on 4 KiB PUTs and GETs: CPU per request, alternating
rounds in the same minutes, so that a machine that is busy or slow shows in both columns alike.

    python benchmarks/ab_small.py OTHER_TREE [--rounds 5] [--seconds 4] [--connections 16]

OTHER_TREE is a checkout of another commit (``git worktree add --detach /tmp/old COMMIT``); this
tree is the other side. Both serve the same in-memory sink with one worker each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import client, procs  # noqa: E402
from benchmarks.client import Target  # noqa: E402

SIZE = 4096
BUCKET = "ab-small"


async def measure(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    other = str(Path(args.other).resolve())
    out: dict[str, dict[str, list[float]]] = {"this": {"PUT": [], "GET": []}, "other": {"PUT": [], "GET": []}}
    with tempfile.TemporaryDirectory() as tmp, procs.servers(Path(tmp)) as servers:
        sink = servers.start_sink("fast")
        files = servers.prepare_sealgate_files()
        gates = {
            "this": servers.start_sealgate(files, sink.endpoint, tag="-this"),
            "other": servers.start_sealgate(files, sink.endpoint, tag="-other", env={"PYTHONPATH": other}),
        }
        targets = {}
        for name, gate in gates.items():
            procs.wait_healthy(gate, files["ca"])
            targets[name] = Target(name, gate.endpoint, str(files["ca"]), procs.CLIENT_AKID, procs.CLIENT_SECRET)
        keys = [f"k{i:04d}" for i in range(args.connections * 4)]
        body = client.body_bytes(SIZE)
        async with client.session_for(targets["this"]) as session:
            await client.create_bucket(session, targets["this"], BUCKET)
        for r in range(args.rounds):
            for name in ("this", "other") if r % 2 == 0 else ("other", "this"):
                t, gate = targets[name], gates[name]
                for method in ("PUT", "GET"):
                    signed = client.presign_small(t, BUCKET, method, keys, SIZE)
                    before = procs.cpu_seconds(gate.pid)
                    res = await client.small_load(
                        t,
                        method,
                        signed,
                        connections=args.connections,
                        seconds=args.seconds,
                        warmup=0.5,
                        body=body if method == "PUT" else b"",
                    )
                    spent = procs.cpu_seconds(gate.pid) - before
                    out[name][method].append(spent / max(1, res.requests + res.errors) * 1e6)
                    if res.errors:
                        print(f"  {name} {method}: {res.errors} errors", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("other", help="a checkout of the other version")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--connections", type=int, default=16)
    args = p.parse_args(argv)
    out = asyncio.run(measure(args))
    print(f"sealgate CPU per 4 KiB request (us), 1 worker, {args.connections} connections, median of {args.rounds}")
    for method in ("PUT", "GET"):
        this, other = statistics.median(out["this"][method]), statistics.median(out["other"][method])
        print(f"  {method}: this tree {this:5.0f}   {args.other}: {other:5.0f}   this/other {this / other:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
