package io.freshrec.flink;

import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.types.Row;
import org.apache.flink.util.Preconditions;

/**
 * Emits Row(key, value) (either may be null) for every record of one keyed part (0..2) of an
 * output bundle, ready for {@link KeyedBytesSerializer}.
 */
public final class KeyedRecordSplitter extends BundleSplitter {
    private static final long serialVersionUID = 1L;

    private static final String[] FIELD_NAMES = {"key", "value"};

    public KeyedRecordSplitter(int part) {
        super(part);
        Preconditions.checkArgument(isKeyedPart(part), "not a keyed part: %s", part);
    }

    /** Row(key BYTES, value BYTES), the Python KEYED_BYTES_TYPE. */
    public static TypeInformation<Row> producedType() {
        return Types.ROW_NAMED(FIELD_NAMES, PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO,
                PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
    }

    @Override
    protected Row readRecord(BundleReader in) {
        byte[] key = in.readBytes();
        return Row.of(key, in.readBytes());
    }
}
