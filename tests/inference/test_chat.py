"""Chat: prompts from the SFT template code, multi-turn cache reuse, streaming, the input filter."""

from __future__ import annotations

import io
import subprocess
import sys

from chatbaker_megatron.data.preprocess.sft_tokenize import encode_prompt
from chatbaker_megatron.data.templates import TEMPLATES, Message
from chatbaker_megatron.inference.backends import HFBackend
from chatbaker_megatron.inference.chat_cli import ChatSession, repl, turn_stops
from chatbaker_megatron.inference.filters import BlocklistFilter
from chatbaker_megatron.inference.generator import Generator, TextStream
from chatbaker_megatron.inference.sampling import SamplingConfig

GREEDY = SamplingConfig(greedy=True, max_new_tokens=6)


def test_turns_use_the_training_template_and_the_cache(exported):
    backend = HFBackend(exported("tp1_sft"))
    assert backend.template == TEMPLATES["chatbaker"]
    starts: list[int] = []
    forward = backend.forward
    backend.forward = lambda ids, start: starts.append(start) or forward(ids, start)
    session = ChatSession(Generator(backend), backend.template, GREEDY)
    first = session.reply("안녕하세요?")
    starts.clear()
    second = session.reply("이름이 뭐예요?")
    expected_prompt = encode_prompt(
        backend.tokenizer,
        backend.template,
        [
            Message("user", "안녕하세요?"),
            Message("assistant", first.text.strip()),
            Message("user", "이름이 뭐예요?"),
        ],
    )
    assert second.prompt_ids == expected_prompt
    assert starts[0] >= len(first.prompt_ids) - 1, "the second turn reuses the first turn's cache"
    fresh = Generator(HFBackend(exported("tp1_sft"))).generate(
        expected_prompt, GREEDY, stop_ids=session.stop_ids, stop_strings=session.stop_strings
    )
    assert second.token_ids == fresh.token_ids


def test_role_token_ends_a_reply(exported):
    backend = HFBackend(exported("tp1_sft"))
    stop_ids, stop_strings = turn_stops(TEMPLATES["chatbaker"], backend.tokenizer)
    assert stop_ids == (backend.tokenizer.backend.token_to_id("<human>"),) and stop_strings == ()
    assert turn_stops(TEMPLATES["vicuna_v1.1"], backend.tokenizer) == ((), ("USER:",))


def test_stream_holds_back_stop_strings_and_split_characters(tokenizer_dir):
    from chatbaker_megatron.data.tokenizer.load import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    pieces: list[str] = []
    stream = TextStream(tokenizer, ("USER:",), pieces.append)
    ended = False
    for token in tokenizer.encode("한국어 답변 US") + tokenizer.encode("ER: next"):
        ended = stream.push(token)
        assert "\ufffd" not in "".join(pieces)
        if ended:
            break
    assert ended
    assert "".join(pieces) == stream.finish() == "한국어 답변 "


def test_repl_streams_replies_resets_and_refuses(exported):
    backend = HFBackend(exported("tp1_sft"))
    session = ChatSession(
        Generator(backend), backend.template, GREEDY, input_filter=BlocklistFilter(("금지어",))
    )
    out = io.StringIO()
    repl(session, io.StringIO("안녕\n/reset\n이건 금지어 입니다\n\n잘 가\n/exit\n무시됨\n"), out)
    text = out.getvalue()
    assert text.count("bot> ") == 3
    assert (
        "\n[conversation reset]\nbot> [input refused: the input contains a term on the "
        "server's blocklist]\n" in text
    )
    assert [m.content for m in session.turns if m.role == "user"] == ["잘 가"]


def test_chat_cli_reads_piped_stdin(layout_checkpoint):
    _, checkpoint = layout_checkpoint("tp1_sft")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatbaker_megatron.cli",
            "chat",
            "--checkpoint",
            str(checkpoint),
            "--greedy",
            "--max-new-tokens",
            "5",
        ],
        input="안녕하세요\n한 번 더\n",
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("bot> ") == 2
    assert "names no chat template" not in run.stderr, "the SFT run's template is used"
