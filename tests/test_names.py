"""The one strict parser for model names and digests: defaults, display, and refusals."""

from __future__ import annotations

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


def test_huggingface_name_keeps_org_repo_and_quant_tag() -> None:
    name = ModelName.parse("hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M")
    assert name.is_huggingface
    assert name.host == "hf.co"
    assert name.namespace == "bartowski"
    assert name.name == "smollm2-135m-instruct-gguf"
    assert name.tag == "Q4_K_M"
    assert name.display() == "hf.co/bartowski/smollm2-135m-instruct-gguf:Q4_K_M"


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


def test_names_are_case_insensitive_but_tags_keep_their_case() -> None:
    name = ModelName.parse("Team/Llama3:Q4_K_M")
    assert name == ModelName.parse("team/llama3:Q4_K_M")
    assert (name.namespace, name.name, name.tag) == ("team", "llama3", "Q4_K_M")


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
    # The canonical form parses back to the same name.
    assert ModelName.parse(name.display()) == name


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
