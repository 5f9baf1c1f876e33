package io.freshrec.flink;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;
import org.apache.flink.util.Preconditions;

/**
 * Gathers records into one bundle per shard and emits Row(shard, bundle), so that Python is
 * called once per bundle instead of once per record. A shard's bundle goes out when it holds
 * maxRecords records; all bundles go out when the oldest buffered record is maxAgeMs old,
 * before every checkpoint barrier and at the end of a bounded input. Nothing is ever held
 * across a barrier, so the operator has no state to snapshot.
 */
abstract class ShardBundlingOperator extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row>, ProcessingTimeCallback {
    private static final long serialVersionUID = 1L;

    private final int maxRecords;
    private final long maxAgeMs;

    private transient Map<Integer, BundleBuffer> buffers;
    /** Shards holding records, in the order they got their first one. */
    private transient List<BundleBuffer> pending;
    private transient int bufferedRecords;
    /** When the buffer last went from empty to non-empty: no buffered record is older. */
    private transient long firstBufferedAt;
    private transient boolean timerRegistered;

    protected ShardBundlingOperator(int maxRecords, long maxAgeMs) {
        Preconditions.checkArgument(maxRecords >= 1, "maxRecords must be >= 1: %s", maxRecords);
        Preconditions.checkArgument(maxAgeMs >= 0, "maxAgeMs must be >= 0: %s", maxAgeMs);
        this.maxRecords = maxRecords;
        this.maxAgeMs = maxAgeMs;
    }

    /** The shard the record goes to. */
    protected abstract int shardOf(Row record);

    /** Appends the record to its shard's bundle. */
    protected abstract void append(Row record, BundleBuffer bundle);

    @Override
    public void open() throws Exception {
        super.open();
        buffers = new HashMap<>();
        pending = new ArrayList<>();
    }

    @Override
    public void processElement(StreamRecord<Row> element) {
        Row record = element.getValue();
        int shard = shardOf(record);
        BundleBuffer bundle = buffers.computeIfAbsent(shard, BundleBuffer::new);
        append(record, bundle);
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
        if (bundle.records() >= maxRecords) {
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
        flushAll();
    }

    @Override
    public void finish() throws Exception {
        flushAll();
        super.finish();
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
