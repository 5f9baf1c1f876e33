package io.freshrec.flink;

import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Emits every Kafka record as Row(topic, partition, offset, timestamp, key, value) with the raw
 * bytes untouched, null key/value included, so no record can fail the source and the dead-letter
 * queue can name where a bad record came from. Parsing happens in Python.
 */
public final class RecordWithMetadataDeserializer implements KafkaRecordDeserializationSchema<Row> {
    private static final long serialVersionUID = 1L;

    public static final String[] FIELD_NAMES = {
        "topic", "partition", "offset", "timestamp", "key", "value"
    };

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Row> out) {
        out.collect(Row.of(record.topic(), record.partition(), record.offset(), record.timestamp(),
                record.key(), record.value()));
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return Types.ROW_NAMED(FIELD_NAMES, Types.STRING, Types.INT, Types.LONG, Types.LONG,
                PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO,
                PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
    }
}
