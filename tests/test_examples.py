"""Several example pairs of one edit: `fit` over a list of pairs (one D̃, losses averaged over
pairs), `analogy(..., examples=…)`, the command line's pairs, the demo's extra pairs, and the
bench's `--examples K` (K − 1 further pairs of each triplet's edit type, from a stream of their own)."""

import hashlib

import pytest

from diffinv.shapes.world import JITTER, LAYOUT_RANGE, triplets

# sha256 (first 16 hex digits) of repr(triplets(50, seed, layout_range, split)) for seeds 0, 1 and
# 200, taken before the example pairs existed: drawing them must not move a single triplet.
TRIPLET_DIGESTS = {
    (JITTER, None): ["e5210a1c5c618164", "925e98c117b55fbc", "0278f14fddbbc9a7"],
    (JITTER, "seen"): ["db282fe82c965457", "e5c8693251857155", "732091a4a0fa1471"],
    (JITTER, "unseen"): ["fb69b72e3bde6885", "8f6051f2d60b6f5e", "969fdaf981782fed"],
    (JITTER, "compound"): ["7f83d690a8ff9b8a", "705388e87dc4ae4f", "82557aa485538ab1"],
    (LAYOUT_RANGE, None): ["d53afc1ce28dac16", "10b153462d603ba2", "74c7ef2aa0a27057"],
    (LAYOUT_RANGE, "seen"): ["ed2b858293ffa2fb", "20f68adf8a4442fd", "f374c3841fd938c8"],
    (LAYOUT_RANGE, "unseen"): ["55dc77992f052d63", "247eff46678b35a5", "a6c2ba7a7ca6bbb7"],
    (LAYOUT_RANGE, "compound"): ["8f2d3f9b5b87159e", "39c54413823c0bca", "37ee6c6f3250346a"],
}


@pytest.mark.parametrize(("layout_range", "split"), list(TRIPLET_DIGESTS))
def test_the_triplets_are_drawn_as_before_the_examples_existed(layout_range, split):
    digests = [
        hashlib.sha256(repr(triplets(50, seed, layout_range=layout_range, split=split)).encode()).hexdigest()[:16]
        for seed in (0, 1, 200)
    ]
    assert digests == TRIPLET_DIGESTS[(layout_range, split)]
