"""What a 4 KiB PUT costs before sealgate's own request path: servers that do only the parts
the brief fixes, each on top of the one before, against sealgate itself, same load, same minutes.

    python benchmarks/small_floor.py [--seconds 5] [--rounds 3] [--connections 16]

  tls     aiohttp's server under uvloop over TLS: read the body, answer 200 with an ETag
  verify  + check the client's SigV4 signature (proxy.s3.sigv4.verify_request)
  sign    + sign the backend request as sealgate does, with botocore's signer (not sent)
  seal    + a data key from the local keyring, the key commitment, the body sealed (AES-GCM)
  sealgate  the real thing, one worker, in front of benchmarks/sink.py

Each prints the server's CPU per request (user + system, medians of the rounds): the floor any
request path built on these parts pays on this machine (issue 22 item 1).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import ssl
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import client, procs  # noqa: E402
from benchmarks.client import Target  # noqa: E402

SIZE = 4096
BUCKET = "floor"
MODES = ("tls", "verify", "sign", "seal")


def serve(mode: str, port: int, cert: str, key: str, keyring: str, passfile: str) -> None:
    """One floor server (a subprocess of the run)."""
    import uvloop
    from aiohttp import web
    from botocore.credentials import ReadOnlyCredentials
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from proxy.crypto.format import commitment, stream_key
    from proxy.kms.keystore import LocalKeyStore
    from proxy.kms.local import LocalKeyring
    from proxy.s3.sigv4 import ClientCredentials, verify_request
    from proxy.store.backend import sign_request

    level = MODES.index(mode)
    clients = {procs.CLIENT_AKID: ClientCredentials(procs.CLIENT_AKID, procs.CLIENT_SECRET, "bench")}
    backend = ReadOnlyCredentials(procs.BACKEND_AKID, procs.BACKEND_SECRET, None)
    keys = LocalKeyring(LocalKeyStore.open(Path(keyring), Path(passfile).read_text().strip().encode()))

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if level >= 1:
            verify_request(request.method, request.raw_path, request.headers, clients.get, datetime.now(UTC))
        headers = {"Content-Length": str(len(body) + 56), "Content-Type": "application/octet-stream"}
        if level >= 3:
            dk = await keys.generate_data_key("default", {"b": BUCKET, "k": request.path})
            salt = os.urandom(32)
            sealed = AESGCM(stream_key(dk.plaintext, salt, 0)).encrypt(os.urandom(12), body, None)
            headers["x-amz-meta-sg-wk"] = dk.wrapped.hex()
            headers["x-amz-meta-sg-cm"] = commitment(dk.plaintext, salt).hex()
            headers["Content-MD5"] = hashlib.md5(sealed).hexdigest()  # noqa: S324 - as S3 asks
        if level >= 2:
            sign_request(backend, "us-east-1", "PUT", f"http://127.0.0.1:1/{BUCKET}{request.path}", headers)
        return web.Response(status=200, headers={"ETag": '"floor"'})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=ctx, access_log=None, print=None)


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {m: [] for m in (*MODES, "sealgate")}
    with tempfile.TemporaryDirectory() as tmp, procs.servers(Path(tmp)) as servers:
        files = servers.prepare_sealgate_files()
        sink = servers.start_sink("fast")
        gates = {"sealgate": servers.start_sealgate(files, sink.endpoint)}
        for mode in MODES:
            port = procs.free_port()
            argv = [sys.executable, __file__, "--serve", mode, "--port", str(port)]
            argv += [str(files[k]) for k in ("cert", "key", "keyring", "passfile")]
            gates[mode] = servers._spawn(f"floor-{mode}", argv, port, "https")  # noqa: SLF001
        procs.wait_healthy(gates["sealgate"], files["ca"])
        targets = {
            name: Target(name, g.endpoint, str(files["ca"]), procs.CLIENT_AKID, procs.CLIENT_SECRET)
            for name, g in gates.items()
        }
        async with client.session_for(targets["sealgate"]) as session:
            await client.create_bucket(session, targets["sealgate"], BUCKET)
        body = client.body_bytes(SIZE)
        keys = [f"k{i:04d}" for i in range(args.connections * 4)]
        for _ in range(args.rounds):
            for name, gate in gates.items():
                t = targets[name]
                signed = client.presign_small(t, BUCKET, "PUT", keys, SIZE)
                before = procs.cpu_seconds(gate.pid)
                res = await client.small_load(
                    t, "PUT", signed, connections=args.connections, seconds=args.seconds, warmup=0.5, body=body
                )
                spent = procs.cpu_seconds(gate.pid) - before
                out[name].append(spent / max(1, res.requests + res.errors) * 1e6)
                if res.errors:
                    print(f"  {name}: {res.errors} errors", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, *args.files)
        return 0
    out = asyncio.run(measure(args))
    print(f"server CPU per 4 KiB PUT (us), {args.connections} connections, median of {args.rounds} rounds")
    for name, figures in out.items():
        print(f"  {name:9s} {statistics.median(figures):6.0f}   ({', '.join(f'{f:.0f}' for f in figures)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
