"""Input screening: every filter on every text before the model (or the upstream) sees any.

The filters are `--input-filter` (inference/filters.py) and the moderation
hook (serve/moderation.py), in that order; the first objection refuses the
request with 400 `content_filter`, and a moderation service that cannot be
reached fails it with 503, so no input reaches the model unscreened. With
`--upstream --moderate-output` the same filters judge the replies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from chatbaker_megatron.inference.filters import InputFilter
from chatbaker_megatron.serve.errors import APIError
from chatbaker_megatron.serve.moderation import ModerationUnavailable
from chatbaker_megatron.serve.request_log import Exchange

log = logging.getLogger("chatbaker.serve")


@dataclass(frozen=True)
class Screening:
    filters: tuple[InputFilter, ...] = ()

    async def objection(self, text: str) -> str | None:
        """The first filter's reason to refuse `text`, or None; 503 when moderation is down."""
        for input_filter in self.filters:
            try:
                # A filter may block on a moderation service: never on the event loop.
                reason = await run_in_threadpool(input_filter.check, text)
            except ModerationUnavailable as err:
                raise APIError(
                    503, str(err), type="server_error", code="moderation_unavailable"
                ) from None
            if reason is not None:
                return reason
        return None

    async def screen(self, texts: list[str], exchange: Exchange) -> None:
        """Refuse the request at the first objection to any of `texts`, and log the refusal.

        The message does not repeat the term, so a refusal never teaches what to misspell."""
        for text in texts:
            reason = await self.objection(text)
            if reason is not None:
                log.warning("refused an input: %s", reason)
                exchange.write(refused=reason)
                raise APIError(
                    400,
                    f"Your message was not sent to the model: {reason}.",
                    param=exchange.param,
                    code="content_filter",
                )

    async def output_objection(self, text: str) -> str | None:
        """Output moderation: a reason to cut a reply the filters object to (or cannot judge)."""
        try:
            return await self.objection(text)
        except APIError as err:
            return err.body["error"]["message"]
