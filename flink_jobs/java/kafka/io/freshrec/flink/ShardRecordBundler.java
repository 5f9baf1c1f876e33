package io.freshrec.flink;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.types.Row;

/**
 * Bundles Row(shard, payload) rows that already carry their shard, so the next Python operator
 * gets one call per bundle. Bundle: int32 n, then per record int32 length (-1 for a null
 * payload) + payload, in arrival order. Bundles being built at a barrier stay in operator
 * state (item-update's snapshot does not wait for them).
 */
public final class ShardRecordBundler extends ShardBundlingOperator {
    private static final long serialVersionUID = 1L;

    public ShardRecordBundler(int maxRecords, long maxAgeMs) {
        super(maxRecords, maxAgeMs, true);
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
