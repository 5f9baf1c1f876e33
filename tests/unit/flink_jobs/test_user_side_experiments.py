"""The user side under an experiment: every list carries its user's variant, a
`trending-only` variant lists trending items, and the per-variant counts add up."""

from __future__ import annotations

import jsonschema

from flink_jobs.bundles import RECOMMENDATIONS, decode_output_bundle
from flink_jobs.user_side import UserSide
from online_models.experiments import Experiment
from schemas.loader import load_schema
from schemas.recommendation import Recommendation
from tests.unit.flink_jobs.bundle_sides import T0, Store, catalogue, event, settings

CFG_K = 5  # settings() lists have top_k = 5


def test_user_side_lists_carry_their_variant_and_the_counts_add_up() -> None:
    exp = Experiment.from_mapping({"key": "k", "variants": {
        "control": {"share": 0.5}, "trending": {"share": 0.5, "trending_only": True}}})
    side, store = UserSide(settings(experiment=exp)), Store()
    catalogue(side)
    users = [f"u{n}" for n in range(12)]
    seen_lists: dict[str, Recommendation] = {}
    published = tests = 0
    lists = hits = 0
    for round_ in range(3):
        records = [event(100 * round_ + j, u, f"i{(j + round_) % 30}")
                   for j, u in enumerate(users)]
        result = side.process(records, store.load, now=T0 + 1000 * round_)
        store.apply(result.writes)
        for _, value in decode_output_bundle(result.output.to_bytes())[RECOMMENDATIONS]:
            rec = Recommendation.from_json(value)
            seen_lists[rec.user_id] = rec
        s = result.stats
        published += s.published
        lists += sum(s.variant_lists.values())
        tests += sum(s.variant_tests.values())
        hits += sum(s.variant_hits.values())
        # Tests are counted by variant and the user's group (the intervals' unit).
        cells = {(exp.variant_of(u), str(exp.group_of(u))) for u in users}
        assert set(s.variant_tests) <= cells
    assert lists == published == 36 and tests == 24 and 0 <= hits <= tests
    assert {rec.variant for rec in seen_lists.values()} == {"control", "trending"}
    trending = [side.replica.ids[r] for r in side.replica.trending_rows(CFG_K)]
    for user, rec in seen_lists.items():
        assert rec.variant == exp.variant_of(user)
        if rec.variant == "trending":
            assert [it.item_id for it in rec.items] == trending[:len(rec.items)]
            assert {it.reason for it in rec.items} == {"popular now"}
    schema = load_schema("recommendation.v1.json")
    jsonschema.validate(next(iter(seen_lists.values())).to_json(), schema)
    no_exp = UserSide(settings())
    catalogue(no_exp)
    out = no_exp.process([event(1, "u1", "i1")], Store().load, now=T0)
    rec = Recommendation.from_json(decode_output_bundle(out.output.to_bytes())
                                   [RECOMMENDATIONS][0][1])
    assert rec.variant is None and "variant" not in rec.to_json()
    assert not out.stats.variant_lists


def test_each_variant_reports_the_blend_selection_its_lists_use() -> None:
    # The blend gauge is labelled by variant: under an experiment, the variants' own
    # selections (the settings' one serves nobody); without, the settings' one as default.
    exp = Experiment.from_mapping({"key": "k", "variants": {
        "control": {"share": 0.5}, "trending": {"share": 0.5, "trending_only": True}}})
    side = UserSide(settings(experiment=exp))
    serving = side.serving_blends()
    assert set(serving) == {"control", "trending"}
    assert all(serving[name] is side.blends[name] for name in serving)
    assert side.blend not in serving.values()
    plain = UserSide(settings())
    assert plain.serving_blends() == {"default": plain.blend}
