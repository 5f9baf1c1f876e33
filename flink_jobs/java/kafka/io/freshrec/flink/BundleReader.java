package io.freshrec.flink;

import java.util.Arrays;

/**
 * Bounds-checked big-endian reads over one output bundle from Python. The bundle is our own
 * bytes, so anything that does not fit is a bug and fails loudly, naming the offset.
 */
final class BundleReader {
    private final byte[] bytes;
    private int position;

    BundleReader(byte[] bytes) {
        this.bytes = bytes;
    }

    boolean hasRemaining() {
        return position < bytes.length;
    }

    int position() {
        return position;
    }

    int readUnsignedByte() {
        require(1, "part");
        return bytes[position++] & 0xFF;
    }

    int readInt() {
        require(Integer.BYTES, "int32");
        int v = (bytes[position] & 0xFF) << 24 | (bytes[position + 1] & 0xFF) << 16
                | (bytes[position + 2] & 0xFF) << 8 | bytes[position + 3] & 0xFF;
        position += Integer.BYTES;
        return v;
    }

    int readCount() {
        int at = position;
        int n = readInt();
        if (n < 0) {
            throw malformed(at, "negative record count " + n);
        }
        return n;
    }

    /** int32 length (-1 for null), then the bytes. */
    byte[] readBytes() {
        int length = readLength();
        if (length < 0) {
            return null;
        }
        position += length;
        return Arrays.copyOfRange(bytes, position - length, position);
    }

    void skipBytes() {
        int length = readLength();
        position += Math.max(length, 0);
    }

    IllegalStateException malformed(int offset, String what) {
        return new IllegalStateException("malformed output bundle at offset " + offset + " of "
                + bytes.length + ": " + what);
    }

    /** Reads a length and checks that many bytes follow; -1 means null. */
    private int readLength() {
        int at = position;
        int length = readInt();
        if (length < -1) {
            throw malformed(at, "negative length " + length);
        }
        if (length > bytes.length - position) {
            throw malformed(at, "length " + length + " runs past the end");
        }
        return length;
    }

    private void require(int n, String what) {
        if (n > bytes.length - position) {
            throw malformed(position, "truncated " + what);
        }
    }
}
