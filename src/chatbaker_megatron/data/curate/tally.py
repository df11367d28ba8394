"""Checkpoints in the document stream: documents and characters per language at that point.

A `Tally` passes documents through unchanged and adds their count and
length to its datatrove stats (`docs`, `chars`, `docs_<language>`,
`chars_<language>`); datatrove saves and merges them per task like any
step's stats, so the report (report.py) reads the in/out of every stage, per
language, from the tallies on either side of it, whatever executor ran it.
"""

from __future__ import annotations

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

TALLY_PREFIX = "📊 tally: "


class Tally(PipelineStep):
    type = "📊 - TALLY"

    def __init__(self, checkpoint: str) -> None:
        # Before PipelineStep.__init__, which names the stats after the step.
        self.name = TALLY_PREFIX + checkpoint
        self.checkpoint = checkpoint
        super().__init__()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            chars = len(doc.text)
            self.stat_update("docs")
            self.stat_update("chars", value=chars)
            language = doc.metadata.get("language")
            if language:
                self.stat_update(f"docs_{language}")
                self.stat_update(f"chars_{language}", value=chars)
            yield doc
