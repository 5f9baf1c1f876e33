package io.freshrec.flink;

import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.flink.types.Row;

/**
 * Writes Row(key, value) of raw bytes to one topic. A null value is a tombstone, which the
 * compacted topics use to forget a key. A null partition lets Kafka hash the key, matching
 * producers that key by the same id.
 */
public final class KeyedBytesSerializer implements KafkaRecordSerializationSchema<Row> {
    private static final long serialVersionUID = 1L;

    private final String topic;

    public KeyedBytesSerializer(String topic) {
        this.topic = topic;
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(Row element, KafkaSinkContext context,
            Long timestamp) {
        return new ProducerRecord<>(topic, null, timestamp, (byte[]) element.getField(0),
                (byte[]) element.getField(1));
    }
}
