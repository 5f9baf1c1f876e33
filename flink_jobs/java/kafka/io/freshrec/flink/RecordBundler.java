package io.freshrec.flink;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.zip.CRC32;

import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.runtime.state.KeyGroupRangeAssignment;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;
import org.apache.flink.util.Preconditions;

/**
 * Bundles the raw Kafka rows of {@link RecordWithMetadataDeserializer} per shard, so the Python
 * operator gets one call per bundle. The shard is the CRC32 of the value's top-level string
 * field {@code shardField} (all records of one user land in one shard, in arrival order), or of
 * the raw bytes when there is no such field; no input bytes can make it fail.
 *
 * <p>Bundle: int32 n, then per record int32 shard, int32 partition, int64 offset,
 * int64 timestamp, int32 key length (-1 for null) + key, int32 value length (-1 for null) +
 * value.
 *
 * <p>With {@code shardKeys} (the Flink key of each shard, keyed as PyFlink keys a Python key
 * selector's int), the shards that the next operator's subtasks share go into one bundle,
 * named by the lowest of them: at a steady rate a subtask gets one Python call per bundle
 * age however many shards it holds (a call has a fixed cost of several milliseconds, so four
 * shards' calls of ~13 events each cost ~1.6x one call of ~50). The subtask is the one
 * Flink gives the shard's key at this operator's parallelism and max parallelism, which the
 * keyed operator shares; the Python side switches to each record's shard to use its state.
 *
 * <p>With {@code markBarriers}, every checkpoint barrier is preceded, after the buffered
 * bundles, by a marker for every shard: a bundle whose count is -1. The Python side keeps
 * what it must carry into the checkpoint in the shard's state then (the score blends) and
 * scores the lists it still owes: exactly-once output becomes visible only when its
 * checkpoint commits, and these lists commit with it instead of one interval later.
 *
 * <p>With {@code keepAcrossBarriers}, bundles being built at a barrier stay in operator state
 * instead of going out before it (see {@link ShardBundlingOperator}).
 *
 * <p>With {@code packItemEmbeddings}, each value that is an item-embedding v1 record goes into
 * the bundle in the replica's layout {@code FR1} instead ({@link ItemEmbeddingPacker}).
 */
public final class RecordBundler extends ShardBundlingOperator {
    private static final long serialVersionUID = 1L;
    private static final byte[] EMPTY = new byte[0];

    private final String shardField;
    private final int shards;
    private final int maxParseBytes;
    private final boolean markBarriers;
    private final int[] shardKeys;
    private final boolean packItemEmbeddings;

    private transient JsonFactory json;
    private transient ItemEmbeddingPacker packer;
    private transient CRC32 crc;
    /** The shard naming each shard's bundle, and how many shards each such bundle gathers. */
    private transient int[] bundleShard;
    private transient int[] shardsInBundle;

    public RecordBundler(String shardField, int shards, int maxRecords, long maxAgeMs,
            int maxParseBytes, boolean markBarriers, boolean keepAcrossBarriers,
            int[] shardKeys, boolean packItemEmbeddings) {
        super(maxRecords, maxAgeMs, keepAcrossBarriers);
        Preconditions.checkArgument(!(markBarriers && keepAcrossBarriers),
                "a marker must follow every bundle built before its barrier");
        Preconditions.checkArgument(shards >= 1, "shards must be >= 1: %s", shards);
        // A kept bundle would be restored whole into one bundle after a rescale.
        Preconditions.checkArgument(shardKeys == null
                || (shardKeys.length == shards && !keepAcrossBarriers),
                "shardKeys needs one key per shard and bundles that are not kept");
        this.shardField = shardField == null || shardField.isEmpty() ? null : shardField;
        this.shards = shards;
        this.maxParseBytes = maxParseBytes;
        this.markBarriers = markBarriers;
        this.shardKeys = shardKeys;
        this.packItemEmbeddings = packItemEmbeddings;
    }

    /** Row(shard INT, bundle BYTES), the type of every bundler's and ShardRecordSplitter's rows. */
    public static TypeInformation<Row> producedType() {
        return Types.ROW(Types.INT, PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
    }

    @Override
    public void open() throws Exception {
        super.open();
        json = new JsonFactory();
        crc = new CRC32();
        packer = packItemEmbeddings ? new ItemEmbeddingPacker() : null;
        bundleShard = new int[shards];
        shardsInBundle = new int[shards];
        int parallelism = getRuntimeContext().getTaskInfo().getNumberOfParallelSubtasks();
        int maxParallelism = getRuntimeContext().getTaskInfo().getMaxNumberOfParallelSubtasks();
        int[] firstOfSubtask = new int[parallelism];
        java.util.Arrays.fill(firstOfSubtask, -1);
        for (int shard = 0; shard < shards; shard++) {
            if (shardKeys == null) {
                bundleShard[shard] = shard;
                continue;
            }
            Row key = new Row(1); // as PyFlink's KeyByKeySelector wraps the key
            key.setField(0, shardKeys[shard]);
            int subtask = KeyGroupRangeAssignment.assignKeyToParallelOperator(
                    key, maxParallelism, parallelism);
            if (firstOfSubtask[subtask] < 0) {
                firstOfSubtask[subtask] = shard;
            }
            bundleShard[shard] = firstOfSubtask[subtask];
        }
        for (int shard = 0; shard < shards; shard++) {
            shardsInBundle[bundleShard[shard]]++;
        }
    }

    @Override
    protected int bundleOf(int shard) {
        return bundleShard[shard];
    }

    @Override
    protected int shardsIn(int bundleShard) {
        return shardsInBundle[bundleShard];
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        super.prepareSnapshotPreBarrier(checkpointId);
        if (markBarriers) {
            for (int shard = 0; shard < shards; shard++) {
                output.collect(new StreamRecord<>(Row.of(shard, new byte[] {-1, -1, -1, -1})));
            }
        }
    }

    @Override
    protected int shardOf(Row record) {
        if (shardField == null) {
            return 0;
        }
        byte[] value = (byte[]) record.getField(5);
        if (value != null && value.length <= maxParseBytes) {
            String id = topLevelString(value);
            if (id != null) {
                return shard(id.getBytes(StandardCharsets.UTF_8));
            }
        }
        byte[] key = (byte[]) record.getField(4);
        return shard(value != null ? value : key != null ? key : EMPTY);
    }

    @Override
    protected void append(Row record, int shard, BundleBuffer bundle) {
        bundle.putInt(shard);
        bundle.putInt((Integer) record.getField(1));
        bundle.putLong((Long) record.getField(2));
        bundle.putLong((Long) record.getField(3));
        bundle.putBytes((byte[]) record.getField(4));
        byte[] value = (byte[]) record.getField(5);
        byte[] packed = packer == null ? null : packer.pack(value);
        bundle.putBytes(packed != null ? packed : value);
    }

    private int shard(byte[] bytes) {
        crc.reset();
        crc.update(bytes);
        return Math.floorMod((int) crc.getValue(), shards);
    }

    /** The first top-level field named shardField if it is a string, else null. */
    private String topLevelString(byte[] value) {
        try (JsonParser parser = json.createParser(value)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            while (parser.nextToken() == JsonToken.FIELD_NAME) {
                boolean match = shardField.equals(parser.currentName());
                JsonToken token = parser.nextToken();
                if (match) {
                    return token == JsonToken.VALUE_STRING ? parser.getText() : null;
                }
                parser.skipChildren();
            }
            return null;
        } catch (IOException | RuntimeException e) {
            return null; // not JSON: the caller hashes the raw bytes
        }
    }
}
