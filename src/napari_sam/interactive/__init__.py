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
from .session import AnnotationSession, EmbeddingResult

__all__ = [
    "CANDIDATE_NAMES",
    "AnnotationSession",
    "Candidate",
    "CommitError",
    "CommitPlan",
    "EmbeddingResult",
    "PromptSet",
    "best_index",
    "plan_commit",
    "prompts_grew",
    "rank_candidates",
]
