"""The optional moderation hook: ask an OpenAI-compatible `/v1/moderations` endpoint.

An input filter (inference/filters.py's `check(text) -> reason | None`) whose
verdict comes from a moderation service, as the online demo screened its
inputs. `--moderation-url` is the API's base URL (`http://host:port/v1`);
the official `openai` client posts to `<url>/moderations`. A service that
cannot be reached refuses nothing and lets nothing through: the request
fails with 503 (ModerationUnavailable), so no unscreened input reaches the model.
"""

from __future__ import annotations


class ModerationUnavailable(RuntimeError):
    pass


class ModerationFilter:
    def __init__(
        self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 10.0
    ) -> None:
        from openai import OpenAI

        self.url = url
        self.model = model
        # No retries: a request waits for the verdict, and a slow verdict is a 503 soon.
        self.client = OpenAI(
            base_url=url, api_key=api_key or "unused", timeout=timeout, max_retries=0
        )

    def check(self, text: str) -> str | None:
        import openai

        try:
            if self.model:
                response = self.client.moderations.create(input=text, model=self.model)
            else:
                response = self.client.moderations.create(input=text)
        except openai.OpenAIError as err:
            raise ModerationUnavailable(
                f"the moderation service at {self.url} did not answer: {err}"
            ) from err
        result = response.results[0]
        if not result.flagged:
            return None
        flagged = [name for name, on in result.categories.model_dump().items() if on]
        return f"the moderation service flagged the input ({', '.join(flagged) or 'flagged'})"
