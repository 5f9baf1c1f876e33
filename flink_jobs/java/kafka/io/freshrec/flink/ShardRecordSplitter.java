package io.freshrec.flink;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.types.Row;
import org.apache.flink.util.Preconditions;

/**
 * Emits Row(shard, payload) for every record of the shard part (3) of an output bundle, for
 * a {@link ShardRecordBundler} further down.
 */
public final class ShardRecordSplitter extends BundleSplitter {
    private static final long serialVersionUID = 1L;

    public ShardRecordSplitter(int part) {
        super(part);
        Preconditions.checkArgument(part == SHARD_PART, "not the shard part: %s", part);
    }

    /** Row(shard INT, payload BYTES). */
    public static TypeInformation<Row> producedType() {
        return RecordBundler.producedType();
    }

    @Override
    protected Row readRecord(BundleReader in) {
        int shard = in.readInt();
        return Row.of(shard, in.readBytes());
    }
}
