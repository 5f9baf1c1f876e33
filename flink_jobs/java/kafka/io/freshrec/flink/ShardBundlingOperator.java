package io.freshrec.flink;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
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
 * when it holds maxRecords records per shard it gathers, at the first tick of its own clock
 * after its first record (ticks every maxAgeMs, offset by {@link #phaseOf}: no record waits
 * longer than maxAgeMs), and at the end of a bounded input. Bundles with different phases go
 * out at different times: the next operator's work comes in smaller, spread-out calls instead
 * of one burst per maxAgeMs, which held up every other Python operator of the TaskManager.
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
    /** The bundle age: a bundle's ticks are this far apart. */
    protected final long maxAgeMs;
    private final boolean keepAcrossBarriers;

    private transient ListState<byte[]> kept;
    private transient Map<Integer, BundleBuffer> buffers;
    /** Shards holding records, in the order they got their first one. */
    private transient List<BundleBuffer> pending;
    private transient int bufferedRecords;
    /** When each pending bundle (by its shard) is due. */
    private transient Map<Integer, Long> dueAt;
    /** The earliest timer registered that has not fired (Long.MAX_VALUE: none). */
    private transient long timerAt;

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

    /** Where in each maxAgeMs the bundle named by this shard goes out (by default 0). */
    protected long phaseOf(int bundleShard) {
        return 0;
    }

    /** Appends the record of this shard to its bundle. */
    protected abstract void append(Row record, int shard, BundleBuffer bundle);

    @Override
    public void initializeState(StateInitializationContext context) throws Exception {
        super.initializeState(context);
        buffers = new HashMap<>();
        pending = new ArrayList<>();
        dueAt = new HashMap<>();
        timerAt = Long.MAX_VALUE;
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
        long now = getProcessingTimeService().getCurrentProcessingTime();
        for (BundleBuffer bundle : pending) { // restored: they go out at their next tick
            schedule(bundle, now);
        }
    }

    @Override
    public void processElement(StreamRecord<Row> element) {
        Row record = element.getValue();
        int shard = shardOf(record);
        BundleBuffer bundle = buffer(bundleOf(shard));
        append(record, shard, bundle);
        bundle.endRecord();
        bufferedRecords++;
        if (bundle.records() == 1) {
            pending.add(bundle);
            schedule(bundle, getProcessingTimeService().getCurrentProcessingTime());
        }
        if (bundle.records() >= maxRecords * shardsIn(bundle.shard())) {
            pending.remove(bundle);
            dueAt.remove(bundle.shard());
            emit(bundle);
        }
    }

    @Override
    public void onProcessingTime(long time) {
        if (time >= timerAt) {
            timerAt = Long.MAX_VALUE;
        }
        long next = Long.MAX_VALUE;
        for (Iterator<BundleBuffer> it = pending.iterator(); it.hasNext(); ) {
            BundleBuffer bundle = it.next();
            long due = dueAt.get(bundle.shard());
            if (due <= time) {
                it.remove();
                dueAt.remove(bundle.shard());
                emit(bundle);
            } else {
                next = Math.min(next, due);
            }
        }
        if (next != Long.MAX_VALUE) {
            registerTimer(next);
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

    /** The bundle's next tick, and a timer for it. */
    private void schedule(BundleBuffer bundle, long now) {
        long due = now;
        if (maxAgeMs > 0) { // the next tick after now: 1 to maxAgeMs away
            due = now + 1 + Math.floorMod(phaseOf(bundle.shard()) - now - 1, maxAgeMs);
        }
        dueAt.put(bundle.shard(), due);
        registerTimer(due);
    }

    /** A timer at this time unless an earlier one is still to fire (it registers the next). */
    private void registerTimer(long time) {
        if (time < timerAt) {
            getProcessingTimeService().registerTimer(time, this);
            timerAt = time;
        }
    }

    private void flushAll() {
        for (BundleBuffer bundle : pending) {
            emit(bundle);
        }
        pending.clear();
        dueAt.clear();
    }

    private void emit(BundleBuffer bundle) {
        bufferedRecords -= bundle.records();
        output.collect(new StreamRecord<>(Row.of(bundle.shard(), bundle.drain())));
    }
}
