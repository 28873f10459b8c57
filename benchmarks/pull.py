"""Pull throughput against a raw loopback download of the same bytes (target: >= 0.9x).

    .venv/bin/python benchmarks/pull.py [--size-mb 200] [--rounds 3]

A fake Hugging Face hub (tests/fake_hf_server.py) runs in a child process and serves a
valid GGUF of about `--size-mb` MB. Each round times, in this order:

- raw:  one aiohttp GET of the file's bytes, written to a file (no hashing, no fsync);
- pull: `Puller.pull` of the model into an empty store: model info, HEAD, the same GET,
        sha256 while writing, fsync, blob registration, manifest (GGUF header read);
- raw+sha256 (for reference only): the raw download hashing each chunk inline, that is
        the same work as the pull done naively on one thread.

The best round of each is compared (the least disturbed by the rest of the machine). The
pull does strictly more work than the raw download (a sha256 pass and an fsync), so on a
machine with few cores, where the server, the socket reads, the writes and the hashing
compete for CPU, the ratio is bounded by the CPU and not by the pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import aiohttp  # noqa: E402
from fake_hf_server import FakeHub  # noqa: E402
from gguf_factory import write_tiny_gguf  # noqa: E402

from localserve.names import ModelName  # noqa: E402
from localserve.store.hub import HuggingFaceHub  # noqa: E402
from localserve.store.pull import Puller, collect  # noqa: E402
from localserve.store.store import Store  # noqa: E402

REPO = "Bench/Big-GGUF"
FILENAME = "big-Q4_K_M.gguf"
BYTES_PER_FFN_ROW = 2 * 3 * 64 * 4  # two layers, three FFN matrices, width 64, f32


def serve(path: str, ports: multiprocessing.Queue[tuple[int, str]]) -> None:
    """Child process: run the fake hub until terminated."""

    async def main() -> None:
        hub = FakeHub()
        repo = hub.add_repo(REPO, {FILENAME: Path(path)})
        await hub.start()
        ports.put((hub.port, repo.files[FILENAME].sha256))
        await asyncio.Event().wait()

    asyncio.run(main())


async def raw_download(url: str, target: Path, *, hash_inline: bool = False) -> int:
    size = 0
    hasher = hashlib.sha256()
    timeout = aiohttp.ClientTimeout(total=None)
    async with (
        aiohttp.ClientSession(timeout=timeout, read_bufsize=4 << 20) as session,
        session.get(url, headers={"Accept-Encoding": "identity"}) as response,
    ):
        response.raise_for_status()
        with target.open("wb") as handle:
            async for chunk in response.content.iter_chunked(1 << 20):
                handle.write(chunk)
                if hash_inline:
                    hasher.update(chunk)
                size += len(chunk)
    return size


async def pull_once(endpoint: str, work: Path) -> None:
    store = Store(work / "store")
    puller = Puller(store, HuggingFaceHub(endpoint=endpoint, token=""))
    raw = f"hf.co/{REPO}"
    updates = await collect(puller, ModelName.parse(raw), raw)
    assert updates[-1]["status"] == "success", updates[-1]


async def bench(port: int, sha256: str, size: int, rounds: int, work: Path) -> None:
    endpoint = f"http://127.0.0.1:{port}"
    cdn = f"http://localhost:{port}/cdn/{sha256}"
    raw_times: list[float] = []
    pull_times: list[float] = []
    hashed_times: list[float] = []
    for index in range(rounds):
        target = work / "raw.bin"
        start = time.perf_counter()
        got = await raw_download(cdn, target)
        raw_times.append(time.perf_counter() - start)
        assert got == size
        target.unlink()
        start = time.perf_counter()
        await raw_download(cdn, target, hash_inline=True)
        hashed_times.append(time.perf_counter() - start)
        target.unlink()

        round_dir = work / f"round{index}"
        start = time.perf_counter()
        await pull_once(endpoint, round_dir)
        pull_times.append(time.perf_counter() - start)
        shutil.rmtree(round_dir)
        print(
            f"round {index + 1}: raw {size / raw_times[-1] / 1e6:8.1f} MB/s   "
            f"pull {size / pull_times[-1] / 1e6:8.1f} MB/s"
        )
    raw_best, pull_best, hashed_best = min(raw_times), min(pull_times), min(hashed_times)
    print(f"file: {size / 1e6:.1f} MB, best of {rounds}, {os.cpu_count()} CPUs")
    print(f"raw loopback download: {size / raw_best / 1e6:8.1f} MB/s ({raw_best:.3f} s)")
    print(f"raw + inline sha256:   {size / hashed_best / 1e6:8.1f} MB/s ({hashed_best:.3f} s)")
    print(f"Puller.pull:           {size / pull_best / 1e6:8.1f} MB/s ({pull_best:.3f} s)")
    print(f"ratio pull/raw: {raw_best / pull_best:.2f}x (target >= 0.9x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="localserve-bench-") as tmp:
        work = Path(tmp)
        model = work / FILENAME
        rows = max(args.size_mb * 1_000_000 // BYTES_PER_FFN_ROW, 128)
        write_tiny_gguf(model, "a", padding_ffn=rows)
        size = model.stat().st_size
        ctx = multiprocessing.get_context("spawn")
        ports: multiprocessing.Queue[tuple[int, str]] = ctx.Queue()
        server = ctx.Process(target=serve, args=(str(model), ports), daemon=True)
        server.start()
        try:
            port, sha256 = ports.get(timeout=120)
            asyncio.run(bench(port, sha256, size, args.rounds, work))
        finally:
            server.terminate()
            server.join()


if __name__ == "__main__":
    main()
