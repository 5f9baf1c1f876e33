package io.freshrec.flink;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.runtime.state.StateSnapshotContext;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;
import org.apache.flink.util.Preconditions;

/**
 * Gathers records into bundles and emits Row(shard, bundle), so that Python is called once per
 * bundle instead of once per record. By default each shard has its own bundle; a subclass may
 * gather several shards into one ({@link #bundleOf}), named by one of them. A bundle goes out
 * when it holds maxRecords records per shard it gathers; all bundles go out when the oldest
 * buffered record is maxAgeMs old and at the end of a bounded input.
 *
 * <p>At a checkpoint barrier the bundles being built either go out before it, or, with
 * keepAcrossBarriers, stay and are written to operator state (restored and sent on after a
 * failure). Sent before it, the next operator must process them before its own snapshot,
 * which lengthens every checkpoint by that work.
 */
abstract class ShardBundlingOperator extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row>, ProcessingTimeCallback {
    private static final long serialVersionUID = 1L;

    private final int maxRecords;
    private final long maxAgeMs;
    private final boolean keepAcrossBarriers;

    private transient ListState<byte[]> kept;
    private transient Map<Integer, BundleBuffer> buffers;
    /** Shards holding records, in the order they got their first one. */
    private transient List<BundleBuffer> pending;
    private transient int bufferedRecords;
    /** When the buffer last went from empty to non-empty: no buffered record is older. */
    private transient long firstBufferedAt;
    private transient boolean timerRegistered;

    protected ShardBundlingOperator(int maxRecords, long maxAgeMs, boolean keepAcrossBarriers) {
        Preconditions.checkArgument(maxRecords >= 1, "maxRecords must be >= 1: %s", maxRecords);
        Preconditions.checkArgument(maxAgeMs >= 0, "maxAgeMs must be >= 0: %s", maxAgeMs);
        this.maxRecords = maxRecords;
        this.maxAgeMs = maxAgeMs;
        this.keepAcrossBarriers = keepAcrossBarriers;
    }

    /** The shard the record goes to. */
    protected abstract int shardOf(Row record);

    /** The shard naming the bundle a shard's records go to (by default its own). */
    protected int bundleOf(int shard) {
        return shard;
    }

    /** How many shards the bundle named by this shard gathers (by default one). */
    protected int shardsIn(int bundleShard) {
        return 1;
    }

    /** Appends the record of this shard to its bundle. */
    protected abstract void append(Row record, int shard, BundleBuffer bundle);

    @Override
    public void initializeState(StateInitializationContext context) throws Exception {
        super.initializeState(context);
        buffers = new HashMap<>();
        pending = new ArrayList<>();
        if (!keepAcrossBarriers) {
            return;
        }
        kept = context.getOperatorStateStore().getListState(new ListStateDescriptor<>(
                "bundles-kept", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
        // After a rescale a subtask may get several snapshots of one shard: they append.
        for (byte[] snapshot : kept.get()) {
            BundleBuffer bundle = buffer(BundleBuffer.shardOf(snapshot));
            int n = bundle.restore(snapshot);
            if (n > 0 && bundle.records() == n) {
                pending.add(bundle);
            }
            bufferedRecords += n;
        }
    }

    @Override
    public void open() throws Exception {
        super.open();
        if (bufferedRecords > 0) { // restored: they go out at the age limit, counted from now
            firstBufferedAt = getProcessingTimeService().getCurrentProcessingTime();
            registerTimer(firstBufferedAt + maxAgeMs);
        }
    }

    @Override
    public void processElement(StreamRecord<Row> element) {
        Row record = element.getValue();
        int shard = shardOf(record);
        BundleBuffer bundle = buffer(bundleOf(shard));
        append(record, shard, bundle);
        bundle.endRecord();
        if (bundle.records() == 1) {
            pending.add(bundle);
        }
        if (bufferedRecords++ == 0) {
            firstBufferedAt = getProcessingTimeService().getCurrentProcessingTime();
            if (!timerRegistered) {
                registerTimer(firstBufferedAt + maxAgeMs);
            }
        }
        if (bundle.records() >= maxRecords * shardsIn(bundle.shard())) {
            pending.remove(bundle);
            emit(bundle);
        }
    }

    @Override
    public void onProcessingTime(long time) {
        timerRegistered = false;
        if (bufferedRecords == 0) {
            return;
        }
        long due = firstBufferedAt + maxAgeMs;
        if (due <= time) {
            flushAll();
        } else {
            // Everything older was flushed by count or a barrier since the timer was set.
            registerTimer(due);
        }
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        super.prepareSnapshotPreBarrier(checkpointId);
        if (!keepAcrossBarriers) {
            flushAll();
        }
    }

    @Override
    public void snapshotState(StateSnapshotContext context) throws Exception {
        super.snapshotState(context);
        if (keepAcrossBarriers) {
            List<byte[]> snapshots = new ArrayList<>(pending.size());
            for (BundleBuffer bundle : pending) {
                snapshots.add(bundle.snapshot());
            }
            kept.update(snapshots);
        }
    }

    @Override
    public void finish() throws Exception {
        flushAll();
        super.finish();
    }

    private BundleBuffer buffer(int shard) {
        return buffers.computeIfAbsent(shard, BundleBuffer::new);
    }

    private void registerTimer(long time) {
        getProcessingTimeService().registerTimer(time, this);
        timerRegistered = true;
    }

    private void flushAll() {
        for (BundleBuffer bundle : pending) {
            emit(bundle);
        }
        pending.clear();
    }

    private void emit(BundleBuffer bundle) {
        bufferedRecords -= bundle.records();
        output.collect(new StreamRecord<>(Row.of(bundle.shard(), bundle.drain())));
    }
}
