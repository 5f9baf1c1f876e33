"""The item messages' bundler (``ShardRecordBundler``) in a real Flink MiniCluster: each
shard's bundles go out at the shard's own tick, spread over the bundle age, so item-update
gets one shard's messages at a time rather than every shard's at once."""

from __future__ import annotations

import time

from flink_jobs.bundles import decode_shard_bundle
from flink_jobs.operators import SHARD_BUNDLE_TYPE
from flink_jobs.recommender_job import java_operator, job_jars
from freshrec_common.settings import load_settings

SHARDS, AGE_MS, EVERY_S, N = 4, 800, 0.005, 800


def _paced(n: int):  # type: ignore[no-untyped-def]
    """Record n, for shard n % SHARDS, one every EVERY_S (the bundler's input stays steady)."""
    from pyflink.common import Row

    time.sleep(EVERY_S)
    return Row(n % SHARDS, n.to_bytes(4, "big"))


def test_each_shard_bundle_goes_out_at_its_own_tick() -> None:
    from pyflink.common import Configuration, Types, WatermarkStrategy
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.connectors.number_seq import NumberSequenceSource
    from pyflink.java_gateway import get_gateway

    conf = Configuration()
    conf.set_string("python.execution-mode", "thread")
    # Each record and bundle leaves its operator at once (Python's output included).
    conf.set_string("python.fn-execution.bundle.size", "1")
    conf.set_string("python.fn-execution.bundle.time", "1")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    env.set_buffer_timeout(0)
    env.add_jars(*(jar.resolve().as_uri() for jar in job_jars(load_settings(None))))
    glue = get_gateway().jvm.io.freshrec.flink
    numbers = env.from_source(NumberSequenceSource(0, N - 1), WatermarkStrategy.no_watermarks(),
                              "numbers")
    rows = numbers.map(_paced, output_type=SHARD_BUNDLE_TYPE)
    bundles = java_operator(rows, "bundle", glue.ShardRecordBundler(10_000, AGE_MS, SHARDS),
                            SHARD_BUNDLE_TYPE)
    stamped = bundles.map(
        lambda b: (int(b[0]), [int.from_bytes(r, "big") for r in decode_shard_bundle(b[1])],
                   time.time()),
        output_type=Types.TUPLE([Types.INT(), Types.LIST(Types.LONG()), Types.DOUBLE()]))
    with stamped.execute_and_collect() as results:
        got = sorted(((t, shard, ns) for shard, ns, t in results), key=lambda x: x[0])
    # Every record once, in its shard, in order.
    by_shard: dict[int, list[int]] = {}
    for _, shard, ns in got:
        assert all(n % SHARDS == shard for n in ns)
        by_shard.setdefault(shard, []).extend(ns)
    assert by_shard == {s: list(range(s, N, SHARDS)) for s in range(SHARDS)}
    # Timed bundles (the last of each shard goes out at the end of input): a shard's come
    # one age apart, and the four shards' at four different moments of it: each bundle's
    # nearest other shard's bundle is about a quarter of the age away (all four at one
    # tick would make it ~0).
    timed = [(t, shard) for t, shard, _ in got[:-SHARDS]]
    assert len(timed) >= 2 * SHARDS, got
    gaps = [min(abs(t - u) for u, other in timed if other != shard) for t, shard in timed]
    gaps.sort()
    assert gaps[len(gaps) // 2] > AGE_MS / SHARDS / 1000 / 2, gaps
