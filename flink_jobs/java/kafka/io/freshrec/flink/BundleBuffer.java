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
        bytes[size] = (byte) (v >>> 24);
        bytes[size + 1] = (byte) (v >>> 16);
        bytes[size + 2] = (byte) (v >>> 8);
        bytes[size + 3] = (byte) v;
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

    /** The finished bundle; the buffer is empty afterwards. */
    byte[] drain() {
        byte[] bundle = Arrays.copyOf(bytes, size);
        bundle[0] = (byte) (records >>> 24);
        bundle[1] = (byte) (records >>> 16);
        bundle[2] = (byte) (records >>> 8);
        bundle[3] = (byte) records;
        size = Integer.BYTES;
        records = 0;
        return bundle;
    }

    private void ensure(int more) {
        int needed = Math.addExact(size, more);
        if (needed > bytes.length) {
            bytes = Arrays.copyOf(bytes, (int) Math.min(Integer.MAX_VALUE - 8,
                    Math.max(needed, 2L * bytes.length)));
        }
    }
}
