"""Interactive SAM without Qt: prompts from layers, candidates, commits, and the
`AnnotationSession` that ties them into the click -> candidates -> commit loop."""

from .candidates import (
    CANDIDATE_NAMES,
    Candidate,
    PromptSet,
    best_index,
    prompts_grew,
    rank_candidates,
)
from .commit import CommitError, CommitPlan, plan_commit
from .embedded_view import EmbeddingResult, frame_key, make_view_reader
from .session import AnnotationSession

__all__ = [
    "CANDIDATE_NAMES",
    "AnnotationSession",
    "Candidate",
    "CommitError",
    "CommitPlan",
    "EmbeddingResult",
    "PromptSet",
    "best_index",
    "frame_key",
    "make_view_reader",
    "plan_commit",
    "prompts_grew",
    "rank_candidates",
]
