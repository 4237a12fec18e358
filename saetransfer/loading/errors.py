"""Every way loading can fail, as one family of exceptions.

All subclass `LoadingError(ValueError)`, so callers can catch the family and tests can match the
exact kind. Messages name the thing that failed (path, repo, hook, numbers) and, where one exists,
the fix.
"""

from __future__ import annotations


class LoadingError(ValueError):
    """Base class: something the pair needs could not be loaded or does not fit."""


class MissingPathError(LoadingError):
    """A local path named by a source does not exist (or lacks the file that makes it usable)."""


class UnreadableFileError(MissingPathError):
    """A file a source needs exists but cannot be parsed (truncated weights, malformed config.json)."""


class HubUnavailableError(LoadingError):
    """A Hub source is needed but not in the HF cache and downloads are off (or it is gated)."""


class UnsupportedArchitectureError(LoadingError):
    """The checkpoint's architecture or one of its options has no TransformerLens mapping here."""


class ProcessingFlagError(LoadingError):
    """An unknown or non-boolean TransformerLens weight-processing flag."""


class SaeConfigError(LoadingError):
    """An SAE's config lacks a setting the suite needs (hook, context size, BOS policy)."""


class SaeMismatchError(LoadingError):
    """The SAE does not fit the model or the registry entry (width, hook)."""


class UnsupportedHookError(SaeMismatchError):
    """The registry hook is not a residual-stream hook of the model (a typo, a layer past the last one,
    or a hook kind the spliced pass cannot start from)."""


class DeviceUnavailableError(LoadingError):
    """The run asks for a device this machine lacks (`--gpu` without CUDA)."""


class TokenBudgetError(LoadingError):
    """The token budget is not a positive integer or is smaller than one full batch of rows."""


class IncompatibleTokenizersError(LoadingError):
    """The evaluation sample's ids do not mean the same tokens in the base and the finetune."""


class DatasetFormatError(LoadingError):
    """A dataset file is unreadable, lacks the column, or has rows of the wrong shape."""


class BosMismatchError(DatasetFormatError):
    """Pretokenized rows disagree with the BOS policy (prepend_bos) they are sampled for."""


class TooFewTokensError(LoadingError):
    """The dataset holds fewer tokens than the sample asks for."""
