"""Finding 1 (seed README, post §2): are the tokenizers compatible on the evaluation sample?

The seed printed the table and carried on, feeding base ids to the finetune whatever it said. Here an
incompatible pair stops: its verdict is `not comparable` and findings 2-4 skip with the reason. The
post's claims about it (incompatible tokenizers stop the pair, compatibility as expected, the identity
pair's tokenizer) are decided in `test_post_claims.py`.
"""

from __future__ import annotations

import pytest

from saetransfer.loading import good_token_pct


@pytest.mark.finding(1)
def test_finding1_tokenizers(pair, result, metrics_snapshot):
    """The post's code's vocabulary table, and compatibility decided on the ids the evaluation actually uses."""
    t, c = result.tokenizer, result.compatibility
    # the post's code's arithmetic: good = size - only-here - mismatched, as a percentage of the size
    assert t.good_base_pct == pytest.approx(good_token_pct(t.base_size, t.only_in_base, t.mismatched))
    assert t.good_finetune_pct == pytest.approx(good_token_pct(t.finetune_size, t.only_in_finetune, t.mismatched))
    assert c.n_distinct_ids > 0 and 0 <= c.n_differing <= c.n_distinct_ids
    assert c.compatible == (c.n_differing == 0), c.reason
    metrics_snapshot({"base_size": t.base_size, "finetune_size": t.finetune_size, "only_in_base": t.only_in_base,
                      "only_in_finetune": t.only_in_finetune, "mismatched": t.mismatched,
                      "good_base_pct": t.good_base_pct, "good_finetune_pct": t.good_finetune_pct,
                      "compatible": c.compatible, "n_distinct_ids": c.n_distinct_ids, "n_differing": c.n_differing})
