package io.freshrec.flink;

import java.util.Arrays;

/**
 * One shard's bundle being built: a big-endian int32 record count followed by the records.
 * The array is kept and reused after every drain, so a steady stream of records appends
 * without allocating; only the emitted copy is new.
 */
final class BundleBuffer {
    private final int shard;
    private byte[] bytes = new byte[1024];
    private int size = Integer.BYTES; // the count is written at drain
    private int records;

    BundleBuffer(int shard) {
        this.shard = shard;
    }

    int shard() {
        return shard;
    }

    int records() {
        return records;
    }

    void putInt(int v) {
        ensure(Integer.BYTES);
        writeInt(bytes, size, v);
        size += Integer.BYTES;
    }

    void putLong(long v) {
        putInt((int) (v >>> 32));
        putInt((int) v);
    }

    /** int32 length (-1 for null), then the bytes. */
    void putBytes(byte[] b) {
        if (b == null) {
            putInt(-1);
            return;
        }
        putInt(b.length);
        ensure(b.length);
        System.arraycopy(b, 0, bytes, size, b.length);
        size += b.length;
    }

    void endRecord() {
        records++;
    }

    /** The bundle so far with its shard in front (int32 shard, int32 n, records); the buffer
     * is unchanged. {@link #restore} takes it back. */
    byte[] snapshot() {
        byte[] copy = new byte[Integer.BYTES + size];
        System.arraycopy(bytes, 0, copy, Integer.BYTES, size);
        writeInt(copy, 0, shard);
        writeInt(copy, Integer.BYTES, records);
        return copy;
    }

    /** The shard of a {@link #snapshot}. */
    static int shardOf(byte[] snapshot) {
        return readInt(snapshot, 0);
    }

    /** Appends the records of a {@link #snapshot} of this shard; returns how many. */
    int restore(byte[] snapshot) {
        int n = readInt(snapshot, Integer.BYTES);
        int from = 2 * Integer.BYTES;
        ensure(snapshot.length - from);
        System.arraycopy(snapshot, from, bytes, size, snapshot.length - from);
        size += snapshot.length - from;
        records += n;
        return n;
    }

    /** The finished bundle; the buffer is empty afterwards. */
    byte[] drain() {
        byte[] bundle = Arrays.copyOf(bytes, size);
        writeInt(bundle, 0, records);
        size = Integer.BYTES;
        records = 0;
        return bundle;
    }

    private static void writeInt(byte[] b, int at, int v) {
        b[at] = (byte) (v >>> 24);
        b[at + 1] = (byte) (v >>> 16);
        b[at + 2] = (byte) (v >>> 8);
        b[at + 3] = (byte) v;
    }

    private static int readInt(byte[] b, int at) {
        return (b[at] & 0xff) << 24 | (b[at + 1] & 0xff) << 16 | (b[at + 2] & 0xff) << 8
                | (b[at + 3] & 0xff);
    }

    private void ensure(int more) {
        int needed = Math.addExact(size, more);
        if (needed > bytes.length) {
            bytes = Arrays.copyOf(bytes, (int) Math.min(Integer.MAX_VALUE - 8,
                    Math.max(needed, 2L * bytes.length)));
        }
    }
}
