package io.freshrec.flink;

import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * Emits one part of an output bundle from Python as rows, so that one Python call can feed
 * several sinks. A bundle is a sequence of sections up to its end: byte part, int32 n, then n
 * records. Parts 0..2 hold keyed records (int32 key length (-1 for null) + key, int32 value
 * length (-1 for null) + value), part 3 shard records (int32 shard, int32 length + payload);
 * sections of other parts are skipped by their own shape.
 */
abstract class BundleSplitter extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<byte[], Row> {
    private static final long serialVersionUID = 1L;

    static final int LAST_KEYED_PART = 2;
    static final int SHARD_PART = 3;

    private final int part;

    protected BundleSplitter(int part) {
        this.part = part;
    }

    static boolean isKeyedPart(int part) {
        return part >= 0 && part <= LAST_KEYED_PART;
    }

    /** Reads one record of this splitter's part. */
    protected abstract Row readRecord(BundleReader in);

    @Override
    public void processElement(StreamRecord<byte[]> element) {
        BundleReader in = new BundleReader(element.getValue());
        while (in.hasRemaining()) {
            int sectionAt = in.position();
            int sectionPart = in.readUnsignedByte();
            int n = in.readCount();
            if (sectionPart == part) {
                for (int i = 0; i < n; i++) {
                    output.collect(element.replace(readRecord(in)));
                }
            } else if (isKeyedPart(sectionPart)) {
                for (int i = 0; i < n; i++) {
                    in.skipBytes();
                    in.skipBytes();
                }
            } else if (sectionPart == SHARD_PART) {
                for (int i = 0; i < n; i++) {
                    in.readInt();
                    in.skipBytes();
                }
            } else {
                throw in.malformed(sectionAt, "unknown part " + sectionPart);
            }
        }
    }
}
