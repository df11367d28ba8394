"""`chatbaker chat`: an interactive multi-turn chat REPL on stdin/stdout, replies streamed.

Prompts are rendered by data/preprocess/sft_tokenize.encode_prompt with the chat
template the model was fine-tuned with (the run config of a checkpoint, or
the `chatbaker_template.yaml` an export ships), the same code that built the
SFT training sequences, so serving shows the model exactly the text shape it
was trained on. Lines starting with / are commands: /reset, /exit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TextIO

from chatbaker_megatron.data.preprocess.sft_tokenize import encode_prompt
from chatbaker_megatron.data.templates import ChatTemplate, Message
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer
from chatbaker_megatron.inference.filters import InputFilter, load_filter
from chatbaker_megatron.inference.generator import Generation, Generator
from chatbaker_megatron.inference.options import (
    add_model_arguments,
    add_sampling_arguments,
    add_template_arguments,
    chat_template,
    load_backend,
    sampling_config,
)
from chatbaker_megatron.inference.sampling import SamplingConfig


def turn_stops(
    template: ChatTemplate, tokenizer: ChatBakerTokenizer
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """What ends a reply besides eos: the start of the next user turn (a token or a string)."""
    opener = template.user_format.split("{content}", 1)[0]
    opener = (
        opener.replace("{bos}", tokenizer.bos_token).replace("{eos}", tokenizer.eos_token).strip()
    )
    if not opener:
        return (), ()
    special = tuple(
        i for i in tokenizer.encode(opener) if tokenizer.decode([i], skip_special_tokens=True) == ""
    )
    return (special[:1], ()) if special else ((), (opener,))


class ChatSession:
    """A conversation: history, prompt rendering, the input filter, and turns that fit the model."""

    def __init__(
        self,
        generator: Generator,
        template: ChatTemplate,
        sampling: SamplingConfig,
        *,
        system: str | None = None,
        input_filter: InputFilter | None = None,
    ) -> None:
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self.template = template
        self.sampling = sampling
        self.system = system
        self.input_filter = input_filter
        self.turns: list[Message] = []
        self.stop_ids, self.stop_strings = turn_stops(template, self.tokenizer)

    def reset(self) -> None:
        self.turns = []

    def _prompt(self, turns: list[Message]) -> list[int]:
        system = [Message("system", self.system)] if self.system is not None else []
        return encode_prompt(self.tokenizer, self.template, system + turns)

    def _fitting_prompt(self, turns: list[Message]) -> tuple[list[Message], list[int]]:
        """Drop the oldest exchanges until the prompt leaves room for a reply."""
        room = self.generator.backend.max_length - min(self.sampling.max_new_tokens, 64)
        prompt = self._prompt(turns)
        while len(prompt) > room and len(turns) > 1:
            turns = turns[2:]
            prompt = self._prompt(turns)
        if len(prompt) >= self.generator.backend.max_length:
            raise ValueError(
                f"the system prompt and this message take {len(prompt)} tokens; the model "
                f"attends over {self.generator.backend.max_length}"
            )
        return turns, prompt

    def reply(self, text: str, on_text: Callable[[str], None] | None = None) -> Generation | str:
        """The model's reply (streamed to `on_text`), or the reason the input was refused."""
        if self.input_filter is not None:
            reason = self.input_filter.check(text)
            if reason is not None:
                return reason
        turns, prompt = self._fitting_prompt([*self.turns, Message("user", text)])
        result = self.generator.generate(
            prompt,
            self.sampling,
            stop_ids=self.stop_ids,
            stop_strings=self.stop_strings,
            on_text=on_text,
        )
        self.turns = [*turns, Message("assistant", result.text.strip())]
        return result


class _ReplyPrinter:
    """Streams one reply without its opening whitespace (templates reply with " {content}")."""

    def __init__(self, show: Callable[[str], None]) -> None:
        self.show = show
        self.started = False

    def __call__(self, piece: str) -> None:
        if not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        if piece:
            self.show(piece)


def repl(session: ChatSession, stdin: TextIO, stdout: TextIO) -> None:
    interactive = stdin.isatty()

    def show(piece: str) -> None:
        stdout.write(piece)
        stdout.flush()

    while True:
        if interactive:
            show("you> ")
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            show("[conversation reset]\n")
            continue
        show("bot> ")
        try:
            outcome = session.reply(text, on_text=_ReplyPrinter(show))
        except ValueError as err:
            show(f"[{err}]\n")
            continue
        if isinstance(outcome, str):
            show(f"[input refused: {outcome}]\n")
        else:
            show("\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_template_arguments(parser)
    add_sampling_arguments(parser, max_new_tokens=256, repetition_penalty=1.1)


def run(args: argparse.Namespace) -> int:
    sampling = sampling_config(args)
    input_filter = load_filter(args.input_filter)
    backend = load_backend(args)
    session = ChatSession(
        Generator(backend),
        chat_template(args, backend.template),
        sampling,
        system=args.system,
        input_filter=input_filter,
    )
    repl(session, sys.stdin, sys.stdout)
    return 0
