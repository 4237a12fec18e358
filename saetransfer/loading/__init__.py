"""Loading: models, SAEs, tokenizers and token samples, offline by default.

One place knows how to get a HookedSAETransformer from a local HF checkpoint or the HF cache
(never the Hub unless `allow_hub`), how to load an SAE and check that it fits, whether two
tokenizers agree on a sample's ids, and how to draw the pair's seeded token sample. Every failure
is a `LoadingError` subclass whose message names the problem.

Heavy libraries (transformers, TransformerLens, SAELens) are imported inside the functions that
need them, so importing this package is cheap.
"""

from saetransfer.loading.availability import availability, check_local_sources
from saetransfer.loading.datasources import read_column
from saetransfer.loading.errors import (
    BosMismatchError, DatasetFormatError, DeviceUnavailableError, HubUnavailableError, IncompatibleTokenizersError,
    LoadingError, MissingPathError, ProcessingFlagError, SaeConfigError, SaeMismatchError, TokenBudgetError,
    TooFewTokensError, UnreadableFileError, UnsupportedArchitectureError, UnsupportedHookError,
)
from saetransfer.loading.models import LoadedModel, checkpoint_dir, load_model, load_tokenizer, processing_for
from saetransfer.loading.preflight import check_token_budget, preflight
from saetransfer.loading.saes import LoadedSAE, check_sae_fits, load_sae
from saetransfer.loading.tl_configs import tl_config
from saetransfer.loading.tokenizers import (
    Compatibility, TokenizerComparison, check_compatible, compare_tokenizers, compare_vocabs, good_token_pct,
    require_compatible,
)
from saetransfer.loading.tokens import TokenSample, sample_tokens, tokens_sha256

__all__ = [
    "BosMismatchError", "Compatibility", "DatasetFormatError", "DeviceUnavailableError", "HubUnavailableError",
    "IncompatibleTokenizersError", "LoadedModel", "LoadedSAE", "LoadingError", "MissingPathError", "ProcessingFlagError",
    "SaeConfigError", "SaeMismatchError", "TokenBudgetError", "TokenSample", "TokenizerComparison", "TooFewTokensError",
    "UnreadableFileError", "UnsupportedArchitectureError", "UnsupportedHookError", "availability", "check_compatible",
    "check_local_sources", "check_sae_fits", "check_token_budget", "checkpoint_dir", "compare_tokenizers",
    "compare_vocabs", "good_token_pct", "load_model", "load_sae", "load_tokenizer", "preflight", "processing_for",
    "read_column", "require_compatible", "sample_tokens", "tl_config", "tokens_sha256",
]
