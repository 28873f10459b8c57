"""The one strict parser for model names and digests: defaults, display, and refusals."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localserve.errors import BadRequestError
from localserve.names import (
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    MAX_NAME_LENGTH,
    ModelName,
    digest_filename,
    parse_digest,
)

HEX = "0123456789abcdef" * 4


# ---- defaults and display -----------------------------------------------------------------


def test_bare_name_gets_default_host_namespace_and_latest_tag() -> None:
    name = ModelName.parse("llama3")
    assert name == ModelName(DEFAULT_HOST, DEFAULT_NAMESPACE, "llama3", "latest")


def test_explicit_tag_is_kept() -> None:
    name = ModelName.parse("llama3:8b-q4_K_M")
    assert (name.name, name.tag) == ("llama3", "8b-q4_K_M")


def test_two_parts_are_namespace_and_name_on_the_default_host() -> None:
    name = ModelName.parse("someone/model:v1")
    assert (name.host, name.namespace, name.name, name.tag) == (
        DEFAULT_HOST,
        "someone",
        "model",
        "v1",
    )


def test_huggingface_name_keeps_org_repo_and_quant_tag_in_their_case() -> None:
    name = ModelName.parse("HF.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M")
    assert name.is_huggingface
    assert name.host == "hf.co"
    assert name.namespace == "bartowski"
    assert name.name == "SmolLM2-135M-Instruct-GGUF"
    assert name.tag == "Q4_K_M"
    assert name.display() == "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M"


def test_default_registry_names_are_not_huggingface() -> None:
    assert not ModelName.parse("llama3").is_huggingface


def test_host_with_port_is_parsed_and_its_colon_kept_out_of_the_path() -> None:
    name = ModelName.parse("localhost:5000/team/model:v2")
    assert (name.host, name.namespace, name.name, name.tag) == (
        "localhost:5000",
        "team",
        "model",
        "v2",
    )
    assert name.path_parts() == ("localhost_5000", "team", "model", "v2")


def test_display_leaves_out_defaults_but_always_shows_the_tag() -> None:
    assert ModelName.parse("llama3").display() == "llama3:latest"
    assert str(ModelName.parse("llama3:8b")) == "llama3:8b"
    assert ModelName.parse("team/model").display() == "team/model:latest"
    assert ModelName.parse("example.com/team/model:x").display() == "example.com/team/model:x"


def test_display_round_trips_through_parse() -> None:
    for text in ("llama3", "team/model:v1", "hf.co/org/repo:Q4_0", "localhost:5000/a/b:c"):
        name = ModelName.parse(text)
        assert ModelName.parse(name.display()) == name


def test_names_match_case_insensitively_and_display_as_typed() -> None:
    name = ModelName.parse("Team/Llama3:Q4_K_M")
    other = ModelName.parse("team/llama3:q4_k_m")
    assert name == other
    assert hash(name) == hash(other)
    assert {name: "x"}[other] == "x"
    assert not name < other and not other < name
    assert (name.namespace, name.name, name.tag) == ("Team", "Llama3", "Q4_K_M")
    assert name.display() == "Team/Llama3:Q4_K_M"
    assert other.display() == "team/llama3:q4_k_m"


def test_the_manifest_path_keeps_the_case_and_the_key_folds_it() -> None:
    upper = ModelName.parse("HF.co/Org/Repo-GGUF:Q4_K_M")
    assert upper.path_parts() == ("hf.co", "Org", "Repo-GGUF", "Q4_K_M")
    assert upper.key() == ("hf.co", "org", "repo-gguf", "q4_k_m")


def test_default_parts_in_another_case_are_left_out_of_the_display() -> None:
    assert ModelName.parse("Library/Llama3").display() == "Llama3:latest"
    assert ModelName.parse("Library/Llama3") == ModelName.parse("llama3")


def test_different_names_stay_different_and_sort_case_insensitively() -> None:
    names = [ModelName.parse(n) for n in ("b:1", "A:1", "a:2")]
    assert len(set(names)) == 3
    assert [n.display() for n in sorted(names)] == ["A:1", "a:2", "b:1"]


def test_surrounding_whitespace_is_ignored() -> None:
    assert ModelName.parse("  llama3:8b \n") == ModelName.parse("llama3:8b")


# ---- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "../../etc/passwd",
        "..",
        "../x",
        "a/../b",
        "a/b/c/d",
        "a/b/c/d/e:latest",
        "/abs",
        "/etc/passwd",
        "a//b",
        "a/",
        "name:../x",
        "name:..",
        "name:a/b",
        "x:",
        ":latest",
        "a:b:c",
        ".hidden",
        "-dash",
        "name.",
        "a..b",
        "host../ns/name",
        "name:.tag",
        "white space",
        "tab\tname",
        "new\nline/name",
        "ns\n/name",
        "name\x00",
        "na\x00me:tag",
        "name:tag\x00",
        "ünïcode",
        "a\\b",
        "..\\..\\windows",
        "~/model",
        "$HOME",
        "name:tag with space",
    ],
)
def test_path_tricks_and_bad_characters_are_refused(text: str) -> None:
    with pytest.raises(BadRequestError):
        ModelName.parse(text)


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_name_is_refused(text: str) -> None:
    with pytest.raises(BadRequestError, match="required"):
        ModelName.parse(text)


@pytest.mark.parametrize("value", [None, 42, b"llama3", ["llama3"]])
def test_non_string_name_is_refused(value: object) -> None:
    with pytest.raises(BadRequestError):
        ModelName.parse(value)


def test_absurdly_long_name_is_refused() -> None:
    with pytest.raises(BadRequestError, match="too long"):
        ModelName.parse("a" * (MAX_NAME_LENGTH + 1))


def test_overlong_single_part_is_refused_even_under_the_total_limit() -> None:
    with pytest.raises(BadRequestError):
        ModelName.parse("a" * 200)
    with pytest.raises(BadRequestError):
        ModelName.parse("model:" + "t" * 200)


def test_bad_name_error_is_a_400() -> None:
    with pytest.raises(BadRequestError) as info:
        ModelName.parse("../x")
    assert info.value.status == 400


# ---- digests -------------------------------------------------------------------------------


def test_digest_with_colon_is_canonical() -> None:
    assert parse_digest(f"sha256:{HEX}") == f"sha256:{HEX}"


def test_digest_with_dash_is_normalised_to_colon() -> None:
    assert parse_digest(f"sha256-{HEX}") == f"sha256:{HEX}"


def test_digest_filename_uses_a_dash() -> None:
    assert digest_filename(f"sha256:{HEX}") == f"sha256-{HEX}"


@pytest.mark.parametrize(
    "text",
    [
        f"sha256:{HEX.upper()}",
        f"SHA256:{HEX}",
        f"sha256:{HEX[:-1]}",
        f"sha256:{HEX}0",
        "sha256:",
        HEX,
        f"sha512:{HEX}{HEX}",
        f"md5:{HEX[:32]}",
        f"sha1:{HEX[:40]}",
        f"sha256:{HEX[:-1]}g",
        f"sha256:../../{HEX[:58]}",
        f"sha256-{HEX}/../x",
        f"sha256:{HEX}\x00",
        f"sha256:{HEX}\nx",
        f"sha256:{HEX[:32]}/{HEX[:31]}",
        f"sha256_{HEX}",
        "",
    ],
)
def test_malformed_digests_are_refused(text: str) -> None:
    with pytest.raises(BadRequestError):
        parse_digest(text)
    with pytest.raises(BadRequestError):
        digest_filename(text)


@pytest.mark.parametrize("value", [None, 1, b"sha256:" + HEX.encode()])
def test_non_string_digest_is_refused(value: object) -> None:
    with pytest.raises(BadRequestError):
        parse_digest(value)


# ---- property: nothing accepted can escape the store --------------------------------------

_name_alphabet = st.sampled_from([*"abcXYZ019._-:/\\\x00\n ~%", "..", "hf.co", "ü"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_name_alphabet, min_size=1, max_size=30).map("".join))
def test_any_accepted_name_maps_to_safe_path_parts(text: str) -> None:
    try:
        name = ModelName.parse(text)
    except BadRequestError:
        return
    parts = name.path_parts()
    assert len(parts) == 4
    for part in parts:
        assert part
        assert "/" not in part
        assert "\\" not in part
        assert "\x00" not in part
        assert "\n" not in part
        assert ".." not in part
        assert part not in (".", "..")
        assert part.isascii()
    # The canonical form parses back to the same name, in the same case.
    again = ModelName.parse(name.display())
    assert again == name
    assert again.display() == name.display()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_accepted_digest_is_64_lowercase_hex(text: str) -> None:
    try:
        digest = parse_digest(text)
    except BadRequestError:
        return
    algorithm, _, hexpart = digest.partition(":")
    assert algorithm == "sha256"
    assert len(hexpart) == 64
    assert set(hexpart) <= set("0123456789abcdef")


# ---- names in the store: typed case kept, matched case-insensitively -----------------------


def _stored(store: Any, path: Path, text: str) -> ModelName:
    name = ModelName.parse(text)
    store.create_model(name, store.import_file(path))
    return name


def _manifest_at(store: Any, source: ModelName, parts: tuple[str, str, str, str]) -> Path:
    """`source`'s manifest written at another path, as an older store may hold it."""
    path = store.manifests_dir.joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(store._manifest_path(source).read_bytes())
    return path


def test_a_model_is_found_in_any_case_and_listed_as_typed(store: Any, tiny_model: Any) -> None:
    name = _stored(store, tiny_model("a"), "Team/Tiny-Model:Q4_K_M")
    found = store.get(ModelName.parse("team/tiny-model:q4_k_m"))
    assert found.name.display() == "Team/Tiny-Model:Q4_K_M"
    assert [m.name.display() for m in store.list()] == ["Team/Tiny-Model:Q4_K_M"]
    path = store.manifests_dir / "registry.localserve" / "Team" / "Tiny-Model" / "Q4_K_M"
    assert path.is_file() and found.digest == store.get(name).digest


def test_creating_in_another_case_replaces_the_model(store: Any, tiny_model: Any) -> None:
    _stored(store, tiny_model("a"), "tiny:Q8_0")
    _stored(store, tiny_model("b"), "TINY:q8_0")
    listed = store.list()
    assert [m.name.display() for m in listed] == ["TINY:q8_0"]
    blob_b = "sha256:" + hashlib.sha256(tiny_model("b").read_bytes()).hexdigest()
    assert listed[0].manifest.model_digest == blob_b
    library = store.manifests_dir / "registry.localserve" / "library"
    assert sorted(p.name for p in library.iterdir()) == ["TINY"]


def test_copy_and_delete_ignore_case_and_a_copy_keeps_its_id(store: Any, tiny_model: Any) -> None:
    _stored(store, tiny_model("a"), "Source:v1")
    store.copy(ModelName.parse("source:V1"), ModelName.parse("Copy:V1"))
    copied = store.get(ModelName.parse("copy:v1"))
    assert copied.name.display() == "Copy:V1"
    assert copied.digest == store.get(ModelName.parse("Source:v1")).digest
    store.delete(ModelName.parse("COPY:v1"))
    store.delete(ModelName.parse("SOURCE:V1"))
    assert store.list() == []
    assert list(store.blobs_dir.iterdir()) == []
    assert list(store.manifests_dir.iterdir()) == []


def test_an_older_stores_paths_are_still_found(store: Any, tiny_model: Any) -> None:
    """No migration: older stores wrote `.../library/tiny/Q4_K_M` (name lower-cased)."""
    current = _stored(store, tiny_model("a"), "scratch:latest")
    older = _manifest_at(store, current, ("registry.localserve", "library", "tiny", "Q4_K_M"))
    store.delete(current)  # its blob stays: the older manifest references it

    found = store.get(ModelName.parse("Tiny:q4_k_m"))
    assert found.name.display() == "tiny:Q4_K_M"  # as its path spells it
    assert [m.name.display() for m in store.list()] == ["tiny:Q4_K_M"]
    assert store.has_blob(found.manifest.model_digest)

    store.copy(ModelName.parse("tiny:Q4_K_M"), ModelName.parse("tiny:q4_k_m"))  # respell it
    assert not older.exists()
    assert (older.parent / "q4_k_m").is_file()
    assert [m.name.display() for m in store.list()] == ["tiny:q4_k_m"]


def test_older_duplicates_in_two_cases_list_once_and_delete_together(
    store: Any, tiny_model: Any
) -> None:
    """Older stores could hold `dup:q4_k_m` and `dup:Q4_K_M` as two manifests."""
    lower = _stored(store, tiny_model("a"), "dup:q4_k_m")
    other = _stored(store, tiny_model("b"), "other:latest")
    upper = _manifest_at(store, other, ("registry.localserve", "library", "dup", "Q4_K_M"))
    other_blob = store.get(other).manifest.model_digest
    store.delete(other)

    listed = store.list()
    assert len(listed) == 1 and listed[0].name.display() in ("dup:q4_k_m", "dup:Q4_K_M")
    assert store.get(lower).manifest.model_digest != other_blob  # each exact spelling
    assert store.get(ModelName.parse("dup:Q4_K_M")).manifest.model_digest == other_blob
    store.collect_garbage(grace_s=0)
    assert store.has_blob(other_blob)  # the shadowed manifest still names it

    store.delete(ModelName.parse("Dup:Q4_k_m"))
    assert not upper.exists()
    assert store.list() == []
    assert list(store.blobs_dir.iterdir()) == []
