"""The one strict parser for model names and blob digests.

A model name is `[host/][namespace/]name[:tag]`. Missing parts take defaults:
host `registry.localserve`, namespace `library`, tag `latest` (as Ollama does with
`registry.ollama.ai/library`). `hf.co/<org>/<repo>:<quant>` names a Hugging Face GGUF.
Every part is checked against a conservative pattern before it is used in a path, so
no name can reach outside the store. Patterns are applied with `fullmatch`: `re.match`
with `$` would accept a trailing newline inside a part (e.g. "ns\n/name").

Names keep the case they were typed in (for display, and because Hugging Face repo ids
are case-sensitive to read) but compare, hash and sort case-insensitively, as Ollama's
do: `Org/Model:Q4_K_M` and `org/model:q4_k_m` are one model (`key()` is the case-folded
form). The host is always lower case. The store finds a manifest in any case
(`localserve.store.store`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from localserve.errors import BadRequestError

DEFAULT_HOST = "registry.localserve"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 350

_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,78}[A-Za-z0-9_])?$")
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?(?::[0-9]{1,5})?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


@dataclass(frozen=True, eq=False)
class ModelName:
    host: str
    namespace: str
    name: str
    tag: str

    def key(self) -> tuple[str, str, str, str]:
        """The case-folded parts: what equality, hashing and the manifest path use."""
        return (self.host.lower(), self.namespace.lower(), self.name.lower(), self.tag.lower())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelName):
            return NotImplemented
        return self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __lt__(self, other: ModelName) -> bool:
        return self.key() < other.key()

    def __le__(self, other: ModelName) -> bool:
        return self.key() <= other.key()

    def __gt__(self, other: ModelName) -> bool:
        return self.key() > other.key()

    def __ge__(self, other: ModelName) -> bool:
        return self.key() >= other.key()

    @classmethod
    def parse(cls, text: object) -> ModelName:
        if not isinstance(text, str) or not text.strip():
            raise BadRequestError("model name is required")
        raw = text.strip()
        if len(raw) > MAX_NAME_LENGTH:
            raise BadRequestError(f"model name is too long ({len(raw)} > {MAX_NAME_LENGTH})")
        rest, tag = raw, DEFAULT_TAG
        last_slash = raw.rfind("/")
        colon = raw.rfind(":")
        if colon > last_slash:
            rest, tag = raw[:colon], raw[colon + 1 :]
        parts = rest.split("/")
        if len(parts) == 1:
            host, namespace, name = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
        elif len(parts) == 2:
            host, namespace, name = DEFAULT_HOST, parts[0], parts[1]
        elif len(parts) == 3:
            host, namespace, name = parts
        else:
            raise BadRequestError(f"invalid model name {raw!r}: too many '/' separated parts")
        if not _HOST.fullmatch(host) or ".." in host:
            raise BadRequestError(f"invalid model name {raw!r}: bad host {host!r}")
        for label, part in (("namespace", namespace), ("name", name)):
            if not _PART.fullmatch(part) or ".." in part:
                raise BadRequestError(f"invalid model name {raw!r}: bad {label} {part!r}")
        if not _TAG.fullmatch(tag) or ".." in tag:
            raise BadRequestError(f"invalid model name {raw!r}: bad tag {tag!r}")
        return cls(host.lower(), namespace, name, tag)

    @property
    def is_huggingface(self) -> bool:
        return self.host.lower() in ("hf.co", "huggingface.co")

    def display(self) -> str:
        """The short form users type, in their case: defaults are left out, the tag is
        always shown."""
        default_host = self.host.lower() == DEFAULT_HOST
        if default_host and self.namespace.lower() == DEFAULT_NAMESPACE:
            return f"{self.name}:{self.tag}"
        if default_host:
            return f"{self.namespace}/{self.name}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.name}:{self.tag}"

    def __str__(self) -> str:
        return self.display()

    def path_parts(self) -> tuple[str, str, str, str]:
        """The manifest path under `manifests/`, in the name's case; host port colons
        become underscores."""
        return (self.host.lower().replace(":", "_"), self.namespace, self.name, self.tag)


def parse_digest(text: object) -> str:
    """Return the canonical `sha256:<hex>` form, refusing anything else."""
    if not isinstance(text, str):
        raise BadRequestError("digest must be a string like sha256:<64 hex digits>")
    match = _DIGEST.fullmatch(text.strip())
    if not match:
        raise BadRequestError(f"invalid digest {text[:80]!r}: expected sha256:<64 hex digits>")
    return f"sha256:{match.group(1)}"


def digest_filename(digest: str) -> str:
    """The blob's file name, `sha256-<hex>`, from a validated digest."""
    return parse_digest(digest).replace(":", "-")
