package io.freshrec.flink;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.types.Row;
import org.apache.flink.util.Preconditions;

/**
 * Bundles Row(shard, payload) rows that already carry their shard, so the next Python operator
 * gets one call per bundle. Bundle: int32 n, then per record int32 length (-1 for a null
 * payload) + payload, in arrival order. Bundles being built at a barrier stay in operator
 * state (item-update's snapshot does not wait for them). The shards' bundles go out at
 * ticks spread evenly over maxAgeMs (shard s of n at s / n of it), so item-update gets one
 * shard's messages at a time instead of every shard's at once.
 */
public final class ShardRecordBundler extends ShardBundlingOperator {
    private static final long serialVersionUID = 1L;

    private final int shards;

    public ShardRecordBundler(int maxRecords, long maxAgeMs, int shards) {
        super(maxRecords, maxAgeMs, true);
        Preconditions.checkArgument(shards >= 1, "shards must be >= 1: %s", shards);
        this.shards = shards;
    }

    @Override
    protected long phaseOf(int bundleShard) {
        return Math.floorMod(bundleShard, shards) * maxAgeMs / shards;
    }

    /** Row(shard INT, bundle BYTES). */
    public static TypeInformation<Row> producedType() {
        return RecordBundler.producedType();
    }

    @Override
    protected int shardOf(Row record) {
        return (Integer) record.getField(0);
    }

    @Override
    protected void append(Row record, int shard, BundleBuffer bundle) {
        bundle.putBytes((byte[]) record.getField(1));
    }
}
