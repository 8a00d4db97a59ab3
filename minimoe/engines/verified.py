"""Fingerprints of the reference functions the native engine's fast paths mirror, as last verified.

Written by hand from `python -m minimoe.engines fingerprints` after tests/test_engines.py passed: change a
fast path together with the reference it mirrors, run the tests, then record the new fingerprints here.
"""

VERIFIED = {
    'minimoe.cache.KVCache.update': 'a51d982a009ed239',
    'minimoe.linear.AWQLinear.forward': 'f3c44cdc53522fd6',
    'minimoe.linear.Linear.forward': 'f852a80d414e9d94',
    'minimoe.model.Attention.forward': 'adcacc7f4e706c2d',
    'minimoe.model.DecoderLayer.forward': 'bc5ee61f45aa64f6',
    'minimoe.model.Expert.forward': 'ae836385ccbf510f',
    'minimoe.model.MLP.forward': 'a25fc4e0476b321c',
    'minimoe.model.RMSNorm.forward': '3117336f00ab01c2',
    'minimoe.model.Router.forward': 'b8db3d433887a985',
    'minimoe.model.SparseMoeBlock.forward': 'f564307cca559a78',
    'minimoe.model.apply_rope': 'e38e41d43daede7a',
    'minimoe.model.grouped_attention': '63373dd61342211a',
    'minimoe.model.rotate_half': 'f853f60c7b0ee1d1',
}
