"""Malformed GGUF uploads: a seeded fuzz of the header checks against llama.cpp's own rules.

Mutants are made from the valid tiny model (tests/gguf_factory.py) family by family:
truncations, absurd counts and lengths, floats in integer fields, broken offsets,
alignments, duplicates, tensor types and shapes, versions, hyper-parameters, tokens.
Each family says what must happen: refused (`InvalidModelFileError`, naming the problem),
accepted, or either. Most cases call `read_model_facts` directly; a smaller set goes
through a real daemon's /api/blobs + /api/create; accepted mutants are loaded and run by
llama.cpp in a subprocess (the oracle: we accept nothing it refuses or crashes on).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import math
import os
import random
import struct
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonThread, running_daemon
from gguf_factory import (
    ARRAY,
    F32,
    F64,
    I32,
    STRING,
    U8,
    U16,
    U32,
    U64,
    GGUFParts,
    KeyValue,
    read_gguf_parts,
    write_tiny_gguf,
)

from localserve.errors import InvalidModelFileError, ModelLoadError, RunnerError
from localserve.store.gguf_facts import read_model_facts

SEED = 9  # issue 9; change it to explore, the cases stay reproducible
REJECT, ACCEPT, EITHER = "reject", "accept", "either"
INT_KEYS = (
    "llama.context_length",
    "llama.block_count",
    "llama.embedding_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
)

Mutate = Callable[[GGUFParts], Any]


@dataclass
class Mutant:
    """One malformed file: its bytes, what must happen, and text the refusal must name."""

    name: str
    data: bytes
    expect: str
    oracle: bool = False  # when accepted, llama.cpp must load and run it
    mentions: str = ""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> GGUFParts:
    path = write_tiny_gguf(tmp_path_factory.mktemp("fuzz") / "base.gguf", "a")
    parts = read_gguf_parts(path)
    assert parts.to_bytes() == path.read_bytes()  # the parts write the file back exactly
    return parts


def _edit(base: GGUFParts, mutate: Mutate) -> bytes:
    parts = copy.deepcopy(base)
    mutate(parts)
    return parts.to_bytes()


def _kv_offset(parts: GGUFParts, index: int) -> int:
    """Where pair `index` starts in the file."""
    return 24 + sum(len(pair.encode()) for pair in parts.kvs[:index])


def _tensor_offset(parts: GGUFParts, index: int) -> int:
    """Where tensor entry `index` starts in the file."""
    start = 24 + sum(len(pair.encode()) for pair in parts.kvs)
    return start + sum(len(t.encode()) for t in parts.tensors[:index])


def _patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


# ---- the mutant families -------------------------------------------------------------------


def _truncations(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    good = base.to_bytes()
    header = len(base.header())
    for _ in range(30):
        cut = rng.randrange(0, header) if rng.random() < 0.6 else rng.randrange(header, len(good))
        yield Mutant(f"truncated at {cut}", good[:cut], REJECT)


def _header_flips(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    """Random bytes anywhere in the header: refused or accepted, never an exception other
    than InvalidModelFileError. Not for the oracle: a flip in a tensor or key name is
    llama.cpp's per-architecture business (refused at load: a 422, see
    test_a_model_llama_cpp_refuses_is_a_422_naming_the_model_not_its_file); but no
    accepted flip may crash llama.cpp (test_no_header_flip_we_accept_crashes_llama_cpp)."""
    good = bytearray(base.to_bytes())
    header = len(base.header())
    for index in range(80):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(4, header)] = rng.randrange(256)
        yield Mutant(f"header flip {index}", bytes(data), EITHER)


def _counts(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    good = base.to_bytes()
    n_tensors, n_kv = len(base.tensors), len(base.kvs)
    for field_offset, real, what in ((8, n_tensors, "tensors"), (16, n_kv, "keys")):
        for count in (2**63, 2**64 - 1, 2**40, 10**7, real + 1, real + 1000):
            data = _patch(good, field_offset, struct.pack("<Q", count))
            yield Mutant(f"{count} {what}", data, REJECT)
    data = _patch(good, 16, struct.pack("<Q", n_kv - 1))  # the last pair read as a tensor
    yield Mutant("one key fewer", data, REJECT)


def _lengths(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    good = base.to_bytes()
    huge = (2**30 + 1, 2**40, 2**64 - 1, len(good))
    names = [p.key.decode() for p in base.kvs]
    for _ in range(16):  # a key's length
        index = rng.randrange(len(base.kvs))
        data = _patch(good, _kv_offset(base, index), struct.pack("<Q", rng.choice(huge)))
        yield Mutant(f"length of key {names[index]}", data, REJECT)
    strings = [i for i, p in enumerate(base.kvs) if p.kind == STRING]
    for _ in range(8):  # a string value's length
        index = rng.choice(strings)
        pair = base.kvs[index]
        at = _kv_offset(base, index) + 8 + len(pair.key) + 4
        data = _patch(good, at, struct.pack("<Q", rng.choice(huge)))
        yield Mutant(f"length of {names[index]}'s value", data, REJECT, mentions=names[index])
    arrays = [i for i, p in enumerate(base.kvs) if p.kind == ARRAY]
    for _ in range(8):  # an array's item count
        index = rng.choice(arrays)
        pair = base.kvs[index]
        at = _kv_offset(base, index) + 8 + len(pair.key) + 4 + 4
        data = _patch(good, at, struct.pack("<Q", rng.choice(huge)))
        yield Mutant(f"count of {names[index]}", data, REJECT, mentions=names[index])
    for _ in range(8):  # a tensor name's length
        index = rng.randrange(len(base.tensors))
        data = _patch(good, _tensor_offset(base, index), struct.pack("<Q", rng.choice(huge)))
        yield Mutant(f"name length of tensor {index}", data, REJECT)
    yield Mutant("empty key", _edit(base, lambda p: setattr(p.kvs[1], "key", b"")), REJECT)


def _floats_in_int_fields(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    values: list[tuple[int, Any, int | None]] = [
        (F32, math.inf, None),
        (F32, -math.inf, None),
        (F32, math.nan, None),
        (F64, 1e300, None),
        (F32, 2.5, None),
        (I32, -1, None),
        (U64, 2**40, None),
        (STRING, b"4", None),
        (ARRAY, [4, 4, 4], U32),  # per-layer arrays must have one value per layer
    ]
    for key in INT_KEYS:
        for kind, value, item in values:
            data = _edit(base, lambda p, k=key, t=kind, v=value, i=item: p.set_kv(k, t, v, i))
            yield Mutant(f"{key} = {value!r} ({kind})", data, REJECT, mentions=key)


def _offsets(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    good = base.to_bytes()
    offsets = [t.offset for t in base.tensors]
    for _ in range(30):
        index = rng.randrange(len(base.tensors))
        offset = offsets[index]
        candidates = [offset + 1, offset + 16, offset + 32, offset + 4096, 2**63, len(good)]
        if index:
            candidates += [offset - 1, offset - 32, offsets[index - 1], 0]
        new = rng.choice(candidates)
        at = _tensor_offset(base, index) + len(base.tensors[index].encode()) - 8
        data = _patch(good, at, struct.pack("<Q", new))
        name = base.tensors[index].name.decode()
        yield Mutant(f"offset of {name} = {new}", data, REJECT, mentions=name)

    def swap(parts: GGUFParts) -> None:
        first, second = rng.sample(range(len(parts.tensors)), 2)
        a, b = parts.tensors[first], parts.tensors[second]
        a.offset, b.offset = b.offset, a.offset

    for _ in range(6):
        yield Mutant("two offsets swapped", _edit(base, swap), REJECT)


def _alignments(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    key = "general.alignment"
    for value in (0, 3, 7, 12, 48, 2**31 + 1, 2**32 - 1):  # not powers of two
        yield Mutant(
            f"alignment {value}",
            _edit(base, lambda p, v=value: p.set_kv(key, U32, v)),
            REJECT,
            mentions=key,
        )
    for kind, value in ((U8, 32), (U16, 32), (I32, 32), (U64, 32), (F32, 32.0), (STRING, b"32")):
        data = _edit(base, lambda p, t=kind, v=value: p.set_kv(key, t, v))
        yield Mutant(f"alignment as type {kind}", data, REJECT, mentions=key)
    yield Mutant(
        "alignment as array",
        _edit(base, lambda p: p.set_kv(key, ARRAY, [32], U32)),
        REJECT,
        mentions=key,
    )
    for value in (1, 2):  # llama.cpp would map the tensors at odd addresses and abort
        data = _edit(base, lambda p, v=value: (p.set_kv(key, U32, v), p.layout(v)))
        yield Mutant(f"alignment {value}, laid out", data, REJECT, mentions="aligned")
    for value in (4, 8, 16, 32, 64, 128, 256):  # valid; below 32 only where it lands aligned
        expect = ACCEPT if value >= 32 else EITHER
        data = _edit(base, lambda p, v=value: (p.set_kv(key, U32, v), p.layout(v)))
        yield Mutant(f"alignment {value}, laid out", data, expect, oracle=True)

    def off_by_32(p: GGUFParts) -> None:  # aligned to 32, not to the declared 64
        p.set_kv(key, U32, 64)
        p.layout(64)
        p.tensors[1].offset += 32

    yield Mutant(
        "offset 32 past alignment 64", _edit(base, off_by_32), REJECT, mentions="not aligned to 64"
    )


def _duplicates(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    for _ in range(8):
        index = rng.randrange(len(base.kvs))
        name = base.kvs[index].key.decode()

        def again(p: GGUFParts, i: int = index) -> None:
            p.kvs.insert(rng.randrange(len(p.kvs) + 1), copy.deepcopy(p.kvs[i]))

        yield Mutant(f"key {name} twice", _edit(base, again), REJECT, mentions=name)
    for _ in range(8):
        first, second = rng.sample(range(len(base.tensors)), 2)
        name = base.tensors[second].name

        def rename(p: GGUFParts, i: int = first, n: bytes = name) -> None:
            p.tensors[i].name = n

        yield Mutant(
            f"tensor {name.decode()} twice", _edit(base, rename), REJECT, mentions=name.decode()
        )
    for _ in range(4):
        first, second = rng.sample(range(len(base.kv("tokenizer.ggml.tokens").value)), 2)

        def same_token(p: GGUFParts, i: int = first, j: int = second) -> None:
            tokens = p.kv("tokenizer.ggml.tokens").value
            tokens[i] = tokens[j]

        yield Mutant("a token twice", _edit(base, same_token), REJECT, mentions="duplicates")


def _tensor_types(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    unknown = (4, 5, 31, 32, 33, 36, 37, 38, 43, 100, 2**31 - 1, -1)
    not_computable = (9, 15, 24, 25, 26, 27, 28)  # Q8_1, Q8_K, integers, F64: crash at compute
    resized = (1, 2, 8, 12, 30)  # F16, Q4_0, Q8_0, Q4_K (row of 64 < its block), BF16
    last = len(base.tensors) - 1
    for kind in (*unknown, *not_computable, *resized):
        index = rng.randrange(last)  # not the last: a smaller last tensor is still valid

        def retype(p: GGUFParts, i: int = index, t: int = kind) -> None:
            p.tensors[i].kind = t

        name = base.tensors[index].name.decode()
        yield Mutant(f"{name} as type {kind}", _edit(base, retype), REJECT, mentions=name)

    def resized_with_data(p: GGUFParts) -> None:  # F16 with F16-sized data: valid
        tensor = p.tensor("blk.0.attn_q.weight")
        tensor.kind, tensor.data = 1, b"\0" * (len(tensor.data) // 2)
        p.layout(32)

    yield Mutant("attn_q as F16, laid out", _edit(base, resized_with_data), ACCEPT, oracle=True)


def _shapes(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    last = len(base.tensors) - 1
    for _ in range(20):
        index = rng.randrange(last)
        name = base.tensors[index].name.decode()
        choice = rng.randrange(5)
        if choice == 0:
            dims = [64] * rng.choice((5, 8))  # more than GGML_MAX_DIMS
        elif choice == 1:
            dims = [0, 64]
        elif choice == 2:
            dims = [2**63, 1]  # negative as int64
        elif choice == 3:
            dims = [2**32, 2**32]  # the element count overflows int64
        else:
            dims = [d * 2 for d in base.tensors[index].dims]

        def reshape(p: GGUFParts, i: int = index, d: list[int] = dims) -> None:
            p.tensors[i].dims = d

        yield Mutant(f"{name} shaped {dims}", _edit(base, reshape), REJECT, mentions=name)
    for n_dims in (5, 2**32 - 1):  # only the count changes
        at = _tensor_offset(base, 0) + 8 + len(base.tensors[0].name)
        data = _patch(base.to_bytes(), at, struct.pack("<I", n_dims))
        yield Mutant(f"{n_dims} dimensions", data, REJECT)
    too_long = b"blk.0." + b"x" * 60

    def long_name(p: GGUFParts) -> None:
        p.tensors[3].name = too_long

    yield Mutant("a 66-byte tensor name", _edit(base, long_name), REJECT, mentions="too long")


def _versions(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    for version in (0, 1, 4, 0x30000, 2**32 - 1):
        yield Mutant(
            f"version {version}",
            _edit(base, lambda p, v=version: setattr(p, "version", v)),
            REJECT,
            mentions="version",
        )
    yield Mutant("version 2", _edit(base, lambda p: setattr(p, "version", 2)), ACCEPT, oracle=True)


def _hyper_parameters(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    bad = [
        ("llama.block_count", 0),
        ("llama.block_count", 1),  # blk.1 tensors beyond it
        ("llama.block_count", 3),  # no tensors for layer 2
        ("llama.block_count", 513),
        ("llama.block_count", 2**32 - 1),
        ("llama.context_length", 0),
        ("llama.embedding_length", 0),
        ("llama.attention.head_count", 0),
        ("llama.attention.head_count_kv", 0),
        ("llama.attention.head_count_kv", 3),  # does not divide 4 heads
        ("llama.attention.head_count_kv", 8),
    ]
    for key, value in bad:
        data = _edit(base, lambda p, k=key, v=value: p.set_kv(k, U32, v))
        yield Mutant(f"{key} = {value}", data, REJECT, mentions=key)
    for key in ("general.architecture", *INT_KEYS[:4]):

        def drop(p: GGUFParts, k: str = key) -> None:
            p.kvs = [pair for pair in p.kvs if pair.key != k.encode()]

        yield Mutant(f"no {key}", _edit(base, drop), REJECT, mentions=key)
    arch_as_int = _edit(base, lambda p: p.set_kv("general.architecture", U32, 7))
    yield Mutant("architecture as u32", arch_as_int, REJECT, mentions="general.architecture")
    scaling = _edit(base, lambda p: p.set_kv("llama.rope.scaling.type", STRING, b"bogus"))
    yield Mutant("unknown rope scaling", scaling, REJECT, mentions="rope.scaling.type")
    good = [
        ("llama.context_length", U32, 1, None),
        ("llama.context_length", U32, 100_000, None),
        ("llama.attention.head_count", ARRAY, [4, 4], U32),
        ("llama.attention.head_count_kv", ARRAY, [4, 4], I32),
        ("general.name", STRING, b"renamed", None),
        ("x.unknown.key", F64, 1.5, None),
    ]
    for key, kind, value, item in good:
        data = _edit(base, lambda p, k=key, t=kind, v=value, i=item: p.set_kv(k, t, v, i))
        yield Mutant(f"{key} = {value!r}", data, ACCEPT, oracle=True)


def _tokens(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    key = "tokenizer.ggml.tokens"
    for _ in range(4):
        byte = rng.randrange(256)

        def lose_byte(p: GGUFParts, b: int = byte) -> None:
            p.kv(key).value[3 + b] = b"<byte %d>" % b

        yield Mutant(
            f"no byte token {byte:02X}", _edit(base, lose_byte), REJECT, mentions=f"<0x{byte:02X}>"
        )
    as_ints = _edit(base, lambda p: p.set_kv(key, ARRAY, list(range(259)), U32))
    yield Mutant("tokens as u32s", as_ints, REJECT, mentions=key)

    def rename_unk(p: GGUFParts) -> None:
        p.kv(key).value[0] = b"<unknown>"

    yield Mutant("a token renamed", _edit(base, rename_unk), ACCEPT, oracle=True)


def _value_types(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    for kind in (13, 100, 2**32 - 1):
        pair = KeyValue(b"x.weird", kind, raw=b"\0" * 8)
        yield Mutant(
            f"value type {kind}",
            _edit(base, lambda p, k=pair: p.kvs.insert(2, k)),
            REJECT,
            mentions="x.weird",
        )
    for item in (ARRAY, 13):
        pair = KeyValue(b"x.nested", ARRAY, raw=struct.pack("<IQ", item, 1) + b"\0" * 16)
        yield Mutant(
            f"array of type {item}",
            _edit(base, lambda p, k=pair: p.kvs.insert(2, k)),
            REJECT,
            mentions="x.nested",
        )


def _structure(base: GGUFParts, rng: random.Random) -> Iterator[Mutant]:
    def reorder(p: GGUFParts) -> None:
        rng.shuffle(p.tensors)
        p.layout(32)

    for _ in range(3):
        yield Mutant("tensors reordered", _edit(base, reorder), ACCEPT, oracle=True)
    trailing = _edit(base, lambda p: setattr(p, "trailing", rng.randbytes(100)))
    yield Mutant("trailing bytes", trailing, ACCEPT, oracle=True)

    def keys_shuffled(p: GGUFParts) -> None:
        rng.shuffle(p.kvs)

    yield Mutant("keys reordered", _edit(base, keys_shuffled), ACCEPT, oracle=True)


FAMILIES = (
    _truncations,
    _header_flips,
    _counts,
    _lengths,
    _floats_in_int_fields,
    _offsets,
    _alignments,
    _duplicates,
    _tensor_types,
    _shapes,
    _versions,
    _hyper_parameters,
    _tokens,
    _value_types,
    _structure,
)


@pytest.fixture(scope="module")
def mutants(base: GGUFParts) -> list[Mutant]:
    rng = random.Random(SEED)
    return [m for family in FAMILIES for m in family(base, rng)]


@dataclass
class Verdict:
    accepted: bool
    message: str = ""


@pytest.fixture(scope="module")
def verdicts(
    mutants: list[Mutant], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Mutant, Path, Verdict]]:
    """Every mutant checked once (anything but InvalidModelFileError escapes); the files
    accepted are kept for llama.cpp."""
    directory = tmp_path_factory.mktemp("mutants")
    results = {}
    for index, mutant in enumerate(mutants):
        path = directory / f"m{index}.gguf"
        path.write_bytes(mutant.data)
        try:
            read_model_facts(path)
            verdict = Verdict(True)
        except InvalidModelFileError as exc:
            verdict = Verdict(False, exc.message)
            path.unlink()
        results[f"{index}: {mutant.name}"] = (mutant, path, verdict)
    return results


# ---- the checks, directly ------------------------------------------------------------------


def test_the_fuzz_makes_a_few_hundred_cases_of_every_kind(mutants: list[Mutant]) -> None:
    assert len(mutants) >= 300
    assert {m.expect for m in mutants} == {REJECT, ACCEPT, EITHER}
    assert sum(m.expect == REJECT for m in mutants) >= 250


def test_every_mutant_is_refused_or_accepted_as_its_family_says(
    verdicts: dict[str, tuple[Mutant, Path, Verdict]],
) -> None:
    wrong = [
        f"{case}: expected {mutant.expect}, got {verdict.message or 'accepted'}"
        for case, (mutant, _, verdict) in verdicts.items()
        if (mutant.expect == REJECT and verdict.accepted)
        or (mutant.expect == ACCEPT and not verdict.accepted)
    ]
    assert not wrong, "\n".join(wrong)


def test_refusals_name_the_problem(verdicts: dict[str, tuple[Mutant, Path, Verdict]]) -> None:
    unnamed = [
        f"{case}: {verdict.message!r} does not mention {mutant.mentions!r}"
        for case, (mutant, _, verdict) in verdicts.items()
        if mutant.mentions and not verdict.accepted and mutant.mentions not in verdict.message
    ]
    assert not unnamed, "\n".join(unnamed)
    for _, _, verdict in verdicts.values():
        assert len(verdict.message) < 400  # one line, not a dump of the file


def test_a_float_in_an_integer_field_says_which_key_and_what_it_holds(
    base: GGUFParts, tmp_path: Path
) -> None:
    for key in INT_KEYS:
        path = tmp_path / "inf.gguf"
        path.write_bytes(_edit(base, lambda p, k=key: p.set_kv(k, F32, math.inf)))
        with pytest.raises(InvalidModelFileError) as info:
            read_model_facts(path)
        assert info.value.message == f"{key} must be a u32, but it is a f32 (inf)"
        assert info.value.status == 400


def test_misaligned_offset_message_names_tensor_offset_and_alignment(
    base: GGUFParts, tmp_path: Path
) -> None:
    def shift(p: GGUFParts) -> None:
        p.tensor("blk.0.attn_q.weight").offset += 1

    path = tmp_path / "shifted.gguf"
    path.write_bytes(_edit(base, shift))
    offset = base.tensor("blk.0.attn_q.weight").offset + 1
    with pytest.raises(
        InvalidModelFileError,
        match=rf"'blk.0.attn_q.weight': offset {offset} is not aligned to 32",
    ):
        read_model_facts(path)


# ---- the oracle: llama.cpp loads and runs what we accept -----------------------------------

_ORACLE = textwrap.dedent(
    """
    import sys
    import llama_cpp

    for line in sys.stdin:
        path = line.strip()
        print("START", path, flush=True)
        try:
            llm = llama_cpp.Llama(model_path=path, n_ctx=64, verbose=False)
            text = llm.create_completion("Hi! Zz\\n", max_tokens=2)["choices"][0]["text"]
            llm.close()
            print("OK", path, repr(text), flush=True)
        except Exception as exc:
            print("FAIL", path, type(exc).__name__, flush=True)
    """
)


def _llama_cpp_verdicts(paths: list[Path], timeout_s: float = 60) -> dict[str, str]:
    """OK / FAIL / CRASH <code> per file, from llama.cpp in child processes (one at a time
    restarted after a crash, so a crash cannot take pytest down)."""
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}  # no gdb attaching on an abort
    results: dict[str, str] = {}
    todo = [str(p) for p in paths]
    while todo:
        proc = subprocess.run(
            [sys.executable, "-c", _ORACLE],
            input="\n".join(todo) + "\n",
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
        started = None
        for line in proc.stdout.splitlines():
            tag, path, *_ = line.split(" ", 2)
            if tag == "START":
                started = path
            else:
                results[path], started = tag, None
        if started is not None:
            results[started] = f"CRASH {proc.returncode}"
        remaining = [p for p in todo if p not in results]
        assert len(remaining) < len(todo), proc.stderr[-2000:]  # no progress: a broken child
        todo = remaining
    return results


def test_llama_cpp_loads_and_runs_every_sampled_mutant_we_accept(
    verdicts: dict[str, tuple[Mutant, Path, Verdict]],
) -> None:
    accepted = [(case, path) for case, (m, path, v) in verdicts.items() if v.accepted and m.oracle]
    assert len(accepted) >= 15  # the oracle families do produce valid files
    sample = random.Random(SEED).sample(accepted, min(len(accepted), 30))
    results = _llama_cpp_verdicts([path for _, path in sample])
    refused = [
        f"{case}: {results[str(path)]}" for case, path in sample if results[str(path)] != "OK"
    ]
    assert not refused, "\n".join(refused)


def test_no_header_flip_we_accept_crashes_llama_cpp(
    verdicts: dict[str, tuple[Mutant, Path, Verdict]],
) -> None:
    """Flips we accept may still be refused by llama.cpp (a renamed tensor: a 422 at load),
    but none may take a runner down."""
    flips = [
        (case, path)
        for case, (m, path, v) in verdicts.items()
        if v.accepted and m.name.startswith("header flip")
    ]
    assert flips  # some flips land in values llama.cpp does not check (scores, names)
    results = _llama_cpp_verdicts([path for _, path in flips])
    crashed = [f"{case}: {results[str(p)]}" for case, p in flips if "CRASH" in results[str(p)]]
    assert not crashed, "\n".join(crashed)


def test_the_oracle_tells_refusals_and_crashes_apart(base: GGUFParts, tmp_path: Path) -> None:
    """The oracle itself can fail: llama.cpp refuses a file lacking a tensor (which our
    checks leave to the load) and aborts on alignment 1 (which they refuse)."""
    no_tensor = tmp_path / "no_tensor.gguf"
    no_tensor.write_bytes(_edit(base, _drop_last_ffn))
    odd = tmp_path / "odd.gguf"
    odd.write_bytes(_edit(base, lambda p: (p.set_kv("general.alignment", U32, 1), p.layout(1))))
    good = tmp_path / "good.gguf"
    good.write_bytes(base.to_bytes())
    results = _llama_cpp_verdicts([no_tensor, odd, good])
    assert results[str(no_tensor)] == "FAIL"
    assert results[str(odd)].startswith("CRASH")
    assert results[str(good)] == "OK"


# ---- through the daemon --------------------------------------------------------------------


def _drop_last_ffn(parts: GGUFParts) -> None:
    """A well-formed file without a tensor llama's architecture needs."""
    parts.tensors = [t for t in parts.tensors if t.name != b"blk.1.ffn_down.weight"]
    parts.layout(32)


def _http(
    base_url: str, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, str, bytes]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def _upload(daemon: DaemonThread, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, _, _ = _http(daemon.base_url, "POST", f"/api/blobs/{digest}", raw=data)
    assert status == 201
    return digest


def _installed(daemon: DaemonThread) -> set[str]:
    status, _, body = _http(daemon.base_url, "GET", "/api/tags")
    assert status == 200
    return {m["name"] for m in json.loads(body)["models"]}


def test_malformed_uploads_get_a_400_and_leave_nothing_behind(
    verdicts: dict[str, tuple[Mutant, Path, Verdict]], tmp_path: Path
) -> None:
    refused = [
        (case, mutant)
        for case, (mutant, _, v) in verdicts.items()
        if not v.accepted and mutant.data
    ]
    rng = random.Random(SEED)
    floats = [(c, m) for c, m in refused if " = inf " in m.name or " = -inf " in m.name]
    assert len(floats) == 2 * len(INT_KEYS)  # the case: every key, both infinities
    others = rng.sample([x for x in refused if x not in floats], 24)
    with running_daemon(tmp_path) as daemon:
        for index, (case, mutant) in enumerate(floats + others):
            digest = _upload(daemon, mutant.data)
            body = {"model": f"fuzz{index}", "files": {"m.gguf": digest}, "stream": index % 2 == 0}
            status, content_type, answer = _http(daemon.base_url, "POST", "/api/create", body)
            assert 400 <= status < 500, f"{case}: {status} {answer[:200]!r}"
            assert content_type.startswith("application/json"), case
            error = json.loads(answer)
            assert error["code"] == "invalid_model_file", case
            if mutant.mentions:
                assert mutant.mentions in error["error"], case
            blob = daemon.store.blob_path(digest)
            assert not blob.exists(), f"{case}: the blob stayed in the store"
        assert not any(name.startswith("fuzz") for name in _installed(daemon))
        assert list(daemon.store.blobs_dir.iterdir()) == []
        status, _, _ = _http(daemon.base_url, "GET", "/api/version")
        assert status == 200  # still up


def test_a_model_llama_cpp_refuses_is_a_422_naming_the_model_not_its_file(
    base: GGUFParts, tmp_path: Path
) -> None:
    data = _edit(base, _drop_last_ffn)
    with running_daemon(tmp_path) as daemon:
        digest = _upload(daemon, data)
        body = {"model": "broken", "files": {"m.gguf": digest}, "stream": False}
        status, _, _ = _http(daemon.base_url, "POST", "/api/create", body)
        assert status == 200  # well-formed: only llama.cpp knows llama needs that tensor
        request = {"model": "broken", "prompt": "hi", "stream": False}
        status, _, answer = _http(daemon.base_url, "POST", "/api/generate", request)
        assert status == 422, answer
        error = json.loads(answer)
        assert error["code"] == "model_load_failed"
        assert "'broken:latest'" in error["error"]
        assert "blk.1.ffn_down.weight" in error["error"]  # llama.cpp's reason
        for leak in (str(daemon.store.root), "blobs", "sha256-", digest.split(":")[1]):
            assert leak not in error["error"]
        status, _, _ = _http(daemon.base_url, "GET", "/api/version")
        assert status == 200


def test_a_runner_that_dies_while_loading_is_a_runner_error_without_the_path(
    base: GGUFParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file llama.cpp aborts on (alignment 1: create refuses it; here it goes to a runner
    directly) kills the runner mid-load: a 500 RunnerError saying so, not a path."""
    from localserve.runner.handle import RunnerProcess

    monkeypatch.setenv("GGML_NO_BACKTRACE", "1")
    path = tmp_path / "store" / "blobs" / "sha256-odd"
    path.parent.mkdir(parents=True)
    path.write_bytes(_edit(base, lambda p: (p.set_kv("general.alignment", U32, 1), p.layout(1))))

    async def load() -> BaseException:
        runner = await RunnerProcess.spawn()
        try:
            await runner.load(str(path), num_ctx=64, num_gpu=0, num_threads=1, timeout=60)
        except (RunnerError, ModelLoadError) as exc:
            return exc
        finally:
            await runner.kill()
        raise AssertionError("the load succeeded")

    error = asyncio.run(load())
    assert isinstance(error, RunnerError) and error.status == 500
    assert "crashed while loading" in error.message
    assert "SIGABRT" in error.message
    assert str(tmp_path) not in error.message


def test_a_model_whose_runner_dies_while_loading_is_a_500_naming_the_model(
    base: GGUFParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same crash through the daemon: a store entry made without create's checks (they
    refuse the file) points at a file llama.cpp aborts on."""
    from localserve.names import ModelName
    from localserve.store.store import Manifest

    monkeypatch.setenv("GGML_NO_BACKTRACE", "1")
    good = tmp_path / "good.gguf"
    good.write_bytes(base.to_bytes())
    odd = tmp_path / "odd.gguf"
    odd.write_bytes(_edit(base, lambda p: (p.set_kv("general.alignment", U32, 1), p.layout(1))))
    with running_daemon(tmp_path) as daemon:
        digest = daemon.store.import_file(odd)
        manifest = Manifest(digest, odd.stat().st_size, read_model_facts(good))
        daemon.store._write_manifest(ModelName.parse("odd"), manifest)  # bypasses the checks
        request = {"model": "odd", "prompt": "hi", "stream": False}
        status, _, answer = _http(daemon.base_url, "POST", "/api/generate", request)
        assert status == 500, answer
        error = json.loads(answer)
        assert error["code"] == "runner_failed"
        assert error["error"].startswith("model 'odd:latest' failed to load: the runner crashed")
        assert "SIGABRT" in error["error"]
        assert str(daemon.store.root) not in error["error"] and "sha256" not in error["error"]
        status, _, _ = _http(daemon.base_url, "GET", "/api/version")
        assert status == 200
