package io.freshrec.flink;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.types.Row;

/**
 * Turns a raw Row(topic, partition, offset, timestamp, key, value) of
 * {@link RecordWithMetadataDeserializer} into the Row(key, value) of {@link KeyedBytesSerializer},
 * for a Kafka to Kafka passthrough that never enters Python (the benchmarks' baseline).
 */
public final class RawToKeyedBytes implements MapFunction<Row, Row>, ResultTypeQueryable<Row> {
    private static final long serialVersionUID = 1L;

    @Override
    public Row map(Row raw) {
        return Row.of(raw.getField(4), raw.getField(5));
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return KeyedRecordSplitter.producedType();
    }
}
